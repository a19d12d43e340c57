"""One Java-like single sender: claim, lifecycle (contract section 3) and fenced outcomes."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from tests.javapeer import outbox
from tests.javapeer import scripts as k
from tests.javapeer.records import (
    BOUNDARY_MESSAGE,
    USER_AGENT,
    CorruptRecord,
    backoff_ms,
    boundary_allows,
    check_delivery,
    decrypt_secret,
    disable_after,
    dumps,
    format_instant,
    load_object,
    parse_instant_ms,
    retry_policy,
    sign,
    stale_message,
    text,
    trace_flags,
    valid_trace_id,
)

if TYPE_CHECKING:
    from tests.javapeer.peer import JavaPeer

# Merge: the current subscription (None when absent or unreadable) -> (new one or None, tasks).
Merge = Callable[[dict[str, Any] | None], tuple[dict[str, Any] | None, list[outbox.Task]]]
RESERVED = {
    "content-type",
    "user-agent",
    "x-cycles-event-id",
    "x-cycles-event-type",
    "x-cycles-trace-id",
    "traceparent",
    "x-request-id",
    "x-cycles-signature",
    # restricted by Java's HttpClient (it refuses them): never forwarded
    "host",
    "content-length",
    "connection",
    "expect",
    "upgrade",
    "transfer-encoding",
}


@dataclass
class Outcome:
    """One fenced write: what changes together with the ack."""

    name: str
    delivery: dict[str, Any] | None = None
    retry_at: int | None = None
    quarantine: str | None = None
    merge: Merge | None = None
    fields: dict[str, Any] = field(default_factory=dict)


@dataclass
class Plan:
    """Everything a send needs, once every check before it has passed."""

    delivery_id: str
    url: str
    body: bytes
    doc: dict[str, Any]
    event: dict[str, Any]
    sub: dict[str, Any]
    secret: str


@dataclass
class Sent:
    """The answer (or the lack of one) of one POST."""

    status: int | None
    error: str | None
    elapsed_ms: int

    @property
    def ok(self) -> bool:
        """Any 2xx."""
        return self.status is not None and 200 <= self.status < 300


class Worker:
    """One worker = one Java instance: one delivery at a time, its own claim tokens."""

    def __init__(self, peer: JavaPeer, index: int) -> None:
        """Worker `index` of a peer."""
        self.peer = peer
        self.index = index
        self.opts = peer.options

    def _emit(self, action: str, delivery_id: str | None, **fields: Any) -> None:
        """Log one action of this worker."""
        self.peer.log.emit(action, delivery_id, worker=self.index, **fields)

    async def run(self) -> None:
        """Claim and handle until the peer stops."""
        while not self.peer.stopping.is_set():
            try:
                await self.step()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # Redis trouble: the claim (if any) waits for recovery
                self._emit("error", None, error=type(exc).__name__, detail=str(exc)[:200])
                await asyncio.sleep(0.2)

    async def step(self) -> str | None:
        """One BLMOVE, claim and lifecycle; the delivery id, or None when nothing came."""
        redis = self.peer.redis
        timeout: Any = self.opts.pending_timeout_s  # Redis takes fractions of a second
        delivery_id = text(await redis.blmove(k.PENDING, k.PROCESSING, timeout, "RIGHT", "LEFT"))
        if delivery_id is None:
            return None
        self.peer.kill_point("blmove")
        token = str(uuid.uuid4())
        args = [delivery_id, self.peer.now(), token]
        claimed = await self.peer.sc.run(
            self.peer.sc.claim, [k.PROCESSING, k.CLAIMED_AT, k.CLAIM_OWNER], args
        )
        if claimed != 1:
            self._emit("claim_refused", delivery_id)
            return delivery_id
        self._emit("claimed", delivery_id)
        await self.handle(delivery_id, token)
        return delivery_id

    async def handle(self, delivery_id: str, token: str) -> None:
        """The lifecycle of one claimed delivery."""
        decided = await self.decide(delivery_id)
        if isinstance(decided, Outcome):
            await self.write(delivery_id, token, decided)
            return
        async with self.peer.ordering_lease():
            sent = await self.send(delivery_id, decided)
            self.peer.kill_point("send")
            outcome = self._after_send(decided, sent, self.peer.now())
            await self.write(delivery_id, token, outcome)

    async def decide(self, delivery_id: str) -> Outcome | Plan:
        """Steps 1-8 of the lifecycle: the outcome to write, or the send to make."""
        redis, now = self.peer.redis, self.peer.now()
        raw = text(await redis.get(f"delivery:{delivery_id}"))
        if raw is None:
            return Outcome("missing")
        try:
            doc = check_delivery(raw)
        except CorruptRecord:
            entry = {
                "delivery_id": delivery_id,
                "reason": "corrupt_record",
                "quarantined_at_ms": now,
                "payload": raw,
            }
            return Outcome("quarantined", quarantine=dumps(entry))
        if doc["status"] not in ("PENDING", "RETRYING"):
            return Outcome("skipped", fields={"status": doc["status"]})
        next_at = parse_instant_ms(doc.get("next_retry_at"))
        if doc["status"] == "RETRYING" and next_at is not None and next_at > now:
            return Outcome("deferred", retry_at=next_at)
        attempted = parse_instant_ms(doc.get("attempted_at"))
        if attempted is not None and now - attempted > self.opts.max_delivery_age_ms:
            message = stale_message(now - attempted, self.opts.max_delivery_age_ms)
            return self._failed("stale", doc, message, now)
        event_raw = text(await redis.get(f"event:{doc['event_id']}"))
        event = load_object(event_raw)
        if event_raw is None or event is None:
            return self._failed("event_not_found", doc, f"Event not found: {doc['event_id']}", now)
        if not doc.get("trace_id") and isinstance(event.get("trace_id"), str):
            doc["trace_id"] = event["trace_id"]
        sub = load_object(text(await redis.get(f"webhook:{doc['subscription_id']}")))
        if sub is None:
            return self._failed("subscription_not_found", doc, "Subscription not found", now)
        if sub.get("status") != "ACTIVE":
            message = f"Subscription not active: {sub.get('status') or 'null'}"
            return self._failed("subscription_not_active", doc, message, now)
        if not boundary_allows(sub, event):
            return self._failed("boundary_blocked", doc, BOUNDARY_MESSAGE, now)
        url = sub.get("url")
        why = _url_problem(url)
        if why is not None:
            return self._failed("url_blocked", doc, f"URL blocked: {why}", now)
        stored = text(await redis.get(f"webhook:secret:{doc['subscription_id']}"))
        secret = decrypt_secret(stored, self.peer.key)
        if secret is None:
            return Outcome("secret_unavailable", retry_at=now + self.opts.secret_retry_delay_ms)
        assert isinstance(url, str) and event_raw is not None
        return Plan(delivery_id, url, event_raw.encode("utf-8"), doc, event, sub, secret)

    def _failed(self, name: str, doc: dict[str, Any], message: str, now: int) -> Outcome:
        """An upstream FAILED outcome: no attempt, no failure count, no meta-event."""
        doc["status"] = "FAILED"
        doc["error_message"] = message
        doc["completed_at"] = format_instant(now)
        doc.pop("next_retry_at", None)
        return Outcome(name, delivery=doc, fields={"error": message})

    async def send(self, delivery_id: str, plan: Plan) -> Sent:
        """POST the event with the headers of contract section 4."""
        doc, event, sub = plan.doc, plan.event, plan.sub
        doc["attempts"] = int(doc.get("attempts") or 0) + 1
        trace = event["trace_id"] if valid_trace_id(event.get("trace_id")) else os.urandom(16).hex()
        headers: dict[str, str] = {}
        custom = sub.get("headers")
        if isinstance(custom, dict):
            for name, value in custom.items():
                if isinstance(name, str) and name.lower() not in RESERVED and value is not None:
                    headers[name] = str(value)
        headers["Content-Type"] = "application/json"
        headers["User-Agent"] = USER_AGENT
        headers["X-Cycles-Event-Id"] = str(event.get("event_id", doc["event_id"]))
        headers["X-Cycles-Event-Type"] = str(event.get("event_type", doc.get("event_type", "")))
        headers["X-Cycles-Trace-Id"] = trace
        headers["traceparent"] = f"00-{trace}-{os.urandom(8).hex()}-{trace_flags(doc)}"
        request_id = event.get("request_id")
        if isinstance(request_id, str) and request_id.strip():
            headers["X-Request-Id"] = request_id
        headers["X-Cycles-Signature"] = sign(plan.body, plan.secret)
        started = time.monotonic()
        status: int | None = None
        error: str | None = None
        try:
            async with self.peer.http.post(
                plan.url, data=plan.body, headers=headers, allow_redirects=False
            ) as resp:
                await resp.read()
                status = resp.status
        except asyncio.CancelledError:
            raise
        except TimeoutError:
            error = "Request timed out"
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}"[:300]
        elapsed = int((time.monotonic() - started) * 1000)
        if status is not None and not 200 <= status < 300:
            error = f"HTTP {status}"
        self._emit("sent", delivery_id, status=status, error=error, attempt=doc["attempts"])
        return Sent(status, error, elapsed)

    def _after_send(self, plan: Plan, sent: Sent, now: int) -> Outcome:
        """Step 9: SUCCESS, RETRYING or FAILED, with the subscription merge."""
        doc, event, sub = plan.doc, plan.event, plan.sub
        stamp = format_instant(now)
        doc["response_time_ms"] = sent.elapsed_ms
        if sent.status is None:
            doc.pop("response_status", None)
        else:
            doc["response_status"] = sent.status
        if sent.ok:
            doc["status"] = "SUCCESS"
            doc["completed_at"] = stamp
            doc.pop("error_message", None)
            doc.pop("next_retry_at", None)
            return Outcome("success", delivery=doc, merge=_success_merge(stamp))
        doc["error_message"] = sent.error
        max_retries, initial, multiplier, maximum = retry_policy(sub)
        if doc["attempts"] <= max_retries:
            retry_at = now + backoff_ms(doc["attempts"], initial, multiplier, maximum)
            doc["status"] = "RETRYING"
            doc["next_retry_at"] = format_instant(retry_at)
            return Outcome("retrying", delivery=doc, retry_at=retry_at)
        doc["status"] = "FAILED"
        doc["completed_at"] = stamp
        doc.pop("next_retry_at", None)
        del_id = plan.delivery_id
        failed_task = outbox.delivery_failed_task(
            del_id, doc, sub, event, now, sent.status, sent.error
        )

        def merge(cur: dict[str, Any] | None) -> tuple[dict[str, Any] | None, list[outbox.Task]]:
            """Count the failure, disable past the threshold (`>`), stage the meta-events."""
            if cur is None:
                return None, [failed_task]
            count = cur.get("consecutive_failures")
            count = count if isinstance(count, int) and not isinstance(count, bool) else 0
            cur["consecutive_failures"] = count + 1
            cur["last_triggered_at"] = cur["last_failure_at"] = stamp
            tasks = [failed_task]
            if count + 1 > disable_after(cur) and cur.get("status") in ("ACTIVE", "PAUSED"):
                tasks.append(outbox.webhook_disabled_task(del_id, doc, cur, event, now))
                cur["status"] = "DISABLED"
            return cur, tasks

        return Outcome("failed", delivery=doc, merge=merge)

    async def write(self, delivery_id: str, token: str, outcome: Outcome) -> bool:
        """The fenced outcome script, retried while the subscription CAS conflicts."""
        redis = self.peer.redis
        doc = outcome.delivery
        sub_key = f"webhook:{doc['subscription_id']}" if doc else "webhook:-"
        for _ in range(50):
            mode, expected, new_sub = "none", "", ""
            tasks: list[outbox.Task] = []
            if outcome.merge is not None:
                current = text(await redis.get(sub_key))
                merged, tasks = outcome.merge(load_object(current))
                if current is not None and merged is not None:
                    mode, expected, new_sub = "cas", current, dumps(merged)
            keys = [
                k.CLAIM_OWNER,
                k.PROCESSING,
                k.CLAIMED_AT,
                f"delivery:{delivery_id}",
                k.RETRY,
                sub_key,
                k.FAILED,
                k.OUTBOX_PENDING,
                *(k.task_key(t.task_id) for t in tasks),
            ]
            args: list[Any] = [
                delivery_id,
                token,
                dumps(doc) if doc is not None else "",
                outcome.retry_at if outcome.retry_at is not None else "",
                mode,
                expected,
                new_sub,
                outcome.quarantine or "",
                self.opts.failed_max_len,
                len(tasks),
            ]
            for t in tasks:
                args.extend([t.task_id, t.json, t.created_ms])
            result = await self.peer.sc.run(self.peer.sc.outcome, keys, args)
            if result == -1:
                continue
            if result == 0:
                self._emit("fenced_out", delivery_id, outcome=outcome.name)
                return False
            extra = dict(outcome.fields)
            if doc is not None:
                extra["attempts"] = doc.get("attempts")
            if tasks:
                extra["tasks"] = [t.task_id for t in tasks]
                self.peer.publisher.kick.set()
            self._emit("outcome", delivery_id, outcome=outcome.name, **extra)
            return True
        self._emit("cas_gave_up", delivery_id, outcome=outcome.name)
        return False


def _success_merge(stamp: str) -> Merge:
    """The subscription merge of a success."""

    def merge(cur: dict[str, Any] | None) -> tuple[dict[str, Any] | None, list[outbox.Task]]:
        """Reset the failure count and stamp the success."""
        if cur is None:
            return None, []
        cur["consecutive_failures"] = 0
        cur["last_triggered_at"] = cur["last_success_at"] = stamp
        return cur, []

    return merge


def _url_problem(url: Any) -> str | None:
    """Why a URL cannot be used (http/https with a host only; no SSRF checks)."""
    if not isinstance(url, str) or not url:
        return "no URL"
    try:
        parts = urlsplit(url)
    except ValueError:
        return "malformed URL"
    if parts.scheme.lower() not in ("http", "https"):
        return "scheme must be http or https"
    if not parts.hostname:
        return "no host"
    return None
