-- REPLAY_DELIVERY: create a new PENDING delivery exactly as the producers do (operator replay).
-- KEYS[1] delivery:{new id}, KEYS[2] deliveries:{subscription_id}, KEYS[3] dispatch:pending
-- ARGV[1] delivery JSON, ARGV[2] TTL seconds, ARGV[3] created ms, ARGV[4] new delivery id
-- Returns 1 when written, 0 when delivery:{new id} already exists (nothing is touched).
--@lib
local bad = wrong(KEYS[2], 'zset', KEYS[3], 'list')
if bad then return wrongtype_reply(bad) end
if call('EXISTS', KEYS[1]) == 1 then return 0 end
call('SET', KEYS[1], ARGV[1])
call('EXPIRE', KEYS[1], ARGV[2])
call('ZADD', KEYS[2], ARGV[3], ARGV[4])
call('LPUSH', KEYS[3], ARGV[4])
return 1
