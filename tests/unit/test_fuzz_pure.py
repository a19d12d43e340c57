"""Property-based tests of the pure parts: address parsing, URL judgement, secrets, records."""

from __future__ import annotations

import base64
import ipaddress
import json
import re
import socket
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cycles_events.crypto import SecretError, decrypt_secret, encrypt_secret
from cycles_events.models import Delivery, RecordError, dumps, loads_object
from cycles_events.urlguard import (
    SecurityConfigError,
    SecurityPolicy,
    Target,
    UrlBlocked,
    glob_match,
    parse_ip,
)

FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

GUARDED = SecurityPolicy.build(
    {"allow_http": True, "blocked_cidr_ranges": ["192.0.2.0/24"]}, allow_private_networks=False
)
LIFTED = SecurityPolicy.build(
    {"allow_http": True, "blocked_cidr_ranges": ["127.0.0.0/8", "::1/128"]},
    allow_private_networks=True,
)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


def inet_aton(text: str) -> ipaddress.IPv4Address | None:
    try:
        return ipaddress.IPv4Address(socket.inet_aton(text))
    except OSError:
        return None


@st.composite
def numeric_hosts(draw: st.DrawFn) -> str:
    """IPv4 spellings as inet_aton reads them: 1-4 parts, decimal, octal or hex, some invalid."""
    parts = draw(st.lists(st.integers(0, 2**32 + 5), min_size=1, max_size=5))
    out = []
    for value in parts:
        style = draw(st.sampled_from(["dec", "oct", "hex", "HEX"]))
        zeros = "0" * draw(st.integers(0, 3))
        if style == "dec":
            out.append(str(value))
        elif style == "oct":
            out.append("0" + zeros + format(value, "o"))
        else:
            out.append(("0x" if style == "hex" else "0X") + zeros + format(value, "x"))
    return ".".join(out)


@FAST
@given(st.text(alphabet="0123456789abcdefxX.", max_size=24) | numeric_hosts())
def test_parse_ip_agrees_with_inet_aton(text: str) -> None:
    bare = text.rstrip(".")
    assert parse_ip(text) == (inet_aton(bare) if bare else None)


@FAST
@given(st.ip_addresses())
def test_parse_ip_reads_every_standard_address(address: ipaddress._BaseAddress) -> None:
    assert parse_ip(str(address)) == address
    if address.version == 6:
        assert parse_ip(f"[{address}]") == address


urls = st.one_of(
    st.text(max_size=60),
    st.builds(
        lambda scheme, userinfo, host, port, path: f"{scheme}{userinfo}{host}{port}{path}",
        st.sampled_from(["http://", "https://", "HTTP://", "http:/", "http:\\\\", "ftp://", ""]),
        st.sampled_from(["", "user:pw@", "example.com@", "a@b@", "@", ":@"]),
        st.one_of(
            st.ip_addresses().map(lambda a: f"[{a}]" if a.version == 6 else str(a)),
            numeric_hosts(),
            st.text(max_size=20),
            st.sampled_from(["localhost", "LOCALHOST.", "foo.localhost", "example.com"]),
        ),
        st.sampled_from(["", ":80", ":0", ":65536", ":-1", ":x", ":"]),
        st.text(max_size=10),
    ),
)


def _assert_judged(policy: SecurityPolicy, target: Target) -> None:
    ip = parse_ip(target.url.raw_host or "")
    if ip is not None:
        assert policy.blocked_reason(ip) is None
    assert target.scheme in ("http", "https") and 0 < target.port < 65536


@FAST
@given(urls)
def test_check_url_only_ever_raises_url_blocked(url: str) -> None:
    for policy in (GUARDED, LIFTED):
        try:
            target = policy.check_url(url)
        except UrlBlocked as exc:
            assert str(exc).startswith("URL blocked")
            assert "pw@" not in str(exc)
        else:
            _assert_judged(policy, target)


@FAST
@given(st.ip_addresses(), st.sampled_from(["", ":8080"]))
def test_ip_literals_are_judged_like_resolved_addresses(
    address: ipaddress._BaseAddress, port: str
) -> None:
    host = f"[{address}]" if address.version == 6 else str(address)
    for policy in (GUARDED, LIFTED):
        try:
            policy.check_url(f"http://{host}{port}/hook")
            literal_ok = True
        except UrlBlocked:
            literal_ok = False
        try:
            policy.judge_addresses("h", [str(address)])
            resolved_ok = True
        except UrlBlocked:
            resolved_ok = False
        assert literal_ok == resolved_ok


KEY = bytes(range(32))


@FAST
@given(
    st.one_of(
        st.text(),
        st.text().map(lambda t: "enc:" + t),
        st.binary(max_size=80).map(lambda b: "enc:" + base64.b64encode(b).decode()),
        st.text(max_size=30).map(lambda t: encrypt_secret(t, bytes(32))),
    ),
    st.sampled_from([KEY, bytes(32), None]),
)
def test_decrypt_secret_only_ever_raises_secret_error(stored: str, key: bytes | None) -> None:
    try:
        plain = decrypt_secret(stored, key)
    except SecretError as exc:
        assert stored.startswith("enc:")
        assert "enc:" not in str(exc)
    else:
        assert isinstance(plain, str)


@FAST
@given(st.text(max_size=40))
def test_encrypted_secrets_round_trip(secret: str) -> None:
    assert decrypt_secret(encrypt_secret(secret, KEY), KEY) == secret


def _record(value: Any) -> bytes:
    return json.dumps(value).encode()


records = st.one_of(
    st.binary(max_size=200),
    json_values.map(_record),
    st.fixed_dictionaries(
        {},
        optional={
            "delivery_id": json_values,
            "subscription_id": json_values | st.just("whsub_1"),
            "event_id": json_values | st.just("evt_1"),
            "status": json_values | st.sampled_from(["PENDING", "RETRYING", "pending"]),
            "attempts": json_values,
            "attempted_at": json_values | st.just("2026-11-22T08:15:30.123Z"),
            "next_retry_at": json_values,
        },
    ).map(_record),
)


big_ints = st.integers(min_value=2**63 - 4, max_value=2**70) | st.integers(
    max_value=-(2**63) + 4, min_value=-(2**70)
)
nested_big = st.recursive(
    json_values | big_ints,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=8,
)
objects = st.dictionaries(st.text(max_size=8), nested_big, max_size=6)


@FAST
@given(objects)
def test_records_parse_and_write_back_exactly_as_the_standard_library(doc: dict[str, Any]) -> None:
    # the fast parser must never round a big integer or change any other value
    raw = json.dumps(doc).encode()
    parsed = loads_object(raw)
    assert parsed == json.loads(raw)
    assert repr(parsed) == repr(json.loads(raw))  # the same types at every depth: 1 is not 1.0
    assert json.loads(dumps(parsed)) == parsed


@pytest.mark.parametrize(
    "raw",
    [
        b'{"retry_policy": {"backoff_multiplier": 2.0, "max_retries": 5}, "jitter": 0.1}',
        b'{"a": 1.5, "b": [18446744073709551616]}',  # a float beside an integer past 64 bits
        b'{"a": [{"b": -9223372036854775809}], "c": 0.5}',
        # a float literal as big as those: read again, to the same values
        b'{"a": 1e19, "b": -0.0, "c": 18446744073709551615}',
    ],
)
def test_floats_are_read_as_the_standard_library_reads_them(raw: bytes) -> None:
    # orjson reads an integer past 64 bits as a float: a record with one is read again
    assert repr(loads_object(raw)) == repr(json.loads(raw))


flat_records = st.dictionaries(
    st.text(),
    st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**64 - 1) | st.text(),
    max_size=8,
)


@FAST
@given(flat_records)
def test_flat_records_are_written_byte_for_byte_as_before(doc: dict[str, Any]) -> None:
    try:
        expected = json.dumps(doc, separators=(",", ":"), ensure_ascii=False)
    except ValueError:
        return
    assert dumps(doc) == expected


@FAST
@given(st.none() | st.booleans() | st.integers() | st.text())
def test_a_value_alone_is_written_byte_for_byte_as_before(value: Any) -> None:
    try:
        expected = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    except ValueError:
        return
    assert dumps(value) == expected


nested_records = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text() | st.floats(allow_nan=True),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
).filter(lambda v: isinstance(v, dict))


@FAST
@given(nested_records)
def test_nested_records_are_written_byte_for_byte_as_the_standard_library(
    doc: dict[str, Any],
) -> None:
    expected = json.dumps(doc, separators=(",", ":"), ensure_ascii=False)
    assert dumps(doc) == expected


@FAST
@given(records)
def test_delivery_parse_only_ever_raises_record_error(raw: bytes) -> None:
    try:
        d = Delivery.parse("del_1", raw)
    except RecordError:
        return
    assert d.subscription_id and d.event_id and d.attempts >= 0


security_configs = st.one_of(
    st.binary(max_size=120),
    json_values.map(_record),
    st.fixed_dictionaries(
        {},
        optional={
            "allow_http": json_values,
            "allowed_url_patterns": json_values | st.lists(st.text(max_size=10), max_size=3),
            "blocked_cidr_ranges": json_values
            | st.lists(
                st.builds(lambda a, n: f"{a}/{n}", st.ip_addresses(), st.integers(0, 130))
                | st.text(max_size=12),
                max_size=3,
            ),
        },
    ).map(_record),
)


@settings(max_examples=200, deadline=None)
@given(security_configs, urls)
def test_security_config_parse_only_ever_raises_config_error(raw: bytes, url: str) -> None:
    try:
        policy = SecurityPolicy.from_stored(raw, allow_private_networks=False)
    except SecurityConfigError:
        return
    try:
        target = policy.check_url(url)
    except UrlBlocked:
        return
    _assert_judged(policy, target)


@FAST
@given(st.text(alphabet="ab*.", max_size=8), st.text(alphabet="ab.", max_size=12))
def test_glob_match_is_the_contract_glob(pattern: str, text: str) -> None:
    regex = ".*".join(re.escape(part) for part in pattern.split("*"))
    assert glob_match(pattern, text) == bool(re.fullmatch(regex, text, re.S))
