-- TRIM_ZSET: drop index entries older than a cutoff, only while the key is a ZSET.
-- KEYS[1] an events:* or deliveries:* key
-- ARGV[1] cutoff ms
-- Returns the entries removed, or -1 when the key is not a ZSET (events:correlation:* are SETs).
if redis.call('TYPE', KEYS[1])['ok'] ~= 'zset' then return -1 end
return redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[1])
