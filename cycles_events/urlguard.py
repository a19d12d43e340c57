"""Delivery-time URL policy (contract section 5): pure judgement of URLs and addresses."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import SplitResult, urlsplit

from cycles_events.models import loads_object

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

DEFAULT_BLOCKED = (
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "::1/128",
    "fc00::/7",
)
BASELINE_BLOCKED = (
    "127.0.0.0/8",
    "::1/128",
    "0.0.0.0/8",
    "::/128",
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "169.254.0.0/16",
    "fe80::/10",
    "fc00::/7",
    "100.64.0.0/10",
)
_LOCAL_NAMES = ("localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback")


class UrlBlocked(OSError):
    """A URL or an address it resolves to is not allowed; the message never holds user-info."""


class SecurityConfigError(ValueError):
    """config:webhook-security cannot be read."""


def _networks(values: Iterable[str]) -> tuple[IPNetwork, ...]:
    return tuple(ipaddress.ip_network(v, strict=False) for v in values)


_BASELINE = _networks(BASELINE_BLOCKED)


@dataclass(frozen=True)
class SecurityPolicy:
    """The effective URL policy: stored config plus the built-in baseline."""

    allow_http: bool = False
    allowed_url_patterns: tuple[str, ...] = ()
    blocked: tuple[IPNetwork, ...] = field(default_factory=lambda: _networks(DEFAULT_BLOCKED))
    enforce_baseline: bool = True
    _patterns: tuple[re.Pattern[str], ...] = field(default=(), compare=False, repr=False)

    @classmethod
    def build(
        cls,
        config: dict[str, Any] | None,
        *,
        allow_private_networks: bool,
    ) -> SecurityPolicy:
        """The policy for a stored config (None = absent, so its defaults apply)."""
        config = config or {}
        allow_http = config.get("allow_http", False)
        if not isinstance(allow_http, bool):
            raise SecurityConfigError("allow_http is not a boolean")
        patterns = config.get("allowed_url_patterns") or []
        if not isinstance(patterns, list) or not all(isinstance(p, str) for p in patterns):
            raise SecurityConfigError("allowed_url_patterns is not a list of strings")
        ranges = config.get("blocked_cidr_ranges")
        if ranges is None:
            ranges = list(DEFAULT_BLOCKED)
        if not isinstance(ranges, list) or not all(isinstance(r, str) for r in ranges):
            raise SecurityConfigError("blocked_cidr_ranges is not a list of strings")
        try:
            blocked = _networks(r.strip() for r in ranges)
        except ValueError as exc:
            raise SecurityConfigError(f"blocked_cidr_ranges has an invalid range: {exc}") from None
        return cls(
            allow_http=allow_http,
            allowed_url_patterns=tuple(patterns),
            blocked=blocked,
            enforce_baseline=not allow_private_networks,
            _patterns=tuple(_glob(p) for p in patterns if p.strip()),
        )

    @classmethod
    def from_stored(cls, raw: bytes | None, *, allow_private_networks: bool) -> SecurityPolicy:
        """Parse the stored config:webhook-security value."""
        config = None
        if raw is not None:
            try:
                config = loads_object(raw)
            except ValueError as exc:
                raise SecurityConfigError(str(exc)) from None
        return cls.build(config, allow_private_networks=allow_private_networks)

    def blocked_reason(self, address: IPAddress) -> str | None:
        """Why an address may not be connected to, or None when it may."""
        ip = canonical(address)
        for net in self.blocked:
            if ip.version == net.version and ip in net:
                return f"address in blocked range {net}"
        if self.enforce_baseline:
            for net in _BASELINE:
                if ip.version == net.version and ip in net:
                    return f"address in private/reserved range {net}"
            if ip.is_multicast or ip.is_unspecified or (ip.version == 4 and ip == _BROADCAST):
                return "multicast, broadcast or unspecified address"
        return None

    def judge_addresses(self, host: str, addresses: Sequence[str]) -> None:
        """Raise UrlBlocked unless every address a host resolved to is allowed."""
        if not addresses:
            raise UrlBlocked(f"host {host} resolved to no address")
        for text in addresses:
            ip = parse_ip(text)
            if ip is None:
                raise UrlBlocked(f"host {host} resolved to an unparseable address")
            reason = self.blocked_reason(ip)
            if reason:
                raise UrlBlocked(f"URL blocked: {host} resolves to {ip} ({reason})")

    def check_url(self, url: str) -> Target:
        """Judge a URL before any connection: scheme, host, patterns and IP literals."""
        try:
            parts = urlsplit(url.strip())
            port = parts.port
        except ValueError:
            raise UrlBlocked("URL blocked: not a valid URL") from None
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https"):
            raise UrlBlocked(f"URL blocked: scheme {scheme or '(none)'} is not allowed")
        if scheme == "http" and not self.allow_http:
            raise UrlBlocked("URL blocked: http is not allowed (allow_http is false)")
        host = (parts.hostname or "").strip()
        if not host:
            raise UrlBlocked("URL blocked: no host")
        if self._patterns and not any(p.fullmatch(url.strip()) for p in self._patterns):
            raise UrlBlocked("URL blocked: not matched by allowed_url_patterns")
        bare = host.rstrip(".").lower()
        if self.enforce_baseline and (
            bare in _LOCAL_NAMES or bare.endswith(".localhost") or bare == ""
        ):
            raise UrlBlocked(f"URL blocked: {bare or host} is a local name")
        ip = parse_ip(host)
        if ip is not None:
            reason = self.blocked_reason(ip)
            if reason:
                raise UrlBlocked(f"URL blocked: {canonical(ip)} ({reason})")
        return Target(scheme=scheme, host=bare, port=port or (443 if scheme == "https" else 80))


_BROADCAST = ipaddress.IPv4Address("255.255.255.255")


@dataclass(frozen=True, slots=True)
class Target:
    """What a URL connects to."""

    scheme: str
    host: str
    port: int


def _glob(pattern: str) -> re.Pattern[str]:
    return re.compile(".*".join(re.escape(part) for part in pattern.strip().split("*")), re.S)


def canonical(ip: IPAddress) -> IPAddress:
    """IPv4-mapped and IPv4-compatible IPv6 addresses are judged as the IPv4 they carry."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return ip.ipv4_mapped
        packed = ip.packed
        if packed[:12] == bytes(12) and int(ip) > 1:
            return ipaddress.IPv4Address(packed[12:])
        if ip.sixtofour is not None:
            return ip.sixtofour
    return ip


def parse_ip(host: str) -> IPAddress | None:
    """An address in any spelling a resolver would accept (inet_aton forms, zones, dots)."""
    text = host.strip().strip("[]").rstrip(".")
    if "%" in text:
        text = text.split("%", 1)[0]
    if not text:
        return None
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        pass
    return _inet_aton(text)


def _inet_aton(text: str) -> ipaddress.IPv4Address | None:
    parts = text.split(".")
    if not 1 <= len(parts) <= 4:
        return None
    values: list[int] = []
    for part in parts:
        try:
            if part.lower().startswith("0x"):
                values.append(int(part[2:] or "0", 16))
            elif len(part) > 1 and part.startswith("0"):
                values.append(int(part, 8))
            else:
                values.append(int(part, 10))
        except ValueError:
            return None
    if any(v < 0 for v in values):
        return None
    *head, last = values
    if any(v > 255 for v in head) or last >= 256 ** (4 - len(head)):
        return None
    number = 0
    for v in head:
        number = number * 256 + v
    number = number * 256 ** (4 - len(head)) + last
    return ipaddress.IPv4Address(number)


def redact_url(url: str) -> str:
    """A URL safe to log: no user-info, no query string."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        netloc = f"[{host}]" if ":" in host else host
        if parts.port:
            netloc += f":{parts.port}"
    except ValueError:
        return "(invalid URL)"
    return SplitResult(parts.scheme, netloc, parts.path, "", "").geturl()
