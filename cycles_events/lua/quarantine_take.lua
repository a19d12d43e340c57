-- QUARANTINE_TAKE: remove every dispatch:failed entry of one delivery id, and when ARGV[2] is
-- '1' LPUSH the id onto dispatch:pending (requeue); '0' only drops the entries.
-- KEYS[1] dispatch:failed, KEYS[2] dispatch:pending
-- ARGV[1] delivery id, ARGV[2] '1' requeue / '0' drop
-- Returns the number of entries removed; 0 means no entry matched and nothing changed.
--@lib
local bad = wrong(KEYS[1], 'list', KEYS[2], 'list')
if bad then return wrongtype_reply(bad) end
local entries = call('LRANGE', KEYS[1], 0, -1)
local matched = {}
for _, raw in ipairs(entries) do
  local ok, doc = pcall(cjson.decode, raw)
  if ok and type(doc) == 'table' and doc['delivery_id'] == ARGV[1] then matched[raw] = true end
end
local count = 0
for _ in pairs(matched) do count = count + 1 end
if count > 0 and ARGV[2] == '1' then call('LPUSH', KEYS[2], ARGV[1]) end
local n = 0
for raw, _ in pairs(matched) do n = n + call('LREM', KEYS[1], 0, raw) end
return n
