"""The delivery lifecycle of contract section 3 against a real Redis and a real receiver."""

from __future__ import annotations

import json

from redis.asyncio import Redis

from cycles_events.signing import sign
from tests.integration.conftest import StartApp
from tests.support import Admin, Receiver


async def test_delivers_signed_event_with_every_header(
    start_app: StartApp, admin: Admin, receiver: Receiver, redis: Redis
) -> None:
    await admin.security()
    sub = await admin.subscription(
        receiver.url(), encrypt=True, secret="whsec_abc",
        headers={"X-Team": "ops", "x-cycles-signature": "forged", "Content-Type": "text/plain"},
    )
    event = await admin.event(request_id="req_42")
    delivery_id = await admin.delivery(sub, event, trace_flags="00", traceparent_inbound_valid=True)
    await start_app()
    (doc,) = await admin.wait_status([delivery_id], {"SUCCESS"})
    assert doc["attempts"] == 1 and doc["response_status"] == 200
    assert "completed_at" in doc and "error_message" not in doc
    assert doc["trace_id"] == event["trace_id"]
    (req,) = receiver.requests
    stored = await redis.get(f"event:{event['event_id']}")
    assert req.body == stored
    assert req.headers["X-Cycles-Signature"] == sign("whsec_abc", req.body)
    assert req.headers["Content-Type"] == "application/json"
    assert req.headers["User-Agent"].startswith("cycles-server-events/")
    assert req.headers["X-Cycles-Event-Id"] == event["event_id"]
    assert req.headers["X-Cycles-Event-Type"] == "budget.exhausted"
    assert req.headers["X-Cycles-Trace-Id"] == event["trace_id"]
    version, trace, span, flags = req.headers["traceparent"].split("-")
    assert (version, trace, len(span), flags) == ("00", event["trace_id"], 16, "00")
    assert req.headers["X-Request-Id"] == "req_42"
    assert req.headers["X-Team"] == "ops"
    sub_doc = await admin.sub_record(sub)
    assert sub_doc["consecutive_failures"] == 0
    assert sub_doc["last_success_at"] == sub_doc["last_triggered_at"]
    assert sub_doc["headers"]["x-cycles-signature"] == "forged"  # kept as the admin wrote it
    assert await redis.llen("dispatch:processing") == 0
    assert await redis.hlen("dispatch:processing:claim_owner") == 0
    ttl = await redis.ttl(f"delivery:{delivery_id}")
    assert 13 * 86400 < ttl <= 14 * 86400
    assert json.loads(await redis.get(f"delivery:{delivery_id}"))["attempted_at"] == (
        (await admin.record(delivery_id))["attempted_at"]
    )
