-- The helpers every script shares (inlined by keys.py after the script's own header).
-- Globals as locals: a global is a table lookup at every use, a local a register
local KEYS, ARGV, call, pcall_ = KEYS, ARGV, redis.call, redis.pcall
local find, byte, match = string.find, string.byte, string.match
local ORPHAN = '__orphan__'
local function now_ms()
  local t = call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
-- A number as a command argument, formatted once: redis.call formats each number argument
-- with snprintf('%.17g'), which costs more than the command it is for.
local function arg(n)
  return string.format('%d', n)
end
local kinds = {}
-- Whether a key is absent or holds the wanted type (asked once per key and call).
local function is(key, want)
  local k = kinds[key]
  if k == nil then
    k = call('TYPE', key)['ok']
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
-- A read that is its key's type check too (a TYPE call less): the reply, or nil when the key
-- holds another type (a read fails on nothing else).
local function read(...)
  local got = pcall_(...)
  if type(got) == 'table' and got.err then return nil end
  return got
end
-- The ids a delivery record names, read without decoding it (nil when not plainly there: the
-- daemon then reads the records itself). Compact JSON is found by plain search; a pattern tried
-- at every byte costs several times more, so it is only the fallback.
local EVENT_ID = {'"event_id":"', '"event_id"%s*:%s*"([%w_%-%.:]+)"'}
local SUBSCRIPTION_ID = {'"subscription_id":"', '"subscription_id"%s*:%s*"([%w_%-%.:]+)"'}
local function named(record, field)
  if type(record) ~= 'string' then return nil end
  local _, at = find(record, field[1], 1, true)
  if at then
    local id = match(record, '^([%w_%-%.:]+)"', at + 1)
    if id then return id end
  end
  return match(record, field[2])
end
-- What the intake reads next for a few delivery records, in one MGET: {event ids},
-- {subscription ids}, and the events, subscriptions, secrets and previous secrets, in order.
-- ARGV[at .. at + 3]: the event, subscription and secret key prefixes, the previous secret's
-- suffix. Callers keep the records few (four keys each, and unpack has a limit).
local function related(records, at)
  local events, subs, seen_e, seen_s = {}, {}, {}, {}
  for _, record in ipairs(records) do
    local e, s = named(record, EVENT_ID), named(record, SUBSCRIPTION_ID)
    if e and not seen_e[e] then seen_e[e] = true; events[#events + 1] = e end
    if s and not seen_s[s] then seen_s[s] = true; subs[#subs + 1] = s end
  end
  local names = {}
  for _, e in ipairs(events) do names[#names + 1] = ARGV[at] .. e end
  for _, s in ipairs(subs) do names[#names + 1] = ARGV[at + 1] .. s end
  for _, s in ipairs(subs) do names[#names + 1] = ARGV[at + 2] .. s end
  for _, s in ipairs(subs) do names[#names + 1] = ARGV[at + 2] .. s .. ARGV[at + 3] end
  if #names == 0 then return events, subs, {} end
  return events, subs, call('MGET', unpack(names))
end
