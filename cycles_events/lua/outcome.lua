-- OUTCOME: record the outcomes of a batch of claimed deliveries, each one a fenced, atomic step.
-- KEYS[1] dispatch:pending, KEYS[2] dispatch:processing, KEYS[3] dispatch:processing:claimed_at,
-- KEYS[4] dispatch:processing:claim_owner, KEYS[5] dispatch:retry, KEYS[6] dispatch:failed,
-- KEYS[7] dispatcher:event-outbox:pending
-- and, by prefix: delivery:{id} (ARGV[2]), webhook:{id} (ARGV[3]),
-- dispatcher:event-outbox:task:{task id} (ARGV[4])
-- ARGV[1] dispatch:failed cap; then, per item: delivery id, claim token, delivery JSON or '',
--   retry score or '', 'R'/'L' to push on the right/left of pending or '', quarantine entry or '',
--   subscription id or '', the subscription JSON expected ('^': as the previous item of the same
--   subscription leaves it), the subscription JSON to write ('=': the same as that item's), the
--   number of outbox tasks, then per task: task id, task JSON, created ms.
-- An item changes nothing unless its claim is still ours ('lost'), every key it would touch holds
-- the right type ({'error', why}) and its subscription is as expected ({'conflict', current or
-- false}). Then its delivery, retry entry, pending entry, quarantine entry, subscription and
-- outbox tasks are written, and only after them is its claim released: 'ok'. A call repeated
-- after a lost reply finds its claims released and changes nothing.
--@lib
local bad = wrong(KEYS[2], 'list', KEYS[3], 'zset', KEYS[4], 'hash')
if bad then return wrongtype_reply(bad) end
local dprefix, sprefix, tprefix = ARGV[2], ARGV[3], ARGV[4]
local items, ids = {}, {}
local a = 5
while a <= #ARGV do
  local it = {id = ARGV[a], token = ARGV[a + 1], record = ARGV[a + 2], retry = ARGV[a + 3],
    push = ARGV[a + 4], quarantine = ARGV[a + 5], sub = ARGV[a + 6], expected = ARGV[a + 7],
    new = ARGV[a + 8], tasks = {}}
  local ntasks = tonumber(ARGV[a + 9])
  a = a + 10
  for _ = 1, ntasks do
    it.tasks[#it.tasks + 1] = {ARGV[a], ARGV[a + 1], ARGV[a + 2]}
    a = a + 3
  end
  items[#items + 1] = it
  ids[#ids + 1] = it.id
end
if #items == 0 then return {} end
local owners = redis.call('HMGET', KEYS[4], unpack(ids))
local current, last, dirty = {}, {}, {}
local out, released, quarantined = {}, {}, false

local function problem(it)
  -- (a delivery record needs no check: SET cannot fail on a key of another type)
  if it.retry ~= '' and not is(KEYS[5], 'zset') then return KEYS[5] end
  if it.push ~= '' and not is(KEYS[1], 'list') then return KEYS[1] end
  if it.quarantine ~= '' and not is(KEYS[6], 'list') then return KEYS[6] end
  if it.sub ~= '' and not is(sprefix .. it.sub, 'string') then return sprefix .. it.sub end
  for _, task in ipairs(it.tasks) do
    if not is(KEYS[7], 'zset') then return KEYS[7] end
    if not is(tprefix .. task[1], 'string') then return tprefix .. task[1] end
  end
  return nil
end

for i, it in ipairs(items) do
  local skey, expected, new = nil, nil, nil
  if it.sub ~= '' then
    -- every item of a subscription moves the chain on, applied or not, so that an item after one
    -- that was not applied conflicts instead of writing that item's change
    skey = sprefix .. it.sub
    expected = it.expected
    if expected == '^' then expected = last[skey] end
    new = it.new
    if new == '=' then new = last[skey] end
    last[skey] = new
  end
  local fits = false
  if owners[i] ~= it.token then
    out[i] = 'lost'
  else
    local key = problem(it)
    if key then
      out[i] = {'error', 'WRONGTYPE ' .. key .. ' holds the wrong kind of value'}
    elseif skey then
      if current[skey] == nil then current[skey] = redis.call('GET', skey) end
      if current[skey] ~= expected or not new then
        out[i] = {'conflict', current[skey]}
      else
        fits = true
      end
    else
      fits = true
    end
  end
  if fits then
    if it.record ~= '' then
      -- XX: never recreate a record that expired meanwhile; KEEPTTL: the producer's TTL stays
      redis.call('SET', dprefix .. it.id, it.record, 'XX', 'KEEPTTL')
    end
    if it.retry ~= '' then redis.call('ZADD', KEYS[5], it.retry, it.id) end
    if it.push == 'R' then redis.call('RPUSH', KEYS[1], it.id) end
    if it.push == 'L' then redis.call('LPUSH', KEYS[1], it.id) end
    if it.quarantine ~= '' then
      redis.call('LPUSH', KEYS[6], it.quarantine)
      quarantined = true
    end
    if skey then
      current[skey] = new
      dirty[skey] = true
    end
    for _, task in ipairs(it.tasks) do
      redis.call('SET', tprefix .. task[1], task[2], 'NX')
      redis.call('ZADD', KEYS[7], 'NX', task[3], task[1])
    end
    -- the claim goes last, after everything it stood for is written
    redis.call('LREM', KEYS[2], -1, it.id)
    released[#released + 1] = it.id
    out[i] = 'ok'
  end
end
for skey, _ in pairs(dirty) do redis.call('SET', skey, current[skey], 'KEEPTTL') end
if quarantined then redis.call('LTRIM', KEYS[6], 0, tonumber(ARGV[1]) - 1) end
if #released > 0 then
  redis.call('ZREM', KEYS[3], unpack(released))
  redis.call('HDEL', KEYS[4], unpack(released))
end
return out
