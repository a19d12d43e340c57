"""Delivery-time URL policy (contract section 5): pure judgement of URLs and addresses."""

from __future__ import annotations

import ipaddress
import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import SplitResult, urlsplit

from yarl import URL

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
    # Beyond the contract's list: never a public webhook receiver either.
    "240.0.0.0/4",
    "64:ff9b:1::/48",
    "fec0::/10",
)
_LOCAL_NAMES = ("localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_BROADCAST = ipaddress.IPv4Address("255.255.255.255")
_CIDR_TEXT = re.compile(r"[0-9A-Fa-f:.]+(?:/[0-9]{1,3})?")
_DNS_NAME = re.compile(r"[a-z0-9_-]+(?:\.[a-z0-9_-]+)*\.?")
_DEC = re.compile(r"[1-9][0-9]*|0")
_OCT = re.compile(r"0[0-7]+")
_HEX = re.compile(r"0[xX][0-9a-fA-F]+")
# Separators, controls, format characters, surrogates and private-use code points.
_BAD_CATEGORIES = frozenset({"Zs", "Zl", "Zp", "Cc", "Cf", "Cs", "Co"})


MAX_VERDICTS = 10_000


class UrlBlocked(OSError):
    """A URL or an address it resolves to is not allowed; the message never holds user-info."""


class SecurityConfigError(ValueError):
    """config:webhook-security cannot be read."""


def _networks(values: Iterable[str]) -> tuple[IPNetwork, ...]:
    return tuple(ipaddress.ip_network(v, strict=False) for v in values)


_BASELINE = _networks(BASELINE_BLOCKED)


@dataclass(frozen=True, slots=True)
class Target:
    """What a URL connects to; `url` is the parsed URL to hand to the HTTP client unchanged."""

    scheme: str
    host: str
    port: int
    url: URL


@dataclass(frozen=True)
class SecurityPolicy:
    """The effective URL policy: stored config plus the built-in baseline."""

    allow_http: bool = False
    allowed_url_patterns: tuple[str, ...] = ()
    blocked: tuple[IPNetwork, ...] = field(default_factory=lambda: _networks(DEFAULT_BLOCKED))
    enforce_baseline: bool = True
    _patterns: tuple[str, ...] = field(default=(), compare=False, repr=False)
    # verdicts of check_url by URL: a policy never changes, and judging a URL is costly
    _verdicts: dict[str, Target | str] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def build(
        cls,
        config: dict[str, Any] | None,
        *,
        allow_private_networks: bool,
    ) -> SecurityPolicy:
        """The policy for a stored config (None = absent, so its defaults apply)."""
        config = config or {}
        allow_http = config.get("allow_http")
        if allow_http is None:
            allow_http = False
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
            for r in ranges:  # a literal CIDR only: no hostname, path or zone id
                if not _CIDR_TEXT.fullmatch(r.strip()):
                    raise ValueError(f"{r.strip()[:64]!r} is not a literal CIDR")
            blocked = _networks(r.strip() for r in ranges)
        except ValueError as exc:
            raise SecurityConfigError(f"blocked_cidr_ranges has an invalid range: {exc}") from None
        return cls(
            allow_http=allow_http,
            allowed_url_patterns=tuple(patterns),
            blocked=blocked,
            enforce_baseline=not allow_private_networks,
            _patterns=tuple(p.strip() for p in patterns if p.strip()),
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
        views = _views(address)
        for ip in views:
            if ip.is_unspecified or ip.is_multicast or ip == _BROADCAST:
                return "unspecified, multicast or broadcast address"
        for net in self.blocked:
            for ip in views:
                if ip.version == net.version and ip in net:
                    return f"address in blocked range {net}"
        if self.enforce_baseline:
            for net in _BASELINE:
                for ip in views:
                    if ip.version == net.version and ip in net:
                        return f"address in private/reserved range {net}"
        return None

    def judge_addresses(self, host: str, addresses: Sequence[str]) -> None:
        """Raise UrlBlocked unless every address a host resolved to is allowed."""
        if not addresses:
            raise UrlBlocked(f"URL blocked: host {host} resolved to no address")
        for text in addresses:
            ip = parse_ip(text)
            if ip is None:
                raise UrlBlocked(f"URL blocked: host {host} resolved to an unparseable address")
            reason = self.blocked_reason(ip)
            if reason:
                raise UrlBlocked(f"URL blocked: {host} resolves to {ip} ({reason})")

    def check_url(self, url: str) -> Target:
        """Judge a URL before any connection: scheme, host, port, patterns and IP literals."""
        verdict = self._verdicts.get(url) if isinstance(url, str) else None
        if verdict is None:
            try:
                verdict = self._judge_url(url)
            except UrlBlocked as exc:
                verdict = str(exc)
            if isinstance(url, str):
                if len(self._verdicts) >= MAX_VERDICTS:
                    self._verdicts.clear()
                self._verdicts[url] = verdict
        if isinstance(verdict, str):
            raise UrlBlocked(verdict)
        return verdict

    def _judge_url(self, url: str) -> Target:
        raw = url.strip() if isinstance(url, str) else ""
        if not raw:
            raise UrlBlocked("URL blocked: no URL")
        if any(unicodedata.category(ch) in _BAD_CATEGORIES for ch in raw):
            raise UrlBlocked("URL blocked: URL contains whitespace or control characters")
        try:
            parsed = URL(raw)
            scheme = parsed.scheme.lower()
            host = (parsed.raw_host or "").lower()
            port = parsed.port
        except Exception:  # yarl raises ValueError, UnicodeError and friends on hostile input
            raise UrlBlocked("URL blocked: not a valid URL") from None
        if scheme not in ("http", "https"):
            raise UrlBlocked(f"URL blocked: scheme {scheme[:20] or '(none)'} is not allowed")
        if scheme == "http" and not self.allow_http:
            raise UrlBlocked("URL blocked: http is not allowed (allow_http is false)")
        if not host or not parsed.absolute:
            raise UrlBlocked("URL blocked: no host")
        if port is None or not 0 < port < 65536:
            raise UrlBlocked("URL blocked: invalid port")
        if self._patterns and not self._matches(raw):
            raise UrlBlocked("URL blocked: not matched by allowed_url_patterns")
        bare = host.rstrip(".")
        if "%" in host:
            raise UrlBlocked("URL blocked: host has a zone identifier or an escape")
        ip = parse_ip(host)
        if ip is None:
            if ":" in host or not _DNS_NAME.fullmatch(host) or _all_numeric(bare):
                raise UrlBlocked("URL blocked: not a valid host name")
            if self.enforce_baseline and (bare in _LOCAL_NAMES or bare.endswith(".localhost")):
                raise UrlBlocked(f"URL blocked: {bare} is a local name")
        else:
            reason = self.blocked_reason(ip)
            if reason:
                raise UrlBlocked(f"URL blocked: {canonical(ip)} ({reason})")
            if ip.version == 4 and host != str(ip):
                raise UrlBlocked(f"URL blocked: {ip} is spelled in a non-standard form")
        return Target(scheme=scheme, host=bare, port=port, url=parsed)

    def _matches(self, raw: str) -> bool:
        """The whole URL matches a pattern; with user-info, the URL without it must match too."""
        candidates = [raw]
        bare = _without_userinfo(raw)
        if bare != raw:
            candidates.append(bare)
        return all(any(glob_match(p, c) for p in self._patterns) for c in candidates)


def _all_numeric(host: str) -> bool:
    return host.replace(".", "").isdigit()


def _without_userinfo(raw: str) -> str:
    """The URL text with any `user:password@` removed from its authority."""
    start = raw.find("//")
    if start < 0:
        return raw
    start += 2
    end = len(raw)
    for sep in "/?#\\":
        i = raw.find(sep, start)
        if 0 <= i < end:
            end = i
    authority = raw[start:end]
    if "@" not in authority:
        return raw
    return raw[:start] + authority.rpartition("@")[2] + raw[end:]


def glob_match(pattern: str, text: str) -> bool:
    """`text` matches `pattern` whole, `*` standing for any run of characters.

    Two pointers and one backtrack point: O(len(pattern) * len(text)) at worst, where a regular
    expression built from a pattern with many stars can take exponential time.
    """
    p = t = 0
    star, mark = -1, 0
    while t < len(text):
        if p < len(pattern) and pattern[p] == "*":
            star, mark = p, t
            p += 1
        elif p < len(pattern) and pattern[p] == text[t]:
            p += 1
            t += 1
        elif star >= 0:
            mark += 1
            p, t = star + 1, mark
        else:
            return False
    while p < len(pattern) and pattern[p] == "*":
        p += 1
    return p == len(pattern)


def _views(ip: IPAddress) -> tuple[IPAddress, ...]:
    """An address and every IPv4 address embedded in it that a packet could end up at."""
    if isinstance(ip, ipaddress.IPv4Address):
        return (ip,)
    out: list[IPAddress] = [ip]
    packed = ip.packed
    if ip.ipv4_mapped is not None:
        out.append(ip.ipv4_mapped)
    elif packed[:12] == bytes(12) and int(ip) > 1:  # IPv4-compatible (deprecated)
        out.append(ipaddress.IPv4Address(packed[12:]))
    if ip in _NAT64:
        out.append(ipaddress.IPv4Address(packed[12:]))
    if ip.sixtofour is not None:
        out.append(ip.sixtofour)
    if ip.teredo is not None:
        out.extend(ip.teredo)
    return tuple(out)


def canonical(ip: IPAddress) -> IPAddress:
    """The address as judged: IPv4-mapped, -compatible, NAT64 and 6to4 forms as their IPv4."""
    views = _views(ip)
    return views[1] if len(views) > 1 else ip


def parse_ip(host: str) -> IPAddress | None:
    """An address in any spelling a resolver would accept (inet_aton forms, zones, dots)."""
    text = host.strip().strip("[]").rstrip(".")
    if "%" in text:
        text = text.split("%", 1)[0]
    if not text or not text.isascii():
        return None
    if ":" in text:
        try:
            return ipaddress.IPv6Address(text)
        except ValueError:
            return None
    return _inet_aton(text)


def _inet_aton(text: str) -> ipaddress.IPv4Address | None:
    """glibc inet_aton: 1 to 4 parts, each decimal, octal (0...) or hex (0x...)."""
    parts = text.split(".")
    if not 1 <= len(parts) <= 4:
        return None
    values: list[int] = []
    for part in parts:
        if _HEX.fullmatch(part):
            values.append(int(part[2:], 16))
        elif _OCT.fullmatch(part):
            values.append(int(part, 8))
        elif _DEC.fullmatch(part):
            values.append(int(part, 10))
        else:
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
    """A URL safe to log: no user-info, no query string, no fragment."""
    try:
        parts = urlsplit(url.strip())
        host = parts.hostname or ""
        netloc = f"[{host}]" if ":" in host else host
        if parts.port:
            netloc += f":{parts.port}"
    except ValueError:
        return "(invalid URL)"
    return SplitResult(parts.scheme, netloc, parts.path, "", "").geturl()
