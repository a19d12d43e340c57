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


def test_revision_2_redis_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    s = Settings.from_env()
    assert (s.redis_username, s.redis_tls_enabled, s.redis_tls_ca_file) == ("", False, "")
    assert (s.redis_connect_timeout_ms, s.redis_socket_timeout_ms) == (2000, 5000)
    assert s.redis_blocking_socket_timeout_ms == 10_000
    assert s.processing_recovery_interval_ms == 30_000
    assert s.webhook_secret_allow_plaintext is None and s.sentinels == []
    for name, value in {
        "REDIS_USERNAME": "cycles",
        "REDIS_TLS_ENABLED": "true",
        "REDIS_TLS_CA_FILE": "/etc/ssl/private-ca.pem",
        "REDIS_CONNECT_TIMEOUT_MS": "1500",
        "REDIS_SOCKET_TIMEOUT_MS": "4000",
        "REDIS_BLOCKING_SOCKET_TIMEOUT_MS": "9000",
        "REDIS_SENTINEL_MASTER": "mymaster",
        "REDIS_SENTINEL_NODES": "s1:26379, [::1]:26380,s3",
    }.items():
        monkeypatch.setenv(name, value)
    s = Settings.from_env()
    assert s.redis_username == "cycles" and s.tls_redis
    assert (s.redis_connect_timeout_ms, s.redis_socket_timeout_ms) == (1500, 4000)
    assert s.sentinels == [("s1", 26379), ("::1", 26380), ("s3", 26379)]


def test_java_only_names_are_accepted_and_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "DISPATCH_ORDERING_LEASE_MS",
        "DISPATCH_LOOP_DELAY_MS",
        "SCHEDULING_POOL_SIZE",
        "JAVA_OPTS",
        "EVIDENCE_SIGNING_KEY",
    ):
        monkeypatch.setenv(name, "whatever value -Xmx512m")
    monkeypatch.setenv("EVIDENCE_SERVER_ID", "evidence-1")
    assert Settings.from_env().evidence_server_id == "evidence-1"  # read only to warn


def test_strict_plaintext_mode_needs_a_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WEBHOOK_SECRET_ALLOW_PLAINTEXT", "false")
    with pytest.raises(ConfigError) as info:
        Settings.from_env()
    assert str(info.value).startswith("invalid setting WEBHOOK_SECRET_ENCRYPTION_KEY: is required")
    monkeypatch.setenv(
        "WEBHOOK_SECRET_ENCRYPTION_KEY", "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="
    )
    assert Settings.from_env().encryption_key == bytes(range(32))
    monkeypatch.setenv("WEBHOOK_SECRET_ALLOW_PLAINTEXT", "true")
    monkeypatch.delenv("WEBHOOK_SECRET_ENCRYPTION_KEY")
    assert Settings.from_env().encryption_key is None


@pytest.mark.parametrize(
    ("name", "value", "fragment"),
    [
        ("REDIS_URL", "garbage", "invalid setting REDIS_URL: must start with"),
        ("REDIS_URL", "redis://host:notaport/0", "invalid setting REDIS_URL: has a port"),
        ("MANAGEMENT_ADDRESS", "999.1.1.1", "invalid setting MANAGEMENT_ADDRESS"),
        ("MANAGEMENT_ADDRESS", "not a host", "invalid setting MANAGEMENT_ADDRESS"),
        ("REDIS_SENTINEL_NODES", "a:b:c:d", "invalid setting REDIS_SENTINEL_NODES"),
        ("REDIS_SENTINEL_MASTER", "mymaster", "invalid setting REDIS_SENTINEL_NODES"),
        # the name the operator used, not the dotted alias
        ("DISPATCH_HTTP_TIMEOUT_SECONDS", "-1", "invalid setting DISPATCH_HTTP_TIMEOUT_SECONDS:"),
        ("dispatch.http.timeout-seconds", "-1", "invalid setting dispatch.http.timeout-seconds:"),
    ],
)
def test_more_invalid_values_name_the_setting(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, fragment: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as info:
        Settings.from_env()
    assert fragment in str(info.value) and "\n" not in str(info.value)
    if name == "REDIS_URL":
        assert value not in str(info.value)


@pytest.mark.parametrize("address", ["0.0.0.0", "::", "127.0.0.1", "localhost", "mgmt.internal"])
def test_management_addresses_accepted(monkeypatch: pytest.MonkeyPatch, address: str) -> None:
    monkeypatch.setenv("MANAGEMENT_ADDRESS", address)
    assert Settings.from_env().management_address == address
