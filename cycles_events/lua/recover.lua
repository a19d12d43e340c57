-- RECOVER: one step of the walk over dispatch:processing that returns idle claims to pending.
-- KEYS[1] dispatch:pending, KEYS[2] dispatch:processing, KEYS[3] dispatch:processing:claimed_at,
-- KEYS[4] dispatch:processing:claim_owner
-- ARGV[1] idle ms, ARGV[2] index where this step starts, ARGV[3] entries per step
-- Returns {recovered ids, entries dated, index of the next step, length of the list}.
-- Java's rule, at any depth of the list: an entry without a claim time or an owner is dated now
-- (owner '__orphan__' when it has none), so it waits a whole idle window; an entry claimed longer
-- ago than the idle time goes back to the left of pending, its claim removed. A few claim times
-- left without any listed entry are also cleared.
--@lib
local bad = wrong(KEYS[1], 'list', KEYS[2], 'list', KEYS[3], 'zset', KEYS[4], 'hash')
if bad then return wrongtype_reply(bad) end
local len = call('LLEN', KEYS[2])
local start = tonumber(ARGV[2])
if start >= len then start = 0 end
local listed = call('LRANGE', KEYS[2], start, start + tonumber(ARGV[3]) - 1)
local now = now_ms()
local cutoff = now - tonumber(ARGV[1])
local back, dated, seen = {}, {}, {}
if #listed > 0 then
  local times = call('ZMSCORE', KEYS[3], unpack(listed))
  local owners = call('HMGET', KEYS[4], unpack(listed))
  for i, id in ipairs(listed) do
    if not seen[id] then
      seen[id] = true
      if not times[i] or not owners[i] then
        dated[#dated + 1] = id
      elseif tonumber(times[i]) < cutoff then
        back[#back + 1] = id
      end
    end
  end
end
if #dated > 0 then
  local scored = {}
  for _, id in ipairs(dated) do
    scored[#scored + 1] = now
    scored[#scored + 1] = id
    call('HSETNX', KEYS[4], id, ORPHAN)
  end
  call('ZADD', KEYS[3], unpack(scored))
end
for _, id in ipairs(back) do
  call('LPUSH', KEYS[1], id)
  call('LREM', KEYS[2], 1, id)
end
local clear = {}
for _, id in ipairs(back) do clear[#clear + 1] = id end
for _, id in ipairs(call('ZRANGEBYSCORE', KEYS[3], '-inf', '(' .. cutoff, 'LIMIT', 0, 10)) do
  if not seen[id] and not call('LPOS', KEYS[2], id) then clear[#clear + 1] = id end
end
if #clear > 0 then
  call('ZREM', KEYS[3], unpack(clear))
  call('HDEL', KEYS[4], unpack(clear))
end
return {back, #dated, start + #listed - #back, len}
