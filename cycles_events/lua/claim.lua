-- CLAIM: take up to ARGV[1] ids from the right (oldest) end of dispatch:pending, or (ARGV[5]
-- 'due') the earliest due ids of dispatch:retry, straight into claims (the retry lane).
-- KEYS[1] dispatch:pending (or dispatch:retry), KEYS[2] dispatch:processing,
-- KEYS[3] dispatch:processing:claimed_at, KEYS[4] dispatch:processing:claim_owner
-- reads delivery:{id} (ARGV[3] .. id) of each id it claims and, for a claim of at most ARGV[6]
-- ids, the records they refer to: event:{id}, webhook:{id}, webhook:secret:{id},
-- webhook:secret:{id}:previous (lib's `related`)
-- ARGV[1] max ids, ARGV[2] claim token, ARGV[3] delivery key prefix, ARGV[4] 'again' when the
-- call repeats one whose reply was lost, else '',
-- ARGV[5] 'pending' or 'due', ARGV[6] the most ids whose related records are read too,
-- ARGV[7..10] the related records' key prefixes
-- Returns {ids, duplicates dropped, their records (false: missing or not a string), now ms} and,
-- when it read them, {related event ids, related subscription ids, their records}.
-- A few ids come when deliveries trickle in, and then the read saves the intake a round trip.
-- A bigger claim leaves it to one MGET of the intake: every byte a script reads or answers is
-- hashed into a Lua string, so there that read costs Redis several times its CPU as an MGET.
-- An id held by another live claimant is a concurrent duplicate: dropped, never sent twice. An
-- owner '__orphan__' (Java's recovery mark) is free to take. The same call again (a retry after
-- a lost reply, 'again') returns the ids its token owns instead of taking more: every claim
-- token is used by one call only, so those are the ones that call took. That costs a walk of
-- claim_owner, but only after a lost reply, where saving each reply would cost every claim.
--@lib
-- Every key it would touch is type-checked on every call (readiness falls at once when one is
-- wrong, even while the queue is empty); the reads of pending and claim_owner are their checks.
local due = ARGV[5] == 'due'
local now = now_ms()
local function answer(ids, dups)
  if #ids == 0 then return {ids, dups, {}, now} end
  local names = {}
  for i, id in ipairs(ids) do names[i] = ARGV[3] .. id end
  local recs = redis.call('MGET', unpack(names))
  if #ids > tonumber(ARGV[6]) then return {ids, dups, recs, now} end
  local events, subs, values = related(recs, 7)
  return {ids, dups, recs, now, events, subs, values}
end
if ARGV[4] == 'again' then
  local owned, held = read('HGETALL', KEYS[4]), {}
  if not owned then return wrongtype_reply(KEYS[4]) end
  for i = 2, #owned, 2 do
    if owned[i] == ARGV[2] then held[#held + 1] = owned[i - 1] end
  end
  if #held > 0 then return answer(held, 0) end -- else the call never ran, or took nothing
end
local listed
if due then
  listed = read('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
else
  listed = read('LRANGE', KEYS[1], -tonumber(ARGV[1]), -1)
end
if not listed then return wrongtype_reply(KEYS[1]) end
local bad = wrong(KEYS[2], 'list', KEYS[3], 'zset')
if bad then return wrongtype_reply(bad) end
if #listed == 0 then
  if not is(KEYS[4], 'hash') then return wrongtype_reply(KEYS[4]) end
  return answer({}, 0)
end
local owners = read('HMGET', KEYS[4], unpack(listed))
if not owners then return wrongtype_reply(KEYS[4]) end
local take, seen, dups = {}, {}, 0
local first, last, step = #listed, 1, -1 -- the oldest first: the right of the list
if due then first, last, step = 1, #listed, 1 end -- the earliest due first
for i = first, last, step do
  local id, owner = listed[i], owners[i]
  local free = not seen[id] and (not owner or owner == ORPHAN)
  if not free and not seen[id] and not redis.call('LPOS', KEYS[2], id) then
    free = true -- the owner of an entry no longer listed is stale
  end
  if free then
    take[#take + 1] = id
    seen[id] = true
  else
    dups = dups + 1
  end
end
if #take > 0 then
  redis.call('LPUSH', KEYS[2], unpack(take))
  local scored, owned, at = {}, {}, arg(now)
  for _, id in ipairs(take) do
    scored[#scored + 1] = at
    scored[#scored + 1] = id
    owned[#owned + 1] = id
    owned[#owned + 1] = ARGV[2]
  end
  redis.call('ZADD', KEYS[3], unpack(scored))
  redis.call('HSET', KEYS[4], unpack(owned))
end
-- only now that every taken id is claimed: remove the batch from where it was
if due then
  redis.call('ZREM', KEYS[1], unpack(listed))
else
  redis.call('LTRIM', KEYS[1], 0, -#listed - 1)
end
return answer(take, dups)
