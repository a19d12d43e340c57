-- PROMOTE: move due retries (score <= now) from dispatch:retry to the left of dispatch:pending.
-- KEYS[1] dispatch:retry, KEYS[2] dispatch:pending
-- ARGV[1] max ids
-- Returns {ids moved, score of the earliest retry left or -1, now ms}.
--@lib
local bad = wrong(KEYS[1], 'zset', KEYS[2], 'list')
if bad then return wrongtype_reply(bad) end
local now = now_ms()
local ids = call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
if #ids > 0 then
  call('LPUSH', KEYS[2], unpack(ids))
  call('ZREM', KEYS[1], unpack(ids))
end
local first = call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return {#ids, first[2] or '-1', now}
