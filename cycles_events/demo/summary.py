"""What the demo observed, and the closing report made of it."""

from __future__ import annotations

import contextlib
import json
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
from redis.asyncio import Redis

from cycles_events import keys
from cycles_events.demo.common import Options, cli_command, hold_command
from cycles_events.demo.receiver import DemoReceiver
from cycles_events.demo.records import Sub
from cycles_events.opsutil import failure_reason, percentile

METRICS = (
    "cycles_webhook_delivery_attempts_total",
    "cycles_webhook_delivery_success_total",
    "cycles_webhook_delivery_retried_total",
    "cycles_webhook_delivery_failed_total",
    "cycles_webhook_subscription_auto_disabled_total",
)


async def scrape(http: aiohttp.ClientSession, port: int) -> dict[str, float]:
    """Totals of the demo's metrics from /actuator/prometheus (summed over labels)."""
    url = f"http://127.0.0.1:{port}/actuator/prometheus"
    totals: dict[str, float] = dict.fromkeys(METRICS, 0.0)
    try:
        async with http.get(url, timeout=aiohttp.ClientTimeout(total=3)) as resp:
            body = await resp.text()
    except (TimeoutError, aiohttp.ClientError, OSError):
        return {}
    for line in body.splitlines():
        m = re.match(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{[^}]*\})?\s+(\S+)", line)
        if m and m.group(1) in totals:
            with contextlib.suppress(ValueError):
                totals[m.group(1)] += float(m.group(2))
    return totals


@dataclass
class Outcome:
    """What the demo observed."""

    records: list[dict[str, Any]]
    elapsed_s: float
    complete: bool


def build_summary(
    *,
    opts: Options,
    subs: Sequence[Sub],
    outcome: Outcome,
    receiver: DemoReceiver,
    pushed_ms: dict[tuple[str, str], int],
    statuses: dict[str, str],
    saved_events: Counter[str],
    metrics: dict[str, float],
    management_port: int,
    redis_url: str,
) -> str:
    """The closing report."""
    records = outcome.records
    by_status = Counter(str(r.get("status")) for r in records)
    failed = [r for r in records if r.get("status") == "FAILED"]
    reasons = Counter(failure_reason(r.get("error_message")) for r in failed)
    retried = [r for r in records if int(r.get("attempts") or 0) > 1]
    scheduled = sum(retries_scheduled(r) for r in records)
    never_ran = sum(1 for r in records if retries_scheduled(r) > 0 and _ended_unsent(r))
    latencies = [
        float(at - pushed_ms[k])
        for k, at in receiver.first_receipt_ms.items()
        if k in pushed_ms and k[0] != "/down"
    ]
    p50, p99 = percentile(latencies, 50), percentile(latencies, 99)
    disabled = [s.name for s in subs if statuses.get(s.subscription_id) == "DISABLED"]
    signed = receiver.signatures_ok + receiver.signatures_bad
    reason_text = ", ".join(f"{k} {v}" for k, v in sorted(reasons.items())) or "none"
    prom = f"http://127.0.0.1:{management_port}/actuator/prometheus"
    lines = [
        "",
        f"== cycles-events demo summary: {opts.events} events, {len(records)} deliveries to "
        f"{len(subs)} subscriptions in {outcome.elapsed_s:.1f} s",
        f"delivered: {by_status['SUCCESS']}  (signatures verified by the receiver: "
        f"{receiver.signatures_ok}/{signed})",
        _retried_line(len(retried), scheduled, never_ran, metrics),
        f"failed:    {len(failed)}  ({reason_text})",
        f"disabled:  {len(disabled)}  {', '.join(disabled)}".rstrip(),
        "latency push->receipt: "
        + (f"p50 {p50:.0f} ms, p99 {p99:.0f} ms" if p50 is not None and p99 is not None else "-")
        + f" over {len(latencies)} first receipts",
        "events saved by the service: "
        + (", ".join(f"{k} {v}" for k, v in sorted(saved_events.items())) or "none"),
    ]
    if not outcome.complete:
        pending = len(records) - by_status["SUCCESS"] - by_status["FAILED"]
        lines.append(f"INCOMPLETE: {pending} deliveries were not finished after the timeout")
    if metrics:
        lines.append(f"metrics scraped from {prom}:")
        lines.extend(f"  {name} {value:g}" for name, value in metrics.items())
    if opts.hold:
        lines.append(f"where to look, until Ctrl-C: {prom}  (health: /actuator/health)")
        lines.append(f"try: REDIS_URL={redis_url} {cli_command()} stats")
    else:
        lines.append(
            "the demo now stops everything, that URL included; to keep it all up and look: "
            + hold_command()
        )
    return "\n".join(lines)


ATTEMPT_REASONS = frozenset({"http_4xx", "http_5xx", "transport_error"})


def _ended_unsent(record: dict[str, Any]) -> bool:
    """Whether a delivery ended FAILED without a last attempt (its subscription, say)."""
    if record.get("status") != "FAILED":
        return False
    return failure_reason(record.get("error_message")) not in ATTEMPT_REASONS


def retries_scheduled(record: dict[str, Any]) -> int:
    """The failed attempts of a delivery that were given a retry, as ..._retried_total counts."""
    attempts = int(record.get("attempts") or 0)
    if record.get("status") == "SUCCESS" or (
        record.get("status") == "FAILED" and not _ended_unsent(record)
    ):
        return max(0, attempts - 1)  # its last attempt ended it
    return attempts  # each attempt so far was given a retry, the last one maybe never run


def _retried_line(
    deliveries: int, scheduled: int, never_ran: int, metrics: dict[str, float]
) -> str:
    line = (
        f"retried:   {deliveries} deliveries needed more than one attempt; {scheduled} "
        "retries scheduled"
    )
    counted = metrics.get("cycles_webhook_delivery_retried_total")
    if counted is not None:
        same = "=" if counted == scheduled else "the metric says"
        line += f" ({same} cycles_webhook_delivery_retried_total {counted:g})"
    if never_ran:
        line += (
            f", {never_ran} never ran (subscription disabled first: FAILED subscription_inactive)"
        )
    return line


async def saved_meta_events(redis: Redis) -> Counter[str]:
    """Event types saved by cycles-events itself (source cycles-events)."""
    members: list[Any] = await redis.zrange(keys.EVENTS_ALL, 0, -1)
    ids = [m.decode() if isinstance(m, bytes) else str(m) for m in members]
    out: Counter[str] = Counter()
    for start in range(0, len(ids), 500):
        for raw in await redis.mget([keys.event(i) for i in ids[start : start + 500]]):
            doc = json.loads(raw) if raw is not None else {}
            if doc.get("source") == "cycles-events":
                out[str(doc.get("event_type"))] += 1
    return out
