"""The ramp of a recovery drain (issue 14, item 5): its schedule, the progress line, the backlog
window and the argument rules."""

from __future__ import annotations

import io

import pytest

from cycles_events import cli, ops
from cycles_events.models import format_instant
from cycles_events.opsutil import Pace, Progress, format_rate

NOW = 1_795_335_330_140
DAY = 86_400_000


def test_a_ramp_rises_linearly_from_a_tenth_and_its_schedule_inverts_it() -> None:
    pace = Pace.ramped(100, 3)
    assert (pace.rate_at(0), pace.rate_at(1.5), pace.rate_at(3), pace.rate_at(60)) == (
        10,
        55,
        100,
        100,
    )
    assert pace.time_for(0) == 0
    assert pace.time_for(165) == pytest.approx(3)  # (10 + 100) / 2 * 3 written by the end
    assert pace.time_for(265) == pytest.approx(4)  # then 100/s
    for t in (0.5, 1.0, 2.0, 2.9):  # time_for is the inverse of the written count
        written = 10 * t + 15 * t * t
        assert pace.time_for(written) == pytest.approx(t)
    assert pace.time_for(75) > 2 * (pace.time_for(150) - pace.time_for(75))
    assert pace.describe() == "100/s, ramping from 10/s over 3s"
    assert pace.ramping(2.9) and not pace.ramping(3)


def test_flat_and_slow_rates_have_no_ramp() -> None:
    assert Pace(50).time_for(100) == 2 and Pace(50).describe() == "50/s"
    slow = Pace.ramped(0.5, 10)  # max(1/s, rate/10) is above the rate: it starts at the rate
    assert slow.rate_at(0) == 0.5 and slow.time_for(5) == 10 and not slow.ramping(0)
    assert Pace.ramped(5, 10).rate_at(0) == 1
    assert [format_rate(r) for r in (250, 12.4, 2.5, 1, 0.5)] == [
        "250/s",
        "12/s",
        "2.5/s",
        "1/s",
        "0.5/s",
    ]


def test_the_progress_line_shows_the_current_rate_and_an_eta_that_follows_the_ramp() -> None:
    bar = Progress(150, io.StringIO(), "replay", pace=Pace.ramped(100, 3))
    assert bar.render(20, 1.0, 100) == (
        "replay [####..........................] 20/150  13% 40/s ramping to 100/s eta 2s"
    )
    assert bar.render(100, 4.0).endswith("100/150  67% 100/s eta 1s")  # late: the rest still takes
    assert bar.render(150, 3.0).endswith("150/150 100% 50/s in 3s")
    flat = Progress(400, io.StringIO(), "replay")  # without a ramp: as before
    assert (
        flat.render(120, 2.0) == "replay [#########.....................] 120/400  30% 60/s eta 4s"
    )


def test_the_backlog_starts_when_the_subscription_stopped_being_active() -> None:
    def since(**record: object) -> tuple[int, str]:
        return ops.backlog_since(record, NOW, DAY)

    paused = format_instant(NOW - 600_000)
    failed = format_instant(NOW - 900_000)
    assert since(status="PAUSED", updated_at=paused) == (NOW - 600_000, "updated_at")
    # auto-disabled, then its URL fixed: the failure that disabled it is the earlier bound
    assert since(status="DISABLED", updated_at=paused, last_failure_at=failed) == (
        NOW - 900_000,
        "last_failure_at",
    )
    old = format_instant(NOW - 3 * DAY)
    assert since(status="DISABLED", updated_at=old) == (NOW - DAY, "MAX_DELIVERY_AGE_MS")
    assert since(status="PAUSED") == (NOW - DAY, "MAX_DELIVERY_AGE_MS")
    # enabled by someone else already: updated_at is when it came back, not when it left
    assert since(status="ACTIVE", updated_at=paused) == (NOW - DAY, "MAX_DELIVERY_AGE_MS")
    wanted = ops.backlog({"status": "PAUSED"}, now_ms=NOW, max_age_ms=DAY, since_ms=NOW - 5)
    assert (wanted.ended_since_ms, wanted.since_source) == (NOW - 5, "--since")
    flt = wanted.filter()
    assert flt.since_ms == NOW - 5 - DAY and flt.reasons == {"subscription_inactive"}
    inactive = {"status": "FAILED", "error_message": "Subscription not active: PAUSED"}
    assert flt.matches({**inactive, "completed_at": format_instant(NOW)})
    assert not flt.matches({**inactive, "completed_at": format_instant(NOW - 10)})
    assert not flt.matches({"status": "FAILED", "error_message": "HTTP 503"})
    wide = ops.backlog({}, now_ms=NOW, max_age_ms=DAY, extra_reasons=["http_5xx"])
    assert wide.filter().matches({"status": "FAILED", "error_message": "HTTP 503"})


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["replay", "--subscription", "whsub_1", "--ramp", "5m"], "--ramp needs --rate"),
        (["replay", "--subscription", "whsub_1", "--rate", "5/s", "--ramp", "0s"], "longer than"),
        (["replay", "--subscription", "whsub_1", "--rate", "5/s", "--ramp", "x"], "not a duration"),
        (["subscriptions", "enable", "whsub_1", "--rate", "5/s"], "only apply with --replay"),
        (["subscriptions", "enable", "whsub_1", "--since", "1h"], "only apply with --replay"),
        (["subscriptions", "enable", "whsub_1", "--replay", "--ramp", "1m"], "needs --rate"),
        (["subscriptions", "enable", "whsub_1", "--replay", "--reason", "x"], "invalid choice"),
    ],
)
def test_ramp_arguments(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
