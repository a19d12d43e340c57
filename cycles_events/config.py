"""The one configuration object, read from the environment by `Settings.from_env`."""

from __future__ import annotations

import base64
import binascii
import ipaddress
import os
import re
from typing import Any
from urllib.parse import urlsplit

from pydantic import (
    AliasChoices,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from cycles_events import backoff

_HOSTNAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9-]{1,63})*")
_DOTTED_NUMBERS = re.compile(r"[0-9.]+")


def _names(*names: str) -> AliasChoices:
    """A setting's env name, dotted name and the dotted name's upper-snake form."""
    choices: list[str] = []
    for name in names:
        choices.append(name)
        if "." in name or "-" in name:
            choices.append(name.replace(".", "_").replace("-", "_").upper())
    return AliasChoices(*dict.fromkeys(choices))


class ConfigError(Exception):
    """A setting is invalid; the message names it and never carries its value."""


def decode_encryption_key(value: str) -> bytes:
    """Decode a Base64 AES-256 key, refusing anything but exactly 32 bytes."""
    try:
        key = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("is not valid Base64") from exc
    if len(key) != 32:
        raise ValueError(f"must decode to exactly 32 bytes (got {len(key)})")
    return key


class Settings(BaseSettings):
    """Every setting of the service with its contract default."""

    model_config = SettingsConfigDict(case_sensitive=False, extra="ignore", frozen=True)

    redis_host: str = Field("localhost", validation_alias=_names("REDIS_HOST"))
    redis_port: int = Field(6379, ge=1, le=65535, validation_alias=_names("REDIS_PORT"))
    redis_password: SecretStr = Field(SecretStr(""), validation_alias=_names("REDIS_PASSWORD"))
    redis_url: SecretStr = Field(SecretStr(""), validation_alias=_names("REDIS_URL"))
    redis_username: str = Field("", validation_alias=_names("REDIS_USERNAME"))
    redis_tls_enabled: bool = Field(False, validation_alias=_names("REDIS_TLS_ENABLED"))
    redis_tls_ca_file: str = Field("", validation_alias=_names("REDIS_TLS_CA_FILE"))
    redis_connect_timeout_ms: int = Field(
        2000, ge=1, le=600_000, validation_alias=_names("REDIS_CONNECT_TIMEOUT_MS")
    )
    redis_socket_timeout_ms: int = Field(
        5000, ge=1, le=600_000, validation_alias=_names("REDIS_SOCKET_TIMEOUT_MS")
    )
    redis_blocking_socket_timeout_ms: int = Field(
        10_000, ge=1, le=600_000, validation_alias=_names("REDIS_BLOCKING_SOCKET_TIMEOUT_MS")
    )
    redis_sentinel_master: str = Field("", validation_alias=_names("REDIS_SENTINEL_MASTER"))
    redis_sentinel_nodes: str = Field("", validation_alias=_names("REDIS_SENTINEL_NODES"))
    redis_sentinel_password: SecretStr = Field(
        SecretStr(""), validation_alias=_names("REDIS_SENTINEL_PASSWORD")
    )
    webhook_secret_allow_plaintext: bool | None = Field(
        None, validation_alias=_names("WEBHOOK_SECRET_ALLOW_PLAINTEXT")
    )
    webhook_secret_encryption_key: SecretStr = Field(
        SecretStr(""), validation_alias=_names("WEBHOOK_SECRET_ENCRYPTION_KEY")
    )
    pending_timeout_seconds: float = Field(
        5.0, gt=0, le=300, validation_alias=_names("dispatch.pending.timeout-seconds")
    )
    retry_poll_interval_ms: int = Field(
        5000, ge=10, validation_alias=_names("dispatch.retry.poll-interval-ms")
    )
    retry_batch_size: int = Field(
        100,
        ge=1,
        le=10000,
        validation_alias=_names("dispatch.retry.batch-size", "RETRY_BATCH_SIZE"),
    )
    http_timeout_seconds: float = Field(
        30.0, gt=0, le=600, validation_alias=_names("dispatch.http.timeout-seconds")
    )
    http_connect_timeout_seconds: float = Field(
        5.0, gt=0, le=600, validation_alias=_names("dispatch.http.connect-timeout-seconds")
    )
    max_delivery_age_ms: int = Field(
        86_400_000, gt=0, validation_alias=_names("MAX_DELIVERY_AGE_MS")
    )
    event_ttl_days: int = Field(90, ge=1, validation_alias=_names("EVENT_TTL_DAYS"))
    delivery_ttl_days: int = Field(14, ge=1, validation_alias=_names("DELIVERY_TTL_DAYS"))
    retention_cleanup_interval_ms: int = Field(
        3_600_000, ge=1000, validation_alias=_names("RETENTION_CLEANUP_INTERVAL_MS")
    )
    management_port: int = Field(9980, ge=1, le=65535, validation_alias=_names("MANAGEMENT_PORT"))
    management_address: str = Field("0.0.0.0", validation_alias=_names("MANAGEMENT_ADDRESS"))
    metrics_tenant_tag_enabled: bool = Field(
        True,
        validation_alias=_names(
            "cycles.metrics.tenant-tag.enabled", "CYCLES_METRICS_TENANT_TAG_ENABLED"
        ),
    )
    url_guard_allow_private_networks: bool = Field(
        False, validation_alias=_names("WEBHOOK_URL_GUARD_ALLOW_PRIVATE_NETWORKS")
    )
    processing_recovery_idle_ms: int = Field(
        180_000, ge=100, validation_alias=_names("DISPATCH_PROCESSING_RECOVERY_IDLE_MS")
    )
    processing_recovery_interval_ms: int = Field(
        30_000, ge=50, validation_alias=_names("DISPATCH_PROCESSING_RECOVERY_INTERVAL_MS")
    )
    failed_max_len: int = Field(10_000, ge=1, validation_alias=_names("DISPATCH_FAILED_MAX_LEN"))
    concurrency: int = Field(64, ge=1, le=10_000, validation_alias=_names("DISPATCH_CONCURRENCY"))
    max_in_flight_per_subscription: int = Field(
        8, ge=1, le=10_000, validation_alias=_names("DISPATCH_MAX_IN_FLIGHT_PER_SUBSCRIPTION")
    )
    shutdown_grace_seconds: float = Field(
        25.0, ge=0, le=3600, validation_alias=_names("SHUTDOWN_GRACE_SECONDS")
    )
    # Beyond the reference service, each off by default (contract section 9); a subscription's
    # metadata can turn each on (or off) for itself.
    retry_jitter: float = Field(0.0, ge=0, le=0.5, validation_alias=_names("DISPATCH_RETRY_JITTER"))
    retry_honor_retry_after: bool = Field(
        False, validation_alias=_names("DISPATCH_RETRY_HONOR_RETRY_AFTER")
    )
    retry_after_min_ms: int = Field(
        1000, ge=0, le=3_600_000, validation_alias=_names("DISPATCH_RETRY_AFTER_MIN_MS")
    )
    retry_after_max_ms: int = Field(
        3_600_000, ge=1000, le=86_400_000, validation_alias=_names("DISPATCH_RETRY_AFTER_MAX_MS")
    )
    retry_overload_floor_ms: int = Field(
        0, ge=0, le=3_600_000, validation_alias=_names("DISPATCH_RETRY_OVERLOAD_FLOOR_MS")
    )
    disable_on_410: bool = Field(False, validation_alias=_names("DISPATCH_DISABLE_ON_410"))
    standard_webhooks: bool = Field(
        False, validation_alias=_names("WEBHOOK_STANDARD_HEADERS_ENABLED")
    )
    first_attempt_share: float = Field(
        0.0, ge=0, le=0.9, validation_alias=_names("DISPATCH_FIRST_ATTEMPT_SHARE")
    )
    adaptive_concurrency: bool = Field(
        False, validation_alias=_names("DISPATCH_ADAPTIVE_CONCURRENCY_ENABLED")
    )
    log_level: str = Field("INFO", validation_alias=_names("LOG_LEVEL"))
    # Read only to warn: evidence signing is a Java feature this service does not do.
    evidence_server_id: str = Field("", validation_alias=_names("EVIDENCE_SERVER_ID"))

    @field_validator("webhook_secret_encryption_key")
    @classmethod
    def _check_key(cls, value: SecretStr) -> SecretStr:
        if value.get_secret_value().strip():
            decode_encryption_key(value.get_secret_value())
        return value

    @field_validator("redis_url")
    @classmethod
    def _check_url(cls, value: SecretStr) -> SecretStr:
        url = value.get_secret_value().strip()
        if url:
            parts = urlsplit(url)
            if parts.scheme not in ("redis", "rediss", "unix"):
                raise ValueError("must start with redis://, rediss:// or unix://")
            try:
                parts.port  # noqa: B018 - a port that is not a number raises here
            except ValueError:
                raise ValueError("has a port that is not a number") from None
            if parts.scheme != "unix" and not parts.hostname:
                raise ValueError("names no host")
        return value

    @field_validator("management_address")
    @classmethod
    def _check_address(cls, value: str) -> str:
        address = value.strip()
        try:
            ipaddress.ip_address(address)
        except ValueError:
            # a name, not something that only looks like an IPv4 address (999.1.1.1)
            if not _HOSTNAME.fullmatch(address) or _DOTTED_NUMBERS.fullmatch(address):
                raise ValueError("is not an IP address or a host name") from None
        return address

    @field_validator("redis_sentinel_nodes")
    @classmethod
    def _check_nodes(cls, value: str) -> str:
        sentinel_nodes(value)
        return value

    @model_validator(mode="after")
    def _check_plaintext(self) -> Settings:
        if self.webhook_secret_allow_plaintext is False and not self.encryption_key:
            raise ValueError(
                "WEBHOOK_SECRET_ENCRYPTION_KEY: is required when "
                "WEBHOOK_SECRET_ALLOW_PLAINTEXT=false"
            )
        if self.retry_after_min_ms > self.retry_after_max_ms:
            raise ValueError("DISPATCH_RETRY_AFTER_MIN_MS: is above DISPATCH_RETRY_AFTER_MAX_MS")
        if bool(self.redis_sentinel_master.strip()) != bool(self.redis_sentinel_nodes.strip()):
            raise ValueError("REDIS_SENTINEL_NODES: is needed with REDIS_SENTINEL_MASTER, and back")
        return self

    @field_validator("log_level")
    @classmethod
    def _check_level(cls, value: str) -> str:
        level = value.strip().upper()
        if level not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
            raise ValueError("must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL")
        return level

    @classmethod
    def from_env(cls, **overrides: Any) -> Settings:
        """Read settings from the environment, raising ConfigError with one clear line."""
        try:
            return cls(**overrides)
        except ValidationError as exc:
            given = {n.lower() for n in (*os.environ, *overrides)}
            raise ConfigError(describe_validation_error(exc, given)) from None

    @property
    def encryption_key(self) -> bytes | None:
        """The decoded AES key, or None when only plaintext secrets are in use."""
        raw = self.webhook_secret_encryption_key.get_secret_value().strip()
        return decode_encryption_key(raw) if raw else None

    @property
    def tls_redis(self) -> bool:
        """Whether the Redis connection uses TLS."""
        return self.redis_tls_enabled or self.redis_url.get_secret_value().startswith("rediss://")

    @property
    def backoff(self) -> backoff.Options:
        """The deployment's retry options (a subscription's metadata may override them)."""
        return backoff.Options(
            jitter=self.retry_jitter,
            honor_retry_after=self.retry_honor_retry_after,
            retry_after_min_ms=self.retry_after_min_ms,
            retry_after_max_ms=self.retry_after_max_ms,
            overload_floor_ms=self.retry_overload_floor_ms,
            disable_on_gone=self.disable_on_410,
        )

    @property
    def sentinels(self) -> list[tuple[str, int]]:
        """The Sentinel addresses, when Redis is reached through Sentinel."""
        return sentinel_nodes(self.redis_sentinel_nodes)


def sentinel_nodes(value: str) -> list[tuple[str, int]]:
    """Parse `host:port,host:port` (IPv6 as `[addr]:port`; the port defaults to 26379)."""
    nodes: list[tuple[str, int]] = []
    for part in value.split(","):
        part = part.strip()
        if not part:
            continue
        host, port = part, "26379"
        if part.startswith("["):
            host, _, rest = part[1:].partition("]")
            if rest:
                port = rest.removeprefix(":")
        elif part.count(":") == 1:
            host, port = part.split(":")
        if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
            raise ValueError(f"{part!r} is not host:port")
        nodes.append((host, int(port)))
    return nodes


def _field_of(name: str) -> str:
    """The field a setting's name (any of its aliases) belongs to."""
    for field, info in Settings.model_fields.items():
        alias = info.validation_alias
        if field == name or (
            isinstance(alias, AliasChoices)
            and any(isinstance(c, str) and c.lower() == name.lower() for c in alias.choices)
        ):
            return field
    return name


def _setting_name(field: str, given: set[str]) -> str:
    """The name the operator used for a setting (its first name when none was given)."""
    alias = Settings.model_fields[field].validation_alias
    if not isinstance(alias, AliasChoices):
        return field.upper()
    names = [c for c in alias.choices if isinstance(c, str)]
    for name in names:
        if name.lower() in given:
            return name
    return names[0] if names else field


def describe_validation_error(exc: ValidationError, given: set[str] | None = None) -> str:
    """Turn a pydantic error into 'invalid setting NAME: reason' without echoing the value."""
    given = {n.lower() for n in os.environ} if given is None else given
    parts = []
    for err in exc.errors(include_input=False, include_url=False):
        message = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        loc = err.get("loc")
        if not loc:  # a rule across settings: its message starts with the setting's name
            parts.append(f"invalid setting {message}")
            continue
        field = _field_of(str(loc[0]))
        name = _setting_name(field, given) if field in Settings.model_fields else str(loc[0])
        parts.append(f"invalid setting {name}: {message}")
    return "; ".join(parts)
