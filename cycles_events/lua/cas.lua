-- CAS: replace a record only if it still holds what was read (an operator's compare-and-set).
-- KEYS[1] the record (webhook:{id})
-- ARGV[1] the JSON expected, ARGV[2] the JSON to write
-- Returns {'ok'}, {'missing'} or {'conflict', current JSON}.
--@lib
if not is(KEYS[1], 'string') then return wrongtype_reply(KEYS[1]) end
local cur = call('GET', KEYS[1])
if not cur then return {'missing'} end
if cur ~= ARGV[1] then return {'conflict', cur} end
call('SET', KEYS[1], ARGV[2], 'KEEPTTL')
return {'ok'}
