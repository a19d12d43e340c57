"""Settings: names, defaults, validation messages that never echo secrets."""

from __future__ import annotations

import pytest

from cycles_events.config import ConfigError, Settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.upper().startswith(("REDIS_", "DISPATCH", "WEBHOOK_", "MANAGEMENT", "CYCLES")) or (
            "." in name
        ):
            monkeypatch.delenv(name, raising=False)


def test_contract_defaults() -> None:
    s = Settings.from_env()
    assert (s.redis_host, s.redis_port, s.pending_timeout_seconds) == ("localhost", 6379, 5.0)
    assert (s.retry_poll_interval_ms, s.retry_batch_size, s.http_timeout_seconds) == (5000, 100, 30)
    assert (s.http_connect_timeout_seconds, s.max_delivery_age_ms) == (5, 86_400_000)
    assert (s.event_ttl_days, s.delivery_ttl_days, s.management_port) == (90, 14, 9980)
    assert s.metrics_tenant_tag_enabled and not s.url_guard_allow_private_networks
    assert (s.processing_recovery_idle_ms, s.failed_max_len) == (180_000, 10_000)
    assert (s.concurrency, s.max_in_flight_per_subscription, s.shutdown_grace_seconds) == (
        64,
        8,
        25,
    )
    assert s.encryption_key is None


@pytest.mark.parametrize(
    "name",
    ["dispatch.http.timeout-seconds", "DISPATCH_HTTP_TIMEOUT_SECONDS"],
)
def test_dotted_and_upper_snake_names(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    monkeypatch.setenv(name, "12")
    assert Settings.from_env().http_timeout_seconds == 12


def test_retry_batch_size_aliases(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RETRY_BATCH_SIZE", "7")
    assert Settings.from_env().retry_batch_size == 7
    monkeypatch.delenv("RETRY_BATCH_SIZE")
    monkeypatch.setenv("dispatch.retry.batch-size", "9")
    assert Settings.from_env().retry_batch_size == 9


def test_tenant_tag_toggle(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("cycles.metrics.tenant-tag.enabled", "false")
    assert not Settings.from_env().metrics_tenant_tag_enabled


@pytest.mark.parametrize(
    ("name", "value", "fragment"),
    [
        ("MANAGEMENT_PORT", "70000", "invalid setting MANAGEMENT_PORT"),
        ("dispatch.http.timeout-seconds", "-1", "dispatch.http.timeout-seconds"),
        ("WEBHOOK_SECRET_ENCRYPTION_KEY", "c2hvcnQ=", "WEBHOOK_SECRET_ENCRYPTION_KEY: must decode"),
        ("WEBHOOK_SECRET_ENCRYPTION_KEY", "%%%notbase64", "not valid Base64"),
        ("DISPATCH_CONCURRENCY", "zero", "invalid setting DISPATCH_CONCURRENCY"),
    ],
)
def test_invalid_values_name_the_setting(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, fragment: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as info:
        Settings.from_env()
    message = str(info.value)
    assert fragment in message
    assert "\n" not in message
    if name == "WEBHOOK_SECRET_ENCRYPTION_KEY":
        assert value not in message


def test_password_never_in_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_PASSWORD", "hunter2-canary")
    s = Settings.from_env()
    assert "hunter2-canary" not in repr(s) and "hunter2-canary" not in str(s)
