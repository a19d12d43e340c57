-- DEFER: count a failed publish of an outbox task; after ARGV[3] attempts, dead-letter it.
-- KEYS[1] dispatcher:event-outbox:pending, KEYS[2] dispatcher:event-outbox:attempts,
-- KEYS[3] dispatcher:event-outbox:failed, KEYS[4] dispatcher:event-outbox:task:{task},
-- KEYS[5] dispatcher:event-outbox:lock:{task}
-- ARGV[1] task id, ARGV[2] first delay ms (doubled per attempt), ARGV[3] most attempts,
-- ARGV[4] dead letter JSON, ARGV[5] dead letters kept, ARGV[6] longest delay ms
-- Returns {'deferred', attempts}, {'dead', attempts} or {'locked', 0} (another publisher has it).
--@lib
local bad = wrong(KEYS[1], 'zset', KEYS[2], 'hash', KEYS[3], 'list')
if bad then return wrongtype_reply(bad) end
if call('EXISTS', KEYS[5]) == 1 then return {'locked', 0} end
local n = call('HINCRBY', KEYS[2], ARGV[1], 1)
if n >= tonumber(ARGV[3]) then
  call('LPUSH', KEYS[3], ARGV[4])
  call('LTRIM', KEYS[3], 0, tonumber(ARGV[5]) - 1)
  call('ZREM', KEYS[1], ARGV[1])
  call('DEL', KEYS[4])
  call('HDEL', KEYS[2], ARGV[1])
  return {'dead', n}
end
local delay = math.min(tonumber(ARGV[6]), tonumber(ARGV[2]) * 2 ^ math.min(n - 1, 20))
call('ZADD', KEYS[1], 'XX', now_ms() + delay, ARGV[1])
return {'deferred', n}
