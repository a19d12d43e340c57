"""Pure record logic: parsing, payload checks, transitions, subscription merge, meta-events."""

from __future__ import annotations

import json

import pytest

from cycles_events import lifecycle, metaevents
from cycles_events.lifecycle import SubscriptionChange, merge_subscription
from cycles_events.metaevents import Task
from cycles_events.models import Delivery, RecordError, dumps, payload_problems
from cycles_events.signing import build_headers, custom_headers
from cycles_events.storevalues import Write, outcome_args

DELIVERY = {
    "delivery_id": "del_8c4e2f9a0b1d3e57",
    "subscription_id": "whsub_0a1b2c3d4e5f6071",
    "event_id": "evt_3f9a1c0d5e7b2a64",
    "event_type": "budget.exhausted",
    "status": "PENDING",
    "attempted_at": "2026-11-22T08:15:30.140Z",
    "attempts": 0,
    "future_field": {"kept": [1, 2.5]},
}


def parsed(**fields: object) -> Delivery:
    return Delivery.parse("del_8c4e2f9a0b1d3e57", dumps({**DELIVERY, **fields}))


def test_delivery_parse_keeps_unknown_fields() -> None:
    d = parsed()
    assert d.attempted_at_ms == 1795335330140
    assert lifecycle.succeeded(d, 1795335331000, attempts=1, status=200, elapsed_ms=5)[
        "future_field"
    ] == {"kept": [1, 2.5]}


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"not json",
        b"[]",
        b'"x"',
        b'{"subscription_id": "s"}',
        b'{"event_id": 1}',
        json.dumps({**DELIVERY, "attempts": "two"}).encode(),
    ],
)
def test_unusable_delivery_records(raw: bytes) -> None:
    with pytest.raises(RecordError):
        Delivery.parse("del_x", raw)


def test_transitions() -> None:
    d = parsed(trace_id="a" * 32)
    ok = lifecycle.succeeded(d, 1795335331000, attempts=1, status=204, elapsed_ms=12)
    assert ok["status"] == "SUCCESS" and ok["completed_at"] == "2026-11-22T08:15:31Z"
    assert ok["attempted_at"] == DELIVERY["attempted_at"] and "error_message" not in ok
    retry = lifecycle.retrying(
        d, attempts=2, status=503, elapsed_ms=9, message="HTTP 503", next_retry_ms=1795335333412
    )
    assert retry["next_retry_at"] == "2026-11-22T08:15:33.412Z" and retry["status"] == "RETRYING"
    failed = lifecycle.failed(
        parsed(**retry), 1795335340000, "HTTP 503", attempts=6, status=503, elapsed_ms=3
    )
    assert failed["status"] == "FAILED" and "next_retry_at" not in failed
    assert failed["response_status"] == 503 and failed["attempts"] == 6
    assert (
        lifecycle.stale_message(25 * 3_600_000, 86_400_000) == "Delivery expired: 25h old (max 24h)"
    )


def test_trace_copied_only_when_missing() -> None:
    assert lifecycle.with_trace(parsed(), {"trace_id": "b" * 32}).doc["trace_id"] == "b" * 32
    assert (
        lifecycle.with_trace(parsed(trace_id="c" * 32), {"trace_id": "b" * 32}).doc["trace_id"]
        == "c" * 32
    )


def test_subscription_merge_counts_and_disables_when_the_count_exceeds_the_threshold() -> None:
    sub = {"status": "ACTIVE", "consecutive_failures": 2, "disable_after_failures": 3, "x": [1]}
    r1 = merge_subscription(sub, SubscriptionChange(False, 1795335330000, "d1"))
    assert not r1.disabled and sub["consecutive_failures"] == 3  # reaching it is not enough
    r2 = merge_subscription(sub, SubscriptionChange(False, 1795335331000, "d2"))
    assert r2.disabled and r2.previous_status == "ACTIVE" and sub["status"] == "DISABLED"
    assert sub["last_failure_at"] == sub["last_triggered_at"] == "2026-11-22T08:15:31Z"
    r3 = merge_subscription(sub, SubscriptionChange(False, 1795335332000, "d3"))
    assert not r3.disabled  # already DISABLED: no second event
    merge_subscription(sub, SubscriptionChange(True, 1795335333000, "d4"))
    assert sub["consecutive_failures"] == 0 and sub["status"] == "DISABLED" and sub["x"] == [1]


def test_paused_subscription_can_be_disabled() -> None:
    sub = {"status": "PAUSED", "consecutive_failures": 10}
    assert merge_subscription(sub, SubscriptionChange(False, 0, "d")).previous_status == "PAUSED"


def test_default_threshold_disables_on_the_eleventh_failure() -> None:
    sub: dict[str, object] = {"status": "ACTIVE", "consecutive_failures": 0}
    results = [merge_subscription(sub, SubscriptionChange(False, 0, "d")) for _ in range(11)]
    assert [r.disabled for r in results] == [False] * 10 + [True]


def test_a_success_goes_by_parts_only_where_its_fields_are_plain_top_level_values() -> None:
    fields = '"consecutive_failures":3,"last_triggered_at":null,"last_success_at":"x"'
    raw = '{"subscription_id":"s",' + fields + ',"retry_policy":{"backoff_multiplier":2.0}}'

    def parts(raw: str) -> tuple[str, ...] | None:
        merged = json.loads(raw)
        merged.update(last_triggered_at="T", last_success_at="T", consecutive_failures=0)
        return lifecycle.success_parts(raw, merged)

    assert parts(raw) == (
        '{"subscription_id":"s","consecutive_failures":',
        "0",
        ',"last_triggered_at":',
        '"T"',
        ',"last_success_at":',
        '"T"',
        ',"retry_policy":{"backoff_multiplier":2.0}}',
    )
    assert parts(raw.replace('"x"', '"x\\u0041"')) is None  # a value with an escape
    assert parts(raw.replace(":3,", ":3.0,")) is None  # not a whole number
    assert parts(raw.replace(":3,", ": 3,")) is None  # a space before the value
    assert parts(raw.replace(',"last_triggered_at":null', "")) is None  # a field missing
    nested = raw[:-1] + ',"metadata":{"last_success_at":1}}'
    assert parts(nested) is None  # named twice
    # the top-level field written with a space: the one found is the nested one
    spaced = nested.replace('"last_success_at":"x"', '"last_success_at" :"x"')
    assert parts(spaced) is None


def test_meta_events_shape() -> None:
    d = parsed(trace_id="a" * 32)
    sub = {"tenant_id": "acme", "subscription_id": d.subscription_id}
    task = metaevents.disabled_task(sub, d, {"request_id": "req_1"}, "ACTIVE", 1795335330000)
    assert task.task_id == f"webhook-disabled:{d.subscription_id}:{d.delivery_id}"
    staged = json.loads(task.json)
    assert list(staged) == ["task_id", "created_at", "event"]
    assert staged["created_at"] == "2026-11-22T08:15:30Z" and task.created_ms == 1795335330000
    disabled = staged["event"]
    assert disabled["event_id"] == metaevents.event_id_for(task.task_id)
    assert disabled["event_type"] == "webhook.disabled" and disabled["category"] == "webhook"
    assert disabled["tenant_id"] == "acme" and disabled["actor"] == {"type": "system"}
    assert disabled["data"]["changed_fields"] == []
    assert disabled["data"]["disable_reason"] == "consecutive_failures_exceeded_threshold"
    assert disabled["correlation_id"] == f"webhook_auto_disable:{d.subscription_id}:{d.delivery_id}"
    assert disabled["trace_id"] == "a" * 32 and disabled["request_id"] == "req_1"
    again = json.loads(metaevents.disabled_task(sub, d, None, "ACTIVE", 1795335339999).json)
    assert again["event"]["event_id"] == disabled["event_id"]  # the same failure: one event
    failed_task = metaevents.failed_task(
        sub, d, None, attempts=6, status=503, error="HTTP 503", now_ms=1795335330000
    )
    assert failed_task.task_id == f"delivery-failed:{d.subscription_id}:{d.delivery_id}"
    failed = json.loads(failed_task.json)["event"]
    assert failed["event_id"] == metaevents.event_id_for(failed_task.task_id)
    assert failed["tenant_id"] == "__system__" and failed["source"] == "cycles-events"
    details = failed["data"]["details"]
    assert details["attempts"] == 6 and details["last_response_status"] == 503
    assert failed["data"]["component"] == "webhook_dispatcher"
    assert failed["data"]["severity"] == "warning"


def test_payload_problems() -> None:
    good = {
        "event_id": "e",
        "event_type": "budget.exhausted",
        "category": "budget",
        "timestamp": "t",
        "tenant_id": "a",
        "source": "s",
        "trace_id": "a" * 32,
        "data": {"ledger_id": "led_1", "operation": "DEBIT"},
    }
    assert payload_problems(good) == []
    assert payload_problems({**good, "category": "tenant"}) == ["category_mismatch"]
    assert payload_problems({**good, "event_type": "made.up"}) == ["unknown_event_type"]
    assert payload_problems({**good, "event_type": "custom.thing", "category": "custom"}) == []
    assert payload_problems({**good, "category": "weird"}) == [
        "unknown_category",
        "category_mismatch",
    ]
    assert payload_problems({**good, "trace_id": "XYZ"}) == ["trace_id_shape"]
    assert "missing_required" in payload_problems({"event_type": "budget.exhausted"})
    # revision 2: the shape of budget events' data
    assert payload_problems({**good, "data": {"operation": "DEBIT"}}) == ["budget_data_shape"]
    assert payload_problems({**good, "data": None}) == ["budget_data_shape"]
    for operation in ("CREDIT", "RESET_SPENT", "STATUS_CHANGE", "CREATE", "UPDATE"):
        assert payload_problems({**good, "data": {"ledger_id": "l", "operation": operation}}) == []
    for operation in ("debit", "REFUND", 5, ["DEBIT"]):
        bad = {**good, "data": {"ledger_id": "l", "operation": operation}}
        assert payload_problems(bad) == ["budget_data_shape"]
    reset = {**good, "event_type": "budget.reset_spent"}
    ok = {"ledger_id": "l", "spent_override_provided": True}
    assert payload_problems({**reset, "data": ok}) == []
    assert payload_problems({**reset, "data": {"ledger_id": "l"}}) == []
    bad_flag = {"ledger_id": "l", "spent_override_provided": "yes"}
    assert payload_problems({**reset, "data": bad_flag}) == ["reset_spent_shape"]
    tenant_event = {**good, "event_type": "tenant.created", "category": "tenant", "data": {}}
    assert payload_problems(tenant_event) == []


def test_custom_headers_never_replace_ours() -> None:
    headers = custom_headers(
        {
            "X-Team": "ops",
            "content-type": "x",
            "X-CYCLES-SIGNATURE": "x",
            "Host": "evil",
            "Bad Name": "v",
            "X-Inject": "a\r\nb",
            "X-Num": 5,
        }
    )
    assert headers == {"X-Team": "ops", "X-Num": "5"}


def test_headers_use_event_trace_and_delivery_flags() -> None:
    event = {"event_id": "evt_1", "event_type": "budget.exhausted", "trace_id": "a" * 32}
    ids = iter(["1" * 16])
    h = build_headers(
        event=event,
        delivery={"trace_flags": "00", "traceparent_inbound_valid": True},
        subscription={},
        body=b"{}",
        secret=None,
        user_agent="ua",
        rand_hex=lambda n: next(ids),
    )
    assert h["traceparent"] == f"00-{'a' * 32}-{'1' * 16}-00"
    assert "X-Cycles-Signature" not in h and "X-Request-Id" not in h
    h2 = build_headers(
        event={**event, "trace_id": "bad"},
        delivery={"trace_flags": "00"},
        subscription={},
        body=b"{}",
        secret="s",
        user_agent="ua",
    )
    assert h2["X-Cycles-Trace-Id"] != "bad" and len(h2["X-Cycles-Trace-Id"]) == 32
    assert h2["traceparent"].endswith("-01")


def test_redis_state_debounces_isolated_failures() -> None:
    from cycles_events.connection import RedisState

    now = [100.0]
    state = RedisState(clock=lambda: now[0])
    state.ok()
    state.failed(ConnectionError())  # a stale pooled connection right after a success
    assert state.up
    now[0] += 0.5
    state.failed(ConnectionError())
    assert state.up
    now[0] += 0.6
    state.failed(ConnectionError())  # no success for over a second: an outage
    assert not state.up and state.last_error == "ConnectionError"  # described: the class name
    state.ok()
    assert state.up


def test_a_failure_before_any_send_keeps_the_last_attempts_status() -> None:
    retried = parsed(status="RETRYING", attempts=2, response_status=503, response_time_ms=40)
    upstream = lifecycle.failed(retried, 0, "Subscription not active: PAUSED")
    assert (upstream["response_status"], upstream["response_time_ms"]) == (503, 40)
    after = lifecycle.failed(retried, 0, "Timeout", attempts=3, status=None, elapsed_ms=30000)
    assert "response_status" not in after and after["response_time_ms"] == 30000


@pytest.mark.parametrize(
    ("error", "said"),
    [
        (
            "Error 111 connecting to redis:6379. Connect call failed ('10.0.0.5', 6379).",
            "connection refused",
        ),
        ("Error -2 connecting to redis:6379. Name or service not known.", "unknown host"),
        (
            "Error -3 connecting to redis:6379. Temporary failure in name resolution.",
            "unknown host",
        ),
        ("WRONGPASS invalid username-password pair or user is disabled.", "authentication failed"),
        (
            "Error 1 connecting to redis:6380. [SSL: CERTIFICATE_VERIFY_FAILED] verify failed",
            "TLS handshake failed",
        ),
        ("Timeout connecting to server", "timed out"),
    ],
)
def test_redis_errors_are_described_without_the_address(error: str, said: str) -> None:
    from redis.exceptions import ConnectionError as RedisConnectionError

    from cycles_events.connection import describe

    described = describe(RedisConnectionError(error))
    assert described.startswith(said) and "redis" not in described.split("(")[0]
    assert "6379" not in described and "10.0.0.5" not in described


def test_an_outcome_item_goes_in_the_shortest_form_that_holds_it() -> None:
    """'c' (chained to the item before), 'p' (a success by parts), 's' (a subscription change
    alone), else 'g'."""
    chained = Write("d1", "tok", "{}", subscription_id="s1", expected="^", new="=")
    assert outcome_args(chained) == ["tok", "{}", "c", "s1"]
    first = chained._replace(expected='{"a":1}', new='{"a":2}')
    assert outcome_args(first) == ["tok", "{}", "s", "s1", '{"a":1}', '{"a":2}']
    parts = ("{", "0", ",", "1", ",", "2", "}")
    by_parts = first._replace(parts=parts)
    assert outcome_args(by_parts) == ["tok", "{}", "p", "s1", *parts]
    task = Task("t1", "{}", 7, "system.webhook_delivery_failed")
    failed = by_parts._replace(tasks=(task,))  # parts go only alone: else the whole documents
    general = ["tok", "{}", "g", "", "", "", "s1", '{"a":1}', '{"a":2}']
    assert outcome_args(failed) == [*general, 1, "t1", "{}", 7]
    retry = Write("d1", "tok", "{}", retry_at_ms=5)
    assert outcome_args(retry) == ["tok", "{}", "g", 5, "", "", "", "", "", 0]
    assert outcome_args(Write("d1", "tok"))[2] == "g"  # no subscription: the general form
