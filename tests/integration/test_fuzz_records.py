"""Hostile records of every kind fed to the running daemon: no worker dies, every delivery ends."""

from __future__ import annotations

import asyncio
import base64
import json
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, event, given, settings
from hypothesis import strategies as st
from redis.asyncio import Redis

from cycles_events.app import App
from cycles_events.crypto import SecretError, decrypt_secret, encrypt_secret
from cycles_events.dispatch import intake, workers
from cycles_events.signing import sign
from cycles_events.urlguard import SecurityConfigError, SecurityPolicy, UrlBlocked
from tests.integration.conftest import StartApp
from tests.support import KEY, OPEN_SECURITY, Admin, Receiver, hex16

# No shrinking: a failing example waits out `settle`, and shrinking would repeat that many times.
FUZZ = settings(
    max_examples=60,
    deadline=None,
    phases=(Phase.explicit, Phase.reuse, Phase.generate),
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
ENDED = {"SUCCESS", "FAILED"}

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)


def mostly(value: Any, *others: Any, odds: int = 3) -> st.SearchStrategy[Any]:
    """`value` about `odds` times in `odds + 1`, else one of `others` or any JSON value."""
    other = st.sampled_from(others) | json_values if others else json_values
    return st.sampled_from([True] * odds + [False]).flatmap(
        lambda pick: st.just(value) if pick else other
    )


def weighted(*options: tuple[int, st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    """One of the strategies, each chosen in proportion to its weight."""
    picks = [i for i, (weight, _) in enumerate(options) for _ in range(weight)]
    return st.sampled_from(picks).flatmap(lambda i: options[i][1])


def encode(value: Any) -> bytes:
    return json.dumps(value).encode()


def metric(app: App, name: str) -> float:
    """The sum of every sample of a metric."""
    return sum(s.value for f in app.metrics.registry.collect() for s in f.samples if s.name == name)


@dataclass
class Harness:
    """The daemon under fuzzing, a good subscription and ways to wait for a delivery's end."""

    app: App
    admin: Admin
    redis: Redis
    receiver: Receiver
    sub: str

    async def outcome(self, delivery_id: bytes) -> str | None:
        """How a delivery ended, or None while it is still queued, claimed or in flight."""
        r = self.redis
        for queue in ("dispatch:pending", "dispatch:processing"):
            if await r.lpos(queue, delivery_id) is not None:
                return None
        wanted = delivery_id.decode("utf-8", "surrogateescape")
        for entry in await r.lrange("dispatch:failed", 0, -1):
            if json.loads(entry.decode("utf-8", "surrogateescape"))["delivery_id"] == wanted:
                return "quarantined"
        raw = await r.get(b"delivery:" + delivery_id)
        if raw is None:
            return "dropped"
        if await r.zscore("dispatch:retry", delivery_id) is not None:
            return "deferred"
        try:
            doc = json.loads(raw)
        except ValueError:
            return None
        status = doc.get("status") if isinstance(doc, dict) else None
        if isinstance(status, str) and status in ENDED:
            return status
        if not isinstance(status, str) or status.upper() not in ("PENDING", "RETRYING"):
            return "skipped"
        return None

    async def settle(
        self, delivery_id: str | bytes, timeout: float = 5.0, *, in_example: bool = True
    ) -> str:
        """Wait for a delivery's end; the daemon must stay whole meanwhile."""
        key = delivery_id.encode() if isinstance(delivery_id, str) else delivery_id
        for _ in range(int(timeout / 0.01)):
            outcome = await self.outcome(key)
            if outcome is not None:
                self.assert_whole()
                if in_example:
                    event(f"outcome: {outcome}")
                return outcome
            await asyncio.sleep(0.01)
        raise AssertionError(f"delivery {key!r} did not end")

    def assert_whole(self) -> None:
        """Every supervised task runs and no delivery hit an unexpected error."""
        dead = [name for name, task in self.app.tasks.items() if task.done()]
        assert dead == []
        assert metric(self.app, "cycles_webhook_dispatch_errors_total") == 0

    async def assert_pool_full(self) -> None:
        """The pool drains back to zero and a good delivery still succeeds."""
        for _ in range(500):
            if self.app.pipeline.counts.claimed == 0:
                break
            await asyncio.sleep(0.01)
        assert self.app.pipeline.counts.claimed == 0
        good = await self.admin.deliver(self.sub)
        assert await self.settle(good, in_example=False) == "SUCCESS"
        self.assert_whole()


@pytest.fixture
async def harness(
    start_app: StartApp,
    admin: Admin,
    receiver: Receiver,
    redis: Redis,
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[Harness]:
    monkeypatch.setattr(intake, "ERROR_RETRY_DELAY_MS", 600_000)
    monkeypatch.setattr(workers, "ERROR_RETRY_DELAY_MS", 600_000)
    await admin.security()
    sub = await admin.subscription(receiver.url("/good"), encrypt=True)
    app = await start_app()
    h = Harness(app, admin, redis, receiver, sub)
    yield h
    await h.assert_pool_full()


# --- delivery records and queue entries --------------------------------------------------------

delivery_docs = st.fixed_dictionaries(
    {"subscription_id": mostly("@sub"), "event_id": mostly("@event")},
    optional={
        "delivery_id": json_values,
        "event_type": json_values | st.just("budget.exhausted"),
        "status": mostly("PENDING", "RETRYING", "pending", "SUCCESS"),
        "attempts": mostly(0, -5, 3, 10**6),
        "attempted_at": mostly("@now", "1970-01-01T00:00:00Z", "garbage", 0),
        "next_retry_at": json_values | st.sampled_from(["2099-01-01T00:00:00Z", "nope"]),
        "trace_id": json_values,
        "trace_flags": json_values,
        "traceparent_inbound_valid": json_values,
    },
)
delivery_records = weighted(
    (1, st.binary(max_size=120)), (1, json_values.map(encode)), (4, delivery_docs.map(encode))
)
queue_ids = st.one_of(
    st.binary(min_size=1, max_size=40),
    st.text(min_size=1, max_size=40).map(str.encode),
    st.just(b"del_" + os.urandom(8).hex().encode()),
)


@FUZZ
@given(record=delivery_records, raw_id=queue_ids)
async def test_hostile_delivery_records_and_queue_entries(
    harness: Harness, record: bytes, raw_id: bytes
) -> None:
    event = await harness.admin.event()
    record = (
        record.replace(b"@sub", harness.sub.encode())
        .replace(b"@event", event["event_id"].encode())
        .replace(b"@now", event["timestamp"].encode())
    )
    delivery_id = f"del_{hex16()}"
    await harness.redis.set(f"delivery:{delivery_id}", record)
    await harness.redis.lpush("dispatch:pending", delivery_id)
    assert await harness.settle(delivery_id) in {
        "SUCCESS",
        "FAILED",
        "quarantined",
        "skipped",
        "deferred",
    }
    # an arbitrary entry pushed onto the queue (no record, or a record at a strange key)
    await harness.redis.set(b"delivery:" + raw_id, record)
    await harness.redis.lpush("dispatch:pending", raw_id)
    await harness.settle(raw_id)


# --- event records -----------------------------------------------------------------------------

event_records = st.one_of(
    st.binary(max_size=120),
    json_values.map(encode),
    st.fixed_dictionaries(
        {"event_id": json_values, "event_type": json_values, "category": json_values},
        optional={
            "timestamp": json_values,
            "tenant_id": json_values,
            "trace_id": json_values | st.just("0" * 32) | st.just("ab" * 16),
            "request_id": json_values | st.just("req\r\nX-Injected: 1"),
            "data": json_values,
        },
    ).map(encode),
)


@FUZZ
@given(record=event_records)
async def test_hostile_event_records(harness: Harness, record: bytes) -> None:
    event_id = f"evt_{hex16()}"
    await harness.redis.set(f"event:{event_id}", record)
    delivery_id = await harness.admin.delivery(harness.sub, {"event_id": event_id})
    outcome = await harness.settle(delivery_id)
    assert outcome in ENDED
    sent = [r for r in harness.receiver.requests if r.body == record]
    if outcome == "SUCCESS":
        assert sent, "a delivered event is sent byte for byte as stored"
        assert all(b"X-Injected" not in bytes(str(r.headers), "utf-8") for r in sent)
    else:
        doc = await harness.admin.record(delivery_id)
        assert doc["attempts"] == 0


# --- subscription records ----------------------------------------------------------------------

subscription_docs = st.fixed_dictionaries(
    {
        "url": mostly("@url", "@url?x=1", " @url ", "@url\r\n", "", "http://[::1", odds=5),
        "status": mostly("ACTIVE", "PAUSED", "DISABLED", "active", odds=5),
    },
    optional={
        "subscription_id": json_values,
        "tenant_id": json_values,
        "headers": json_values
        | st.dictionaries(st.text(max_size=12), json_values | st.text(max_size=20), max_size=4),
        "retry_policy": json_values
        | st.fixed_dictionaries(
            {},
            optional={
                k: json_values
                for k in ("max_retries", "initial_delay_ms", "backoff_multiplier", "max_delay_ms")
            },
        ),
        "disable_after_failures": json_values,
        "consecutive_failures": json_values,
        "event_types": json_values,
    },
)
subscription_records = st.one_of(
    st.binary(max_size=120), json_values.map(encode), subscription_docs.map(encode)
)


@FUZZ
@given(record=subscription_records)
async def test_hostile_subscription_records(harness: Harness, record: bytes) -> None:
    sub_id = f"whsub_{hex16()}"
    url = harness.receiver.url("/fuzzed").encode()
    await harness.redis.set(f"webhook:{sub_id}", record.replace(b"@url", url))
    await harness.redis.set(f"webhook:secret:{sub_id}", "whsec_fuzz")
    delivery_id = await harness.admin.deliver(sub_id)
    outcome = await harness.settle(delivery_id)
    doc = await harness.admin.record(delivery_id)
    assert outcome in ENDED or doc["status"] == "RETRYING"
    # a subscription record still parses as JSON after the service merged into it
    after = await harness.redis.get(f"webhook:{sub_id}")
    if outcome == "SUCCESS":
        assert isinstance(json.loads(after), dict)


# --- stored secrets ----------------------------------------------------------------------------

stored_secrets = st.one_of(
    st.binary(max_size=80),
    st.text(max_size=40).map(lambda t: ("enc:" + t).encode("utf-8", "surrogatepass")),
    st.binary(max_size=80).map(lambda b: b"enc:" + base64.b64encode(b)),
    st.text(max_size=20).map(lambda t: encrypt_secret(t, os.urandom(32)).encode()),
    st.text(max_size=20).map(lambda t: encrypt_secret(t, KEY).encode()),
)


@FUZZ
@given(stored=stored_secrets)
async def test_hostile_stored_secrets(harness: Harness, stored: bytes) -> None:
    await harness.redis.set(f"webhook:secret:{harness.sub}", stored)
    event = await harness.admin.event()
    delivery_id = await harness.admin.delivery(harness.sub, event)
    outcome = await harness.settle(delivery_id)
    event_id = event["event_id"]
    sent = [r for r in harness.receiver.requests if r.headers["X-Cycles-Event-Id"] == event_id]
    text = stored.decode("utf-8", "replace")
    try:
        secret: str | None = decrypt_secret(text, KEY)
    except SecretError:
        secret = None
    if secret is None or not secret.strip():
        # revision 2: never an unsigned send, and the delivery is kept for a later try
        assert outcome == "deferred" and sent == []
        doc = await harness.admin.record(delivery_id)
        assert doc["status"] == "PENDING" and doc["attempts"] == 0
        await harness.redis.zrem("dispatch:retry", delivery_id)
    else:
        assert outcome == "SUCCESS"
        assert [r.headers["X-Cycles-Signature"] for r in sent] == [sign(secret, sent[0].body)]
    await harness.redis.set(f"webhook:secret:{harness.sub}", encrypt_secret("whsec_ok", KEY))


# --- the security config -----------------------------------------------------------------------

CIDRS = [
    "127.0.0.0/8",
    "127.0.0.1/32",
    "::1/128",
    "10.0.0.0/8",
    "192.0.2.0/24",
    "bogus",
    "127.0.0.0/33",
    " 0.0.0.0/0 ",
]
PATTERNS = ["*", "http://127.0.0.1:*", "https://*", "", "@url*"]
security_docs = st.fixed_dictionaries(
    {},
    optional={
        "allow_http": mostly(True),
        "allowed_url_patterns": weighted(
            (1, json_values), (3, st.lists(st.sampled_from(PATTERNS)))
        ),
        "blocked_cidr_ranges": weighted(
            (1, st.none()),
            (2, st.just(["192.0.2.0/24"])),
            (1, json_values),
            (2, st.lists(st.sampled_from(CIDRS))),
        ),
    },
)
security_configs = weighted(
    (1, st.binary(max_size=80)), (1, json_values.map(encode)), (4, security_docs.map(encode))
)


@FUZZ
@given(raw=security_configs)
async def test_hostile_security_configs(harness: Harness, raw: bytes) -> None:
    url = harness.receiver.url("/good")
    raw = raw.replace(b"@url", url.encode())
    await harness.redis.set("config:webhook-security", raw)
    await harness.app.security.step()
    delivery_id = await harness.admin.deliver(harness.sub)
    outcome = await harness.settle(delivery_id)
    try:
        policy = SecurityPolicy.from_stored(raw, allow_private_networks=True)
    except SecurityConfigError:
        assert outcome == "deferred"  # parked, never failed for a configuration mistake
        assert harness.app.policy.error is not None
    else:
        try:
            policy.check_url(url)
            assert outcome == "SUCCESS"
        except UrlBlocked as exc:
            assert outcome == "FAILED"
            assert (await harness.admin.record(delivery_id))["error_message"] == str(exc)
    await harness.redis.set("config:webhook-security", json.dumps(OPEN_SECURITY))
    await harness.app.security.step()


async def test_non_utf8_queue_entries_end(harness: Harness) -> None:
    await harness.redis.lpush("dispatch:pending", b"\x80del")

    async def acked() -> bool:
        return (
            await harness.redis.llen("dispatch:pending") == 0
            and await harness.redis.lpos("dispatch:processing", b"\x80del") is None
            and not await harness.redis.hexists("dispatch:processing:claim_owner", b"\x80del")
        )

    for _ in range(500):
        if await acked():
            break
        await asyncio.sleep(0.01)
    assert await acked()
