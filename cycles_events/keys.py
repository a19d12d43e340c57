"""Every Redis key name and Lua script of the service, in one place (scripts in `lua/`)."""

from __future__ import annotations

from importlib import resources

PENDING = "dispatch:pending"
RETRY = "dispatch:retry"
PROCESSING = "dispatch:processing"
CLAIMED_AT = "dispatch:processing:claimed_at"
CLAIM_OWNER = "dispatch:processing:claim_owner"
FAILED = "dispatch:failed"
SECURITY_CONFIG = "config:webhook-security"
EVENTS_ALL = "events:_all"
OUTBOX_PENDING = "dispatcher:event-outbox:pending"
OUTBOX_ATTEMPTS = "dispatcher:event-outbox:attempts"
OUTBOX_FAILED = "dispatcher:event-outbox:failed"
# One retention pass per interval across the fleet, the Java service included.
RETENTION_LOCK = "maintenance:events-retention:lock"
# Java's fleet-wide single-sender lease: never taken, never deleted here (named for the tests).
JAVA_ORDERING_LOCK = "dispatch:ordering:lock"
EVENTS_PATTERN = "events:*"
DELIVERIES_PATTERN = "deliveries:*"
# The owner Java's recovery gives an entry it dates: free for anyone to claim.
ORPHAN = "__orphan__"

DELIVERY_PREFIX = "delivery:"
EVENT_PREFIX = "event:"
SUBSCRIPTION_PREFIX = "webhook:"
SECRET_PREFIX = "webhook:secret:"
PREVIOUS_SECRET_SUFFIX = ":previous"
# what CLAIM is given to read a claimed delivery's event, subscription and secrets
RELATED_PREFIXES = (EVENT_PREFIX, SUBSCRIPTION_PREFIX, SECRET_PREFIX, PREVIOUS_SECRET_SUFFIX)
OUTBOX_TASK_PREFIX = "dispatcher:event-outbox:task:"


def delivery(delivery_id: str) -> str:
    """The delivery record."""
    return f"{DELIVERY_PREFIX}{delivery_id}"


def deliveries(subscription_id: str) -> str:
    """A subscription's delivery index (ZSET by creation ms)."""
    return f"deliveries:{subscription_id}"


def event(event_id: str) -> str:
    """The event record."""
    return f"{EVENT_PREFIX}{event_id}"


def tenant_events(tenant_id: str) -> str:
    """A tenant's event index (ZSET by event ms)."""
    return f"events:{tenant_id}"


def correlation(correlation_id: str) -> str:
    """The SET of event ids sharing a correlation id."""
    return f"events:correlation:{correlation_id}"


def subscription(subscription_id: str) -> str:
    """The subscription record."""
    return f"{SUBSCRIPTION_PREFIX}{subscription_id}"


def secret(subscription_id: str) -> str:
    """The subscription's signing secret (plaintext or enc:...)."""
    return f"{SECRET_PREFIX}{subscription_id}"


def previous_secret(subscription_id: str) -> str:
    """A rotated-out signing secret, kept (its TTL the grace period) for Standard Webhooks."""
    return f"{SECRET_PREFIX}{subscription_id}{PREVIOUS_SECRET_SUFFIX}"


# The adaptive limits held below the maximum, by subscription, as this fleet's instances last
# wrote them (for `cycles-events subscriptions show`; expires when no instance writes it).
CONCURRENCY_LIMITS = "cycles-events:concurrency-limits"


def outbox_task(task_id: str) -> str:
    """A staged meta-event of the outbox."""
    return f"{OUTBOX_TASK_PREFIX}{task_id}"


def outbox_lock(task_id: str) -> str:
    """The lock a publisher takes on one outbox task."""
    return f"dispatcher:event-outbox:lock:{task_id}"


def _script(name: str) -> str:
    """A script of `lua/`, its header first, then the shared helpers, then its body.

    The `#!lua` line makes Redis refuse the whole script up front when it is out of memory,
    instead of failing it half-way.
    """
    folder = resources.files("cycles_events") / "lua"
    text = (folder / f"{name}.lua").read_text(encoding="utf-8")
    if "--@lib\n" in text:
        lib = (folder / "lib.lua").read_text(encoding="utf-8")
        text = text.replace("--@lib\n", lib, 1)
    return "#!lua\n" + text


CLAIM = _script("claim")
HEARTBEAT = _script("heartbeat")
RECOVER = _script("recover")
PROMOTE = _script("promote")
OUTCOME = _script("outcome")
# OUTCOME's KEYS, in order
OUTCOME_KEYS = (PENDING, PROCESSING, CLAIMED_AT, CLAIM_OWNER, RETRY, FAILED, OUTBOX_PENDING)
PUBLISH = _script("publish")
DEFER = _script("defer")
SAVE_EVENT = _script("save_event")
TRIM_ZSET = _script("trim_zset")
REPLAY_DELIVERY = _script("replay_delivery")
QUARANTINE_TAKE = _script("quarantine_take")
CAS = _script("cas")
