"""The peer's Lua scripts: claim, fenced outcome, recovery, retry promotion and the outbox."""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis
from redis.commands.core import AsyncScript

PENDING = "dispatch:pending"
RETRY = "dispatch:retry"
PROCESSING = "dispatch:processing"
CLAIMED_AT = "dispatch:processing:claimed_at"
CLAIM_OWNER = "dispatch:processing:claim_owner"
FAILED = "dispatch:failed"
ORDERING_LOCK = "dispatch:ordering:lock"
OUTBOX_PENDING = "dispatcher:event-outbox:pending"
OUTBOX_ATTEMPTS = "dispatcher:event-outbox:attempts"
OUTBOX_FAILED = "dispatcher:event-outbox:failed"
ORPHAN = "__orphan__"


def task_key(task_id: str) -> str:
    """The outbox task key."""
    return f"dispatcher:event-outbox:task:{task_id}"


def lock_key(task_id: str) -> str:
    """The outbox lock key of one task."""
    return f"dispatcher:event-outbox:lock:{task_id}"


# KEYS: processing, claimed_at, claim_owner. ARGV: id, now ms, token.
CLAIM = """
if not redis.call('LPOS', KEYS[1], ARGV[1]) then return 0 end
local owner = redis.call('HGET', KEYS[3], ARGV[1])
if owner and owner ~= '__orphan__' then return 0 end
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
redis.call('HSET', KEYS[3], ARGV[1], ARGV[3])
return 1
"""

# KEYS: claim_owner, processing, claimed_at, delivery, retry, webhook, failed, outbox pending,
#       then one task key per staged task.
# ARGV: id, token, delivery json|'', retry score|'', sub mode 'cas'|'none', expected sub,
#       new sub, quarantine entry|'', failed max len, task count, then per task: id, json, ms.
# Returns 1 written, 0 fenced out (not our claim), -1 subscription changed (retry the CAS).
OUTCOME = """
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
if ARGV[5] == 'cas' then
  local cur = redis.call('GET', KEYS[6])
  if cur ~= ARGV[6] then return -1 end
end
if ARGV[8] ~= '' then
  redis.call('LPUSH', KEYS[7], ARGV[8])
  redis.call('LTRIM', KEYS[7], 0, tonumber(ARGV[9]) - 1)
end
if ARGV[4] ~= '' then redis.call('ZADD', KEYS[5], ARGV[4], ARGV[1]) end
local n = tonumber(ARGV[10])
for i = 1, n do
  local base = 10 + (i - 1) * 3
  redis.call('SET', KEYS[8 + i], ARGV[base + 2], 'NX')
  redis.call('ZADD', KEYS[8], 'NX', ARGV[base + 3], ARGV[base + 1])
end
if ARGV[3] ~= '' then redis.call('SET', KEYS[4], ARGV[3], 'XX', 'KEEPTTL') end
if ARGV[5] == 'cas' then redis.call('SET', KEYS[6], ARGV[7], 'KEEPTTL') end
redis.call('LREM', KEYS[2], 1, ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('HDEL', KEYS[1], ARGV[1])
return 1
"""

# KEYS: processing, claimed_at, claim_owner, pending. ARGV: now ms, idle ms, max entries.
# Rotates up to max entries (RPOPLPUSH on the list itself); returns {stamped, recovered...}.
RECOVER = """
local n = math.min(redis.call('LLEN', KEYS[1]), tonumber(ARGV[3]))
local now, idle = tonumber(ARGV[1]), tonumber(ARGV[2])
local out = {0}
for i = 1, n do
  local id = redis.call('RPOPLPUSH', KEYS[1], KEYS[1])
  if not id then break end
  local at = redis.call('ZSCORE', KEYS[2], id)
  local owner = redis.call('HGET', KEYS[3], id)
  if (not at) or (not owner) then
    redis.call('ZADD', KEYS[2], now, id)
    redis.call('HSET', KEYS[3], id, '__orphan__')
    out[1] = out[1] + 1
  elseif now - tonumber(at) > idle then
    redis.call('LPUSH', KEYS[4], id)
    redis.call('LREM', KEYS[1], 1, id)
    redis.call('ZREM', KEYS[2], id)
    redis.call('HDEL', KEYS[3], id)
    table.insert(out, id)
  end
end
return out
"""

# KEYS: retry, pending. ARGV: id. Pushes only when this caller removed it.
PROMOTE = """
if redis.call('ZREM', KEYS[1], ARGV[1]) == 1 then
  redis.call('LPUSH', KEYS[2], ARGV[1])
  return 1
end
return 0
"""

# KEYS: event, events:{tenant}, events:_all, [events:correlation:{cid}].
# ARGV: json, ttl s, score ms, event id.
SAVE_EVENT = """
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[4])
redis.call('ZADD', KEYS[3], ARGV[3], ARGV[4])
if KEYS[4] then
  redis.call('SADD', KEYS[4], ARGV[4])
  redis.call('EXPIRE', KEYS[4], ARGV[2])
end
return 1
"""

# KEYS: lock, pending, task, attempts. ARGV: token, task id. Only while the lock is ours.
FINISH_TASK = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('ZREM', KEYS[2], ARGV[2])
redis.call('DEL', KEYS[3])
redis.call('HDEL', KEYS[4], ARGV[2])
redis.call('DEL', KEYS[1])
return 1
"""

# KEYS: lock, pending, task, attempts, failed. ARGV: token, task id, next ms, max attempts,
#       failed entry, failed max len. Defers the task, or dead-letters it after max attempts.
DEFER_TASK = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
local n = redis.call('HINCRBY', KEYS[4], ARGV[2], 1)
if n >= tonumber(ARGV[4]) then
  redis.call('LPUSH', KEYS[5], ARGV[5])
  redis.call('LTRIM', KEYS[5], 0, tonumber(ARGV[6]) - 1)
  redis.call('ZREM', KEYS[2], ARGV[2])
  redis.call('DEL', KEYS[3])
  redis.call('HDEL', KEYS[4], ARGV[2])
  redis.call('DEL', KEYS[1])
  return 2
end
redis.call('ZADD', KEYS[2], 'XX', ARGV[3], ARGV[2])
redis.call('DEL', KEYS[1])
return 1
"""

# KEYS: a lock. ARGV: token. Compare-and-delete.
RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class Scripts:
    """The registered scripts of one Redis client."""

    def __init__(self, redis: Redis) -> None:
        """Register every script on the client."""
        self.claim: AsyncScript = redis.register_script(CLAIM)
        self.outcome: AsyncScript = redis.register_script(OUTCOME)
        self.recover: AsyncScript = redis.register_script(RECOVER)
        self.promote: AsyncScript = redis.register_script(PROMOTE)
        self.save_event: AsyncScript = redis.register_script(SAVE_EVENT)
        self.finish_task: AsyncScript = redis.register_script(FINISH_TASK)
        self.defer_task: AsyncScript = redis.register_script(DEFER_TASK)
        self.release: AsyncScript = redis.register_script(RELEASE)

    async def run(self, script: AsyncScript, keys: list[str], args: list[Any]) -> Any:
        """Run one script (EVALSHA, loading it when the server lost it)."""
        return await script(keys=keys, args=args)
