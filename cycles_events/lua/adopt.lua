-- ADOPT: complete the claim of one id that BLMOVE moved to the left of dispatch:processing.
-- KEYS[1] dispatch:processing, KEYS[2] dispatch:processing:claimed_at,
-- KEYS[3] dispatch:processing:claim_owner
-- reads delivery:{id} (ARGV[3] .. id), and the records it refers to (lib's `related`): one id
-- after an idle wait, so the intake's next round trip is saved where latency is all that counts
-- ARGV[1] id, ARGV[2] claim token, ARGV[3] delivery key prefix, ARGV[4..7] the related records'
-- key prefixes (lib's `related`)
-- Returns {1, record or false, now ms, event ids, subscription ids, their records} when the
-- claim is ours, {0, false, now ms} when not.
-- As Java does, the claim is recorded only while the id is listed and has no owner other than
-- '__orphan__'. A copy held by another live claimant is a duplicate: our copy is removed.
--@lib
local bad = wrong(KEYS[1], 'list', KEYS[2], 'zset')
if bad then return wrongtype_reply(bad) end
local id, token = ARGV[1], ARGV[2]
local now = now_ms()
local owner = read('HGET', KEYS[3], id) -- claim_owner's type check
if owner == nil then return wrongtype_reply(KEYS[3]) end
local function ours()
  local record = redis.pcall('GET', ARGV[3] .. id)
  if type(record) ~= 'string' then record = false end
  local events, subs, values = related({record}, 4)
  return {1, record, now, events, subs, values}
end
if owner == token then return ours() end -- a retry after a lost reply
local copies = #redis.call('LPOS', KEYS[1], id, 'COUNT', 2)
if copies == 0 then return {0, false, now} end
if owner and owner ~= ORPHAN then
  if copies > 1 then
    redis.call('LREM', KEYS[1], 1, id)
    return {0, false, now}
  end
  -- the only listed copy is ours: that owner is stale
end
redis.call('ZADD', KEYS[2], now, id)
redis.call('HSET', KEYS[3], id, token)
return ours()
