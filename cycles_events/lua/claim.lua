-- CLAIM: take up to ARGV[1] ids from the right (oldest) end of dispatch:pending, or (ARGV[5]
-- 'due') the earliest due ids of dispatch:retry, straight into claims (the retry lane).
-- KEYS[1] dispatch:pending (or dispatch:retry), KEYS[2] dispatch:processing,
-- KEYS[3] dispatch:processing:claimed_at, KEYS[4] dispatch:processing:claim_owner
-- reads, for a claim of at most ARGV[6] ids, delivery:{id} (ARGV[3] .. id) of each id it claims
-- and the records they refer to: event:{id}, webhook:{id}, webhook:secret:{id},
-- webhook:secret:{id}:previous (lib's `related`)
-- ARGV[1] max ids, ARGV[2] claim token, ARGV[3] delivery key prefix, ARGV[4] 'again' when the
-- call repeats one whose reply was lost, else '',
-- ARGV[5] 'pending' or 'due', ARGV[6] the most ids whose related records are read too,
-- ARGV[7..10] the related records' key prefixes, ARGV[11] an id BLMOVE moved to the left of
-- processing, adopted first ('' when none; 'pending' only)
-- Returns {ids, duplicates dropped, their records (each false: missing or not a string; all
-- false: not read), now ms} and, when it read them, {related event ids, related subscription
-- ids, their records}. A few ids come when deliveries trickle in, and then the reads save the
-- intake two round trips. A bigger claim leaves both to MGETs of the intake: every byte a script
-- reads or answers is hashed into a Lua string, so there a read costs Redis several times its
-- CPU as an MGET.
-- An id held by another live claimant is a concurrent duplicate: dropped, never sent twice. An
-- owner '__orphan__' (Java's recovery mark) is free to take. The same call again (a retry after
-- a lost reply, 'again') returns the ids its token owns instead of taking more: every claim
-- token is used by one call only, so those are the ones that call took. That costs a walk of
-- claim_owner, but only after a lost reply, where saving each reply would cost every claim.
-- The adopted id is claimed, as Java does, only while it is listed and has no owner other than
-- '__orphan__'; a copy held by another live claimant is a duplicate: our copy is removed. Taking
-- the ids that came with it in the same call saves a round trip after every idle wait.
--@lib
-- Every key it would touch is type-checked on every call (readiness falls at once when one is
-- wrong, even while the queue is empty); the reads of pending and claim_owner are their checks.
local due = ARGV[5] == 'due'
local now = now_ms()
local moved = ARGV[11]
local function answer(ids, dups)
  if #ids == 0 then return {ids, dups, {}, now} end
  if #ids > tonumber(ARGV[6]) then return {ids, dups, false, now} end
  local names = {}
  for i, id in ipairs(ids) do names[i] = ARGV[3] .. id end
  local recs = call('MGET', unpack(names))
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
local wanted = tonumber(ARGV[1])
if moved ~= '' then wanted = wanted - 1 end
local listed = {}
if due then
  listed = read('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, wanted)
elseif wanted > 0 then
  listed = read('LRANGE', KEYS[1], -wanted, -1)
elseif not is(KEYS[1], 'list') then
  listed = nil
end
if not listed then return wrongtype_reply(KEYS[1]) end
local bad = wrong(KEYS[2], 'list', KEYS[3], 'zset')
if bad then return wrongtype_reply(bad) end
local take, seen, dups = {}, {}, 0
if moved ~= '' then
  local owner = read('HGET', KEYS[4], moved) -- claim_owner's type check
  if owner == nil then return wrongtype_reply(KEYS[4]) end
  local copies = #call('LPOS', KEYS[2], moved, 'COUNT', 2)
  if copies > 1 and owner and owner ~= ORPHAN then
    call('LREM', KEYS[2], 1, moved) -- the leftmost copy: the one BLMOVE just pushed
    dups = 1
  elseif copies > 0 then -- unowned, Java's orphan, or a stale owner of the only listed copy
    call('ZADD', KEYS[3], arg(now), moved)
    call('HSET', KEYS[4], moved, ARGV[2])
    take[1] = moved
    seen[moved] = true
  end
end
local adopted = #take
if #listed == 0 then
  if moved == '' and not is(KEYS[4], 'hash') then return wrongtype_reply(KEYS[4]) end
  return answer(take, dups)
end
local owners = read('HMGET', KEYS[4], unpack(listed))
if not owners then return wrongtype_reply(KEYS[4]) end
local first, last, step = #listed, 1, -1 -- the oldest first: the right of the list
if due then first, last, step = 1, #listed, 1 end -- the earliest due first
for i = first, last, step do
  local id, owner = listed[i], owners[i]
  local free = not seen[id] and (not owner or owner == ORPHAN)
  if not free and not seen[id] and not call('LPOS', KEYS[2], id) then
    free = true -- the owner of an entry no longer listed is stale
  end
  if free then
    take[#take + 1] = id
    seen[id] = true
  else
    dups = dups + 1
  end
end
if #take > adopted then
  call('LPUSH', KEYS[2], unpack(take, adopted + 1))
  local scored, owned, at = {}, {}, arg(now)
  for i = adopted + 1, #take do
    local id = take[i]
    scored[#scored + 1] = at
    scored[#scored + 1] = id
    owned[#owned + 1] = id
    owned[#owned + 1] = ARGV[2]
  end
  call('ZADD', KEYS[3], unpack(scored))
  call('HSET', KEYS[4], unpack(owned))
end
-- only now that every taken id is claimed: remove the batch from where it was
if due then
  call('ZREM', KEYS[1], unpack(listed))
else
  call('LTRIM', KEYS[1], 0, -#listed - 1)
end
return answer(take, dups)
