-- OUTCOME: record the outcomes of a batch of claimed deliveries, each one a fenced, atomic step.
-- KEYS[1] dispatch:pending, KEYS[2] dispatch:processing, KEYS[3] dispatch:processing:claimed_at,
-- KEYS[4] dispatch:processing:claim_owner, KEYS[5] dispatch:retry, KEYS[6] dispatch:failed,
-- KEYS[7] dispatcher:event-outbox:pending
-- and, by prefix: delivery:{id} (ARGV[2]), webhook:{id} (ARGV[3]),
-- dispatcher:event-outbox:task:{task id} (ARGV[4])
-- ARGV[1] dispatch:failed cap, ARGV[5] the number of items n, ARGV[6..5+n] their delivery ids;
--   then, per item: claim token, delivery JSON or '', its form, and the fields of its form:
--   'g' (general): retry score or '', 'R'/'L' to push on the right/left of pending or '',
--     quarantine entry or '', subscription id or '', the subscription JSON expected ('^': as the
--     previous item of the same subscription leaves it), the subscription JSON to write ('=':
--     the same as that item's), the number of outbox tasks, then per task: task id, task JSON,
--     created ms;
--   's' (a subscription change alone): subscription id, expected, to write;
--   'p' (a success's change alone, by parts): subscription id, then the document as the daemon
--     read it cut around the values a success sets, with the new values in their places:
--     part, value, part, value, part, value, part. It fits any stored document made of the same
--     parts with plain values (a string without escapes, a whole number or null) between them:
--     the success sets those values whatever they held, so another instance's success written
--     meanwhile does not send it round again, and the document written is the stored one with
--     only those values changed (the daemon checked that the parts cut its top-level fields);
--   'c' (the same change as the previous item of its subscription): subscription id.
--   Every argument costs Redis about as much to take in as a short command, so the usual items
--   (a success after another of its subscription) come in the fewest.
-- An item changes nothing unless its claim is still ours ('lost'), every key it would touch holds
-- the right type ({'error', why}) and its subscription is as expected ({'conflict', current or
-- false}). Then its delivery, retry entry, pending entry, quarantine entry, subscription and
-- outbox tasks are written, and only after them is its claim released: 'ok'. A call repeated
-- after a lost reply finds its claims released and changes nothing.
--@lib
-- Where the plain value that starts at `from` ends (a string without escapes, a whole number
-- or null), or nil.
local function value_end(doc, from)
  local c = byte(doc, from)
  if c == 34 then -- '"'
    local to = find(doc, '"', from + 1, true)
    local escape = find(doc, '\\', from + 1, true)
    if escape and to and escape < to then return nil end
    return to
  elseif c == 110 then -- 'n'
    return find(doc, '^null', from) and from + 3 or nil
  end
  local _, to = find(doc, '^%-?%d+', from)
  return to
end
-- Whether `current` is made of the parts of a 'p' item (ARGV[at], ARGV[at + 2], ARGV[at + 4],
-- ARGV[at + 6]) with a plain value between each two: found by plain search, not decoded (cjson
-- would change the document's form), and no string is made.
local function fits_parts(current, at)
  if type(current) ~= 'string' then return false end
  local pos = 1
  for k = at, at + 6, 2 do
    if k > at then
      local to = value_end(current, pos)
      if not to then return false end
      pos = to + 1
    end
    local part = ARGV[k]
    if find(current, part, pos, true) ~= pos then return false end
    pos = pos + #part
  end
  return pos == #current + 1
end
local n = tonumber(ARGV[5])
if n == 0 then return {} end
local bad = wrong(KEYS[2], 'list', KEYS[3], 'zset')
if bad then return wrongtype_reply(bad) end
local owners = read('HMGET', KEYS[4], unpack(ARGV, 6, 5 + n)) -- claim_owner's type check
if not owners then return wrongtype_reply(KEYS[4]) end
local dprefix, sprefix, tprefix = ARGV[2], ARGV[3], ARGV[4]
local current, last, dirty = {}, {}, {}
local NOT_STRING = {} -- what `current` holds for a subscription key of another type
-- The subscription as stored (false: none), read once a call; the GET is its type check too.
local function stored(skey)
  local got = current[skey]
  if got == nil then
    got = pcall_('GET', skey)
    if type(got) == 'table' then got = NOT_STRING end -- WRONGTYPE
    current[skey] = got
  end
  return got
end
local out, released, quarantined = {}, {}, false
-- where each item's fields start, found before anything is written: a malformed call changes
-- nothing
local starts, at = {}, 6 + n
for i = 1, n do
  starts[i] = at
  local form = ARGV[at + 2]
  if form == 'c' then at = at + 4
  elseif form == 's' then at = at + 6
  elseif form == 'p' then at = at + 11
  elseif form == 'g' then at = at + 10 + 3 * tonumber(ARGV[at + 9])
  else return redis.error_reply('ERR item ' .. i .. ' has no form') end
end

for i = 1, n do
  local id, a = ARGV[5 + i], starts[i]
  local token, record, form = ARGV[a], ARGV[a + 1], ARGV[a + 2]
  local retry, push, quarantine, sub, expected, new = '', '', '', ARGV[a + 3], '^', '='
  local parts, ntasks, first_task = nil, 0, a
  if form == 's' then
    expected, new = ARGV[a + 4], ARGV[a + 5]
  elseif form == 'p' then
    parts = a + 4
    new = ARGV[a + 4] .. ARGV[a + 5] .. ARGV[a + 6] .. ARGV[a + 7] .. ARGV[a + 8] .. ARGV[a + 9]
      .. ARGV[a + 10]
  elseif form == 'g' then
    retry, push, quarantine, sub = ARGV[a + 3], ARGV[a + 4], ARGV[a + 5], ARGV[a + 6]
    expected, new = ARGV[a + 7], ARGV[a + 8]
    ntasks, first_task = tonumber(ARGV[a + 9]), a + 10
  end
  local skey = nil
  if sub ~= '' then
    -- every item of a subscription moves the chain on, applied or not, so that an item after one
    -- that was not applied conflicts instead of writing that item's change
    skey = sprefix .. sub
    if expected == '^' then expected = last[skey] end
    if new == '=' then new = last[skey] end
    last[skey] = new
  else
    expected, new = nil, nil
  end
  -- what it touches must hold the right type (SET of the record cannot fail: no check)
  local bad = nil
  if retry ~= '' and not is(KEYS[5], 'zset') then bad = KEYS[5]
  elseif push ~= '' and not is(KEYS[1], 'list') then bad = KEYS[1]
  elseif quarantine ~= '' and not is(KEYS[6], 'list') then bad = KEYS[6]
  elseif skey and stored(skey) == NOT_STRING then bad = skey
  elseif ntasks > 0 and not is(KEYS[7], 'zset') then bad = KEYS[7]
  else
    for t = first_task, first_task + 3 * (ntasks - 1), 3 do
      if not is(tprefix .. ARGV[t], 'string') then bad = tprefix .. ARGV[t] end
    end
  end
  local fits = false
  if owners[i] ~= token then
    out[i] = 'lost'
  elseif bad then
    out[i] = {'error', 'WRONGTYPE ' .. bad .. ' holds the wrong kind of value'}
  elseif skey then
    if parts then
      fits = fits_parts(current[skey], parts)
    else
      fits = new ~= nil and current[skey] == expected
    end
    if not fits then out[i] = {'conflict', current[skey]} end
  else
    fits = true
  end
  if fits then
    if record ~= '' then
      -- XX: never recreate a record that expired meanwhile; KEEPTTL: the producer's TTL stays
      call('SET', dprefix .. id, record, 'XX', 'KEEPTTL')
    end
    if retry ~= '' then call('ZADD', KEYS[5], retry, id) end
    if push == 'R' then call('RPUSH', KEYS[1], id) end
    if push == 'L' then call('LPUSH', KEYS[1], id) end
    if quarantine ~= '' then
      call('LPUSH', KEYS[6], quarantine)
      quarantined = true
    end
    if skey then
      current[skey] = new
      dirty[skey] = true
    end
    for t = first_task, first_task + 3 * (ntasks - 1), 3 do
      call('SET', tprefix .. ARGV[t], ARGV[t + 1], 'NX')
      call('ZADD', KEYS[7], 'NX', ARGV[t + 2], ARGV[t])
    end
    -- the claim goes last, after everything it stood for is written
    call('LREM', KEYS[2], '-1', id) -- a string: see lib's `arg`
    released[#released + 1] = id
    out[i] = 'ok'
  end
end
for skey, _ in pairs(dirty) do call('SET', skey, current[skey], 'KEEPTTL') end
if quarantined then call('LTRIM', KEYS[6], 0, tonumber(ARGV[1]) - 1) end
if #released > 0 then
  call('ZREM', KEYS[3], unpack(released))
  call('HDEL', KEYS[4], unpack(released))
end
return out
