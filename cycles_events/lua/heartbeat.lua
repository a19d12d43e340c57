-- HEARTBEAT: refresh the claim time of the ids this process still owns.
-- KEYS[1] dispatch:processing:claimed_at, KEYS[2] dispatch:processing:claim_owner
-- ARGV[1] the prefix of this process's claim tokens, ARGV[2..] ids
-- Returns the number of claims refreshed.
--@lib
local bad = wrong(KEYS[1], 'zset', KEYS[2], 'hash')
if bad then return wrongtype_reply(bad) end
if #ARGV < 2 then return 0 end
local ids = {unpack(ARGV, 2)}
local owners = call('HMGET', KEYS[2], unpack(ids))
local now = arg(now_ms())
local prefix = ARGV[1]
local scored = {}
for i, id in ipairs(ids) do
  local owner = owners[i]
  if owner and find(owner, prefix, 1, true) == 1 then -- no string made (string.sub makes one)
    scored[#scored + 1] = now
    scored[#scored + 1] = id
  end
end
if #scored == 0 then return 0 end
call('ZADD', KEYS[1], 'XX', unpack(scored))
return #scored / 2
