"""Every Redis key name and Lua script of the service, in one place."""

from __future__ import annotations

PENDING = "dispatch:pending"
RETRY = "dispatch:retry"
PROCESSING = "dispatch:processing"
CLAIMED_AT = "dispatch:processing:claimed_at"
CLAIM_OWNER = "dispatch:processing:claim_owner"
FAILED = "dispatch:failed"
SECURITY_CONFIG = "config:webhook-security"
EVENTS_ALL = "events:_all"
RETENTION_LOCK = "cycles-events:retention:lock"
EVENTS_PATTERN = "events:*"
DELIVERIES_PATTERN = "deliveries:*"


DELIVERY_PREFIX = "delivery:"


def delivery(delivery_id: str) -> str:
    """The delivery record."""
    return f"{DELIVERY_PREFIX}{delivery_id}"


def deliveries(subscription_id: str) -> str:
    """A subscription's delivery index (ZSET by creation ms)."""
    return f"deliveries:{subscription_id}"


def event(event_id: str) -> str:
    """The event record."""
    return f"event:{event_id}"


def tenant_events(tenant_id: str) -> str:
    """A tenant's event index (ZSET by event ms)."""
    return f"events:{tenant_id}"


def correlation(correlation_id: str) -> str:
    """The SET of event ids sharing a correlation id."""
    return f"events:correlation:{correlation_id}"


def subscription(subscription_id: str) -> str:
    """The subscription record."""
    return f"webhook:{subscription_id}"


def secret(subscription_id: str) -> str:
    """The subscription's signing secret (plaintext or enc:...)."""
    return f"webhook:secret:{subscription_id}"


CLAIM = """
-- CLAIM: take up to ARGV[1] ids from the right of dispatch:pending into dispatch:processing.
-- KEYS[1] dispatch:pending, KEYS[2] dispatch:processing,
-- KEYS[3] dispatch:processing:claimed_at, KEYS[4] dispatch:processing:claim_owner
-- ARGV[1] max ids, ARGV[2] now ms, ARGV[3] claim token, ARGV[4] the delivery key prefix
-- Also reads delivery:{id} of each id claimed (false when missing or not a string), saving
-- the batch a round trip. An id already claimed by someone is a concurrent duplicate: it is
-- dropped, not sent twice.
local out = {}
local records = {}
local dups = 0
for _ = 1, tonumber(ARGV[1]) do
  local id = redis.call('RPOP', KEYS[1])
  if not id then break end
  if redis.call('HSETNX', KEYS[4], id, ARGV[3]) == 1 then
    redis.call('LPUSH', KEYS[2], id)
    redis.call('ZADD', KEYS[3], ARGV[2], id)
    out[#out + 1] = id
    local record = redis.pcall('GET', ARGV[4] .. id)
    if type(record) ~= 'string' then record = false end
    records[#records + 1] = record
  else
    dups = dups + 1
  end
end
return {out, dups, records}
"""

ADOPT = """
-- ADOPT: complete the claim of one id that BLMOVE already moved into dispatch:processing.
-- KEYS[1] dispatch:processing, KEYS[2] dispatch:processing:claimed_at,
-- KEYS[3] dispatch:processing:claim_owner
-- ARGV[1] id, ARGV[2] now ms, ARGV[3] claim token
if redis.call('HSETNX', KEYS[3], ARGV[1], ARGV[3]) == 1 then
  redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
  return 1
end
redis.call('LREM', KEYS[1], 1, ARGV[1])
return 0
"""

RELEASE = """
-- RELEASE: give back claims that were never started: to pending (ARGV[2] = '') or to the retry
-- ZSET at score ARGV[2] (parking a delivery whose subscription is saturated).
-- KEYS[1] dispatch:pending, KEYS[2] dispatch:processing, KEYS[3] dispatch:processing:claimed_at,
-- KEYS[4] dispatch:processing:claim_owner, KEYS[5] dispatch:retry
-- ARGV[1] claim token, ARGV[2] retry score or '', ARGV[3..] ids
local n = 0
for i = 3, #ARGV do
  local id = ARGV[i]
  if redis.call('HGET', KEYS[4], id) == ARGV[1] then
    redis.call('LREM', KEYS[2], 1, id)
    redis.call('ZREM', KEYS[3], id)
    redis.call('HDEL', KEYS[4], id)
    if ARGV[2] == '' then
      redis.call('RPUSH', KEYS[1], id)
    else
      redis.call('ZADD', KEYS[5], ARGV[2], id)
    end
    n = n + 1
  end
end
return n
"""

HEARTBEAT = """
-- HEARTBEAT: refresh the claim time of ids we still own, so live claims are never recovered.
-- KEYS[1] dispatch:processing:claimed_at, KEYS[2] dispatch:processing:claim_owner
-- ARGV[1] now ms, ARGV[2] claim token prefix, ARGV[3..] ids
local n = 0
local plen = #ARGV[2]
for i = 3, #ARGV do
  local owner = redis.call('HGET', KEYS[2], ARGV[i])
  if owner and string.sub(owner, 1, plen) == ARGV[2] then
    redis.call('ZADD', KEYS[1], 'XX', ARGV[1], ARGV[i])
    n = n + 1
  end
end
return n
"""

RECOVER = """
-- RECOVER: return claims idle longer than ARGV[2] ms to dispatch:pending.
-- KEYS[1] dispatch:pending, KEYS[2] dispatch:processing, KEYS[3] dispatch:processing:claimed_at,
-- KEYS[4] dispatch:processing:claim_owner
-- ARGV[1] now ms, ARGV[2] idle ms, ARGV[3] max ids
-- An id in processing with no claim time (a BLMOVE whose process died before ADOPT) is dated
-- now, so it is recovered once it has been idle for the whole period.
local listed = redis.call('LRANGE', KEYS[2], 0, 9999)
for _, id in ipairs(listed) do
  if not redis.call('ZSCORE', KEYS[3], id) then
    redis.call('ZADD', KEYS[3], 'NX', ARGV[1], id)
  end
end
local cutoff = tonumber(ARGV[1]) - tonumber(ARGV[2])
local ids = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', cutoff, 'LIMIT', 0, tonumber(ARGV[3]))
for _, id in ipairs(ids) do
  redis.call('LREM', KEYS[2], 1, id)
  redis.call('ZREM', KEYS[3], id)
  redis.call('HDEL', KEYS[4], id)
  redis.call('LPUSH', KEYS[1], id)
end
return ids
"""

PROMOTE = """
-- PROMOTE: move due retries (score <= now) from dispatch:retry to dispatch:pending.
-- KEYS[1] dispatch:retry, KEYS[2] dispatch:pending
-- ARGV[1] now ms, ARGV[2] max ids
-- Returns {moved, score of the earliest remaining retry or -1}.
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, id in ipairs(ids) do
  redis.call('ZREM', KEYS[1], id)
  redis.call('LPUSH', KEYS[2], id)
end
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
local nxt = -1
if first[2] then nxt = first[2] end
return {#ids, nxt}
"""

SAVE_EVENT = """
-- SAVE_EVENT: save an event the way the admin server does.
-- KEYS[1] event:{id}, KEYS[2] events:{tenant}, KEYS[3] events:_all,
-- KEYS[4] events:correlation:{cid} (ignored when ARGV[5] is '0')
-- ARGV[1] event JSON, ARGV[2] TTL seconds, ARGV[3] score ms, ARGV[4] event id, ARGV[5] '1'/'0'
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[4])
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[4])
if ARGV[5] == '1' then
  redis.call('SADD', KEYS[4], ARGV[4])
  redis.call('EXPIRE', KEYS[4], ARGV[2])
end
return 1
"""

TRIM_ZSET = """
-- TRIM_ZSET: drop index entries older than a cutoff, only if the key is still a ZSET.
-- KEYS[1] an events:* or deliveries:* key
-- ARGV[1] cutoff ms
if redis.call('TYPE', KEYS[1])['ok'] ~= 'zset' then return -1 end
return redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[1])
"""

REPLAY_DELIVERY = """
-- REPLAY_DELIVERY: create a new PENDING delivery exactly as the producers do (operator replay).
-- KEYS[1] delivery:{new id}, KEYS[2] deliveries:{subscription_id}, KEYS[3] dispatch:pending
-- ARGV[1] delivery JSON, ARGV[2] TTL seconds, ARGV[3] created ms, ARGV[4] new delivery id
-- Returns 1 when written, 0 when delivery:{new id} already exists (nothing is touched).
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[4])
redis.call('LPUSH', KEYS[3], ARGV[4])
return 1
"""

QUARANTINE_TAKE = """
-- QUARANTINE_TAKE: remove every dispatch:failed entry of one delivery id and, when ARGV[2] is
-- '1', LPUSH the id onto dispatch:pending (requeue); '0' only drops the entries.
-- KEYS[1] dispatch:failed, KEYS[2] dispatch:pending
-- ARGV[1] delivery id, ARGV[2] '1' requeue / '0' drop
-- Returns the number of entries removed; 0 means no entry matched and nothing changed.
local entries = redis.call('LRANGE', KEYS[1], 0, -1)
local matched = {}
for _, raw in ipairs(entries) do
  local ok, doc = pcall(cjson.decode, raw)
  if ok and type(doc) == 'table' and doc['delivery_id'] == ARGV[1] then matched[raw] = true end
end
local n = 0
for raw, _ in pairs(matched) do n = n + redis.call('LREM', KEYS[1], 0, raw) end
if n > 0 and ARGV[2] == '1' then redis.call('LPUSH', KEYS[2], ARGV[1]) end
return n
"""

FINALIZE_MANY = """
-- FINALIZE_MANY: FINALIZE for a batch of deliveries in one call (group commit).
-- KEYS[1] dispatch:processing, KEYS[2] dispatch:processing:claimed_at,
-- KEYS[3] dispatch:processing:claim_owner, KEYS[4] dispatch:retry, KEYS[5] dispatch:failed,
-- KEYS[5+i] delivery:{id_i}
-- ARGV[1] quarantine max length; then 5 values per delivery: id, claim token,
-- delivery JSON or '', retry score ms or '', quarantine entry JSON or ''
-- Returns one 1/0 per delivery: 0 when its claim is no longer ours (nothing written).
local out = {}
local n = (#ARGV - 1) / 5
for i = 1, n do
  local b = 1 + (i - 1) * 5
  local id, token = ARGV[b + 1], ARGV[b + 2]
  if redis.call('HGET', KEYS[3], id) ~= token then
    out[i] = 0
  else
    if ARGV[b + 3] ~= '' then
      -- XX: never recreate a record that expired meanwhile; KEEPTTL: keep the producer's TTL.
      redis.call('SET', KEYS[5 + i], ARGV[b + 3], 'XX', 'KEEPTTL')
    end
    if ARGV[b + 4] ~= '' then redis.call('ZADD', KEYS[4], ARGV[b + 4], id) end
    if ARGV[b + 5] ~= '' then
      redis.call('LPUSH', KEYS[5], ARGV[b + 5])
      redis.call('LTRIM', KEYS[5], 0, tonumber(ARGV[1]) - 1)
    end
    redis.call('LREM', KEYS[1], 1, id)
    redis.call('ZREM', KEYS[2], id)
    redis.call('HDEL', KEYS[3], id)
    out[i] = 1
  end
end
return out
"""

CAS_MANY = """
-- CAS_MANY: CAS for several records in one call; each is replaced only if it still holds what
-- we read. KEYS[i] webhook:{id_i}; ARGV[2i-1] expected JSON, ARGV[2i] new JSON
-- Returns per record {'ok'}, {'missing'} or {'conflict', current JSON}.
local out = {}
for i = 1, #KEYS do
  local cur = redis.call('GET', KEYS[i])
  if not cur then
    out[i] = {'missing'}
  elseif cur ~= ARGV[2 * i - 1] then
    out[i] = {'conflict', cur}
  else
    redis.call('SET', KEYS[i], ARGV[2 * i], 'KEEPTTL')
    out[i] = {'ok'}
  end
end
return out
"""
