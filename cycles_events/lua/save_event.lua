-- SAVE_EVENT: save an event the way the admin server does.
-- KEYS[1] event:{id}, KEYS[2] events:{tenant}, KEYS[3] events:_all,
-- KEYS[4] events:correlation:{cid} (untouched when ARGV[5] is '0')
-- ARGV[1] event JSON, ARGV[2] TTL seconds, ARGV[3] event time ms, ARGV[4] event id, ARGV[5] '1'/'0'
--@lib
local bad = wrong(KEYS[1], 'string', KEYS[2], 'zset', KEYS[3], 'zset')
if not bad and ARGV[5] == '1' and not is(KEYS[4], 'set') then bad = KEYS[4] end
if bad then return wrongtype_reply(bad) end
call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
call('ZADD', KEYS[2], ARGV[3], ARGV[4])
call('ZADD', KEYS[3], ARGV[3], ARGV[4])
if ARGV[5] == '1' then
  call('SADD', KEYS[4], ARGV[4])
  call('EXPIRE', KEYS[4], ARGV[2])
end
return 1
