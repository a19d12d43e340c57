-- PUBLISH: save one staged meta-event the way the admin saves events, then remove its task.
-- KEYS[1] dispatcher:event-outbox:lock:{task}, KEYS[2] dispatcher:event-outbox:task:{task},
-- KEYS[3] dispatcher:event-outbox:pending, KEYS[4] dispatcher:event-outbox:attempts,
-- KEYS[5] event:{id}, KEYS[6] events:{tenant}, KEYS[7] events:_all,
-- KEYS[8] events:correlation:{cid} (untouched when ARGV[9] is '0')
-- ARGV[1] lock token, ARGV[2] lock ms, ARGV[3] task id, ARGV[4] the task JSON as read,
-- ARGV[5] event JSON, ARGV[6] event TTL s, ARGV[7] event time ms, ARGV[8] event id,
-- ARGV[9] '1' when the event has a correlation id
-- Returns 'published'; 'locked' (another publisher holds the task's lock); 'gone' (the task
-- changed, or was published meanwhile: a pending entry without a task is removed); or
-- {'error', why} (nothing saved: the caller defers it).
--@lib
local bad = wrong(KEYS[1], 'string', KEYS[2], 'string', KEYS[3], 'zset', KEYS[4], 'hash')
if bad then return {'error', 'WRONGTYPE ' .. bad} end
if not call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 'locked' end
local staged = call('GET', KEYS[2])
if not staged then -- published meanwhile, or listed without a task: nothing left to save
  call('ZREM', KEYS[3], ARGV[3])
  call('HDEL', KEYS[4], ARGV[3])
  call('DEL', KEYS[1])
  return 'gone'
end
if staged ~= ARGV[4] then
  call('DEL', KEYS[1])
  return 'gone'
end
local corr = ARGV[9] == '1'
bad = wrong(KEYS[5], 'string', KEYS[6], 'zset', KEYS[7], 'zset')
if not bad and corr and not is(KEYS[8], 'set') then bad = KEYS[8] end
if bad then
  call('DEL', KEYS[1])
  return {'error', 'WRONGTYPE ' .. bad}
end
call('SET', KEYS[5], ARGV[5], 'EX', ARGV[6])
call('ZADD', KEYS[6], ARGV[7], ARGV[8])
call('ZADD', KEYS[7], ARGV[7], ARGV[8])
if corr then
  call('SADD', KEYS[8], ARGV[8])
  call('EXPIRE', KEYS[8], ARGV[6])
end
-- saved: only now is the task removed, and the lock with it
call('ZREM', KEYS[3], ARGV[3])
call('DEL', KEYS[2])
call('HDEL', KEYS[4], ARGV[3])
call('DEL', KEYS[1])
return 'published'
