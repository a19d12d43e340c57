-- The helpers every script shares (inlined by keys.py after the script's own header).
local ORPHAN = '__orphan__'
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local kinds = {}
-- Whether a key is absent or holds the wanted type (asked once per key and call).
local function is(key, want)
  local k = kinds[key]
  if k == nil then
    k = redis.call('TYPE', key)['ok']
    kinds[key] = k
  end
  return k == 'none' or k == want
end
-- The first of (key, type) pairs whose key holds another type, or nil.
local function wrong(...)
  local pairs_ = {...}
  for i = 1, #pairs_, 2 do
    if not is(pairs_[i], pairs_[i + 1]) then return pairs_[i] end
  end
  return nil
end
local function wrongtype_reply(key)
  return redis.error_reply('WRONGTYPE ' .. key .. ' holds the wrong kind of value')
end
