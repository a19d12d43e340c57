"""Pure helpers of the operator commands: durations, times, rates, reasons, masking, progress."""

from __future__ import annotations

import io

import pytest

from cycles_events import ops
from cycles_events.models import parse_instant_ms
from cycles_events.opsutil import (
    REASONS,
    Progress,
    delivery_reason,
    ellipsize,
    failure_reason,
    format_age,
    mask_headers,
    parse_duration_ms,
    parse_rate,
    parse_time_ms,
    percentile,
    table,
)

NOW = 1_795_335_330_140  # 2026-11-22T08:15:30.140Z


@pytest.mark.parametrize(
    ("text", "ms"),
    [
        ("500ms", 500),
        ("90s", 90_000),
        ("30m", 1_800_000),
        ("2h", 7_200_000),
        ("1h30m", 5_400_000),
        ("7d", 604_800_000),
        ("1w", 604_800_000),
        ("1.5h", 5_400_000),
        ("PT2H", 7_200_000),
        ("P1DT30M", 88_200_000),
        ("pt90s", 90_000),
    ],
)
def test_durations(text: str, ms: int) -> None:
    assert parse_duration_ms(text) == ms


@pytest.mark.parametrize("text", ["", "2", "h", "2x", "2h 30m", "-2h", "P", "PT", "P1DT", "2hh"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration_ms(text)


def test_times() -> None:
    assert parse_time_ms("now", NOW) == NOW
    assert parse_time_ms("2h", NOW) == NOW - 7_200_000
    assert parse_time_ms("2026-11-22T08:15:30.140Z", NOW) == NOW
    assert parse_time_ms("2026-11-22T09:15:30.140+01:00", NOW) == NOW
    assert parse_time_ms("2026-11-22", NOW) == parse_instant_ms("2026-11-22T00:00:00Z")
    assert parse_time_ms(str(NOW), NOW) == NOW
    for bad in ("yesterday", "2026-13-45T99:00:00Z", "12", ""):
        with pytest.raises(ValueError):
            parse_time_ms(bad, NOW)


def test_rates() -> None:
    assert parse_rate("50/s") == 50
    assert parse_rate("50") == 50
    assert parse_rate("600/m") == 10
    assert parse_rate("600/min") == 10
    assert parse_rate("3600/h") == 1
    assert parse_rate("0.5/s") == 0.5
    for bad in ("0/s", "fast", "-1/s", "5/d", ""):
        with pytest.raises(ValueError):
            parse_rate(bad)


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        ("HTTP 404", "http_4xx"),
        ("HTTP 429", "http_4xx"),
        ("HTTP 503", "http_5xx"),
        ("URL blocked: 10.0.0.1 (private)", "ssrf_blocked"),
        ("Delivery expired: 30h old (max 24h)", "stale"),
        ("Event not found: evt_1", "event_not_found"),
        ("Event record is not valid JSON: evt_1", "invalid_record"),
        ("Subscription record is not valid JSON", "invalid_record"),
        ("Subscription not found", "subscription_not_found"),
        ("Subscription not active: DISABLED", "subscription_inactive"),
        ("Signing secret unusable: wrong key", "secret_error"),
        ("Timeout: no response within 30s", "transport_error"),
        ("Connection failed: refused", "transport_error"),
        ("HTTP client error: ClientPayloadError", "transport_error"),
        ("Unexpected HTTP 302", "transport_error"),
        (None, "none"),
        ("", "none"),
        (42, "none"),
    ],
)
def test_failure_reasons(message: object, reason: str) -> None:
    assert failure_reason(message) == reason
    assert reason in REASONS


def test_headers_are_masked() -> None:
    assert mask_headers({"X-Team": "ops", "Authorization": "Bearer s3cret"}) == {
        "X-Team": "***",
        "Authorization": "***",
    }
    assert mask_headers(None) == {}
    assert mask_headers(["x"]) == {}


def test_small_formatters() -> None:
    assert [format_age(s) for s in (None, 5, 184, 7500, 3 * 86400 + 4 * 3600)] == [
        "-",
        "5s",
        "3m04s",
        "2h05m",
        "3d04h",
    ]
    assert percentile([], 50) is None
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50
    assert percentile(values, 99) == 99
    assert percentile([7.0], 99) == 7
    assert table([("a", None)], ("X", "LONGER")).splitlines() == ["X  LONGER", "a  -"]


class FakeTty(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


def test_progress_draws_only_on_a_terminal() -> None:
    tty = FakeTty(True)
    bar = Progress(10, tty, "replay")
    bar.update(5, force=True)
    bar.update(10)
    bar.close()
    text = tty.getvalue()
    assert text.startswith("\rreplay [")
    assert "10/10 100%" in text and text.endswith("\n")
    plain = FakeTty(False)
    bar = Progress(10, plain, "replay")
    bar.update(5, force=True)
    bar.close()
    assert plain.getvalue() == ""
    assert (
        Progress(4, plain).render(1, 1.0) == "[#######.......................] 1/4  25% 1/s eta 3s"
    )


def test_progress_has_rate_and_eta_and_fits_the_terminal() -> None:
    bar = Progress(400, FakeTty(True), "replay")
    wide = bar.render(120, 2.0, 120)
    assert wide == "replay [#########.....................] 120/400  30% 60/s eta 4s"
    assert bar.render(400, 8.0) == "replay [##############################] 400/400 100% 50/s in 8s"
    assert bar.render(0, 0.0).endswith("0/400   0% 0/s eta -")
    for columns in (60, 45, 30, 10):
        line = bar.render(120, 2.0, columns)
        assert len(line) < columns or "[" not in line  # the bar goes first, the numbers stay
        assert line.endswith("120/400  30% 60/s eta 4s")


def test_tables_fit_a_width_by_cutting_flexible_columns() -> None:
    rows = [("del_0000000000000001", "HTTP 503 " + "x" * 80, "budget.exhausted")]
    header = ("DELIVERY", "ERROR", "EVENT_TYPE")
    whole = table(rows, header)
    assert "x" * 80 in whole  # no width (not a terminal): nothing is cut
    fitted = table(rows, header, width=60, flex=("ERROR",)).splitlines()
    assert max(len(line) for line in fitted) <= 60
    assert fitted[1].startswith("del_0000000000000001  HTTP 503 x") and "\u2026" in fitted[1]
    assert fitted[1].endswith("budget.exhausted")
    assert table(rows, header, width=200, flex=("ERROR",)) == whole
    narrow = table(rows, header, width=10, flex=("ERROR",)).splitlines()
    assert narrow[1].startswith("del_0000000000000001  HTTP 50\u2026")  # ids are never cut


def test_ellipsize_and_delivery_reason() -> None:
    assert ellipsize("short", 10) == "short"
    assert ellipsize("a\nmulti   line error", 40) == "a multi line error"
    assert ellipsize("x" * 61, 60) == "x" * 59 + "\u2026"
    assert len(ellipsize("x" * 61, 60)) == 60
    assert delivery_reason({"status": "FAILED", "error_message": "HTTP 503"}) == "http_5xx"
    assert delivery_reason({"status": "RETRYING", "error_message": "Timeout"}) == "transport_error"
    assert delivery_reason({"status": "SUCCESS", "error_message": "HTTP 503"}) is None
    assert delivery_reason({"status": "PENDING"}) is None


def test_replay_record_has_the_producer_shape() -> None:
    src = ops.Source("del_0000000000000001", "whsub_1", "evt_1", "budget.exhausted", "ab" * 16, 0)
    doc = ops.replay_record(src, "del_00000000000000ff", NOW)
    assert list(doc) == [
        "delivery_id",
        "subscription_id",
        "event_id",
        "event_type",
        "status",
        "attempted_at",
        "attempts",
        "trace_id",
        "replay_of",
    ]
    assert doc["status"] == "PENDING" and doc["attempts"] == 0
    assert doc["attempted_at"] == "2026-11-22T08:15:30.140Z"
    assert doc["replay_of"] == "del_0000000000000001"
    no_trace = ops.replay_record(
        ops.Source("del_2", "whsub_1", "evt_1", "budget.exhausted", None, 0), "del_3", NOW
    )
    assert "trace_id" not in no_trace
    assert ops.new_delivery_id() != ops.new_delivery_id()
    assert len(ops.new_delivery_id()) == 20


def test_resumed_event_shape() -> None:
    sub = {"subscription_id": "whsub_1", "tenant_id": "acme", "status": "ACTIVE"}
    event = ops.resumed_event(sub, "whsub_1", "DISABLED", NOW)
    assert event["event_type"] == "webhook.resumed" and event["category"] == "webhook"
    assert event["actor"] == {"type": "admin"} and event["source"] == "cycles-events"
    assert event["tenant_id"] == "acme" and event["timestamp"] == "2026-11-22T08:15:30.140Z"
    assert event["data"] == {
        "subscription_id": "whsub_1",
        "tenant_id": "acme",
        "previous_status": "DISABLED",
        "new_status": "ACTIVE",
        "changed_fields": ["status"],
    }
    assert event["event_id"].startswith("evt_") and len(event["event_id"]) == 20


def test_replay_filter() -> None:
    flt = ops.ReplayFilter(
        statuses=frozenset({"FAILED"}),
        event_types=("budget.*",),
        reasons=frozenset({"http_5xx"}),
    )
    good = {"status": "FAILED", "event_type": "budget.exhausted", "error_message": "HTTP 502"}
    assert flt.matches(good)
    assert not flt.matches({**good, "status": "SUCCESS"})
    assert not flt.matches({**good, "event_type": "tenant.updated"})
    assert not flt.matches({**good, "error_message": "HTTP 404"})
    assert ops.ReplayFilter(statuses=frozenset()).matches({"status": "SUCCESS"})
