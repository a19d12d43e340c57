"""The URL policy of contract section 5, judged without any network."""

from __future__ import annotations

import ipaddress

import pytest

from cycles_events.urlguard import (
    SecurityConfigError,
    SecurityPolicy,
    UrlBlocked,
    canonical,
    glob_match,
    parse_ip,
    redact_url,
)

OPEN = {"allow_http": True, "blocked_cidr_ranges": ["192.0.2.0/24"], "allowed_url_patterns": []}


def guarded(**config: object) -> SecurityPolicy:
    """The policy with the baseline on, http allowed and nothing else blocked."""
    return SecurityPolicy.build({**OPEN, **config}, allow_private_networks=False)


def lifted(**config: object) -> SecurityPolicy:
    """The policy with the baseline lifted (development and tests)."""
    return SecurityPolicy.build({**OPEN, **config}, allow_private_networks=True)


HOSTILE = [
    "http://127.0.0.1/",
    "http://127.1/",
    "http://127.0.1/",
    "http://2130706433/",
    "http://017700000001/",
    "http://0x7f000001/",
    "http://0x7f.1/",
    "http://0x7F.0.0.1/",
    "http://0177.0.0.1/",
    "http://127.0.0.1./",
    "http://0/",
    "http://0.0.0.0/",
    "http://[::]/",
    "http://[::1]/",
    "http://[0:0:0:0:0:0:0:1]/",
    "http://[::ffff:127.0.0.1]/",
    "http://[::ffff:7f00:1]/",
    "http://[0:0:0:0:0:ffff:127.0.0.1]/",
    "http://[::127.0.0.1]/",
    "http://[::ffff:0.0.0.0]/",
    "http://[64:ff9b::7f00:1]/",
    "http://[64:ff9b::a9fe:a9fe]/",
    "http://[2002:7f00:1::]/",
    "http://[fe80::1]/",
    "http://[fe80::1%25eth0]/",
    "http://[fc00::1]/",
    "http://[fd12:3456::1]/",
    "http://localhost/",
    "http://localhost./",
    "http://LOCALHOST/",
    "http://LocalHost:8080/",
    "http://foo.localhost/",
    "http://localhost.localdomain/",
    "http://ip6-localhost/",
    "http://\u24dbocalhost/",
    "http://user:pw@127.0.0.1/",
    "http://example.com@127.0.0.1/",
    "http://example.com:80@127.0.0.1/",
    "http://a@b@127.0.0.1/",
    "http://example.com\\@127.0.0.1/",
    "http:\\\\127.0.0.1\\",
    "http://127\u30020\u30020\u30021/",
    "http://127\uff0e0\uff0e0\uff0e1/",
    "http://\u2460\u2461\u2466.0.0.1/",
    "http://127.0.0.1\t/",
    "http://exa mple.com/",
    "http://127.0.0.1\u00a0/",
    "http://example.com\x00.evil/",
    "http://10.0.0.1/",
    "http://172.16.0.1/",
    "http://192.168.1.1/",
    "http://100.64.0.1/",
    "http://169.254.169.254/latest/meta-data/",
    "http://[::ffff:169.254.169.254]/",
    "http://0xa9fea9fe/",
    "http://224.0.0.1/",
    "http://255.255.255.255/",
    "http://240.0.0.1/",
    "http://192.0.2.10/",
    "http://999.1.1.1/",
    "http://1.2.3.4.5/",
    "http://%31%32%37.0.0.1/",
    "http://127.0.0.1:0/",
    "http://127.0.0.1:99999/",
    "http:/127.0.0.1/",
    "http:127.0.0.1",
    "//127.0.0.1/",
    "ftp://example.com/",
    "file:///etc/passwd",
    "gopher://127.0.0.1:6379/_PING",
    "javascript:alert(1)",
    "",
    "   ",
]


@pytest.mark.parametrize("url", HOSTILE)
def test_hostile_urls_are_blocked_with_the_baseline_on(url: str) -> None:
    with pytest.raises(UrlBlocked) as info:
        guarded().check_url(url)
    message = str(info.value)
    assert message.startswith("URL blocked")
    assert "pw" not in message and "example.com@" not in message


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/",
        "http://127.0.0.53/",
        "http://0/",
        "http://0.0.0.0/",
        "http://[::]/",
        "http://[::ffff:127.0.0.1]/",
        "http://[::ffff:7f00:1]/",
        "http://[64:ff9b::7f00:1]/",
        "http://[2002:7f00:1::]/",
        "http://[::127.0.0.1]/",
        "http://2130706433/",
        "http://0x7f.1/",
        "http://[fe80::1%25lo]/",
    ],
)
def test_configured_ranges_catch_every_spelling_with_the_baseline_lifted(url: str) -> None:
    policy = lifted(blocked_cidr_ranges=["127.0.0.0/8"])
    with pytest.raises(UrlBlocked):
        policy.check_url(url)


@pytest.mark.parametrize(
    "url",
    [
        "https://hooks.example.com/cycles",
        "https://hooks.example.com:8443/a/b?x=1#frag",
        "http://93.184.216.34/hook",
        "http://[2606:4700::1111]/hook",
        "https://b\u00fccher.example/hook",
        "https://under_score.example.com/",
        "https://example.com./trailing-dot",
    ],
)
def test_public_urls_pass(url: str) -> None:
    target = guarded().check_url(url)
    assert target.port in (80, 443, 8443)
    assert target.url.raw_host


def test_baseline_lifted_allows_loopback_names_and_addresses() -> None:
    policy = lifted()
    assert policy.check_url("http://localhost:8080/").host == "localhost"
    assert policy.check_url("http://127.0.0.1:8080/").port == 8080
    assert policy.check_url("http://[::1]:8080/").port == 8080


def test_target_url_is_the_parsed_url_that_is_sent() -> None:
    target = guarded().check_url("  https://user:pw@Hooks.Example.com/p?q=1  ")
    assert (target.scheme, target.host, target.port) == ("https", "hooks.example.com", 443)
    assert target.url.raw_host == "hooks.example.com" and target.url.path == "/p"


def test_allow_http_both_ways() -> None:
    with pytest.raises(UrlBlocked, match="http is not allowed"):
        guarded(allow_http=False).check_url("http://hooks.example.com/")
    guarded(allow_http=False).check_url("https://hooks.example.com/")
    guarded(allow_http=True).check_url("http://hooks.example.com/")
    with pytest.raises(UrlBlocked, match="http is not allowed"):
        SecurityPolicy.build(None, allow_private_networks=True).check_url("http://example.com/")


def test_allowed_url_patterns_both_ways() -> None:
    policy = guarded(allowed_url_patterns=["https://hooks.example.com/*", "https://*.acme.io/in"])
    policy.check_url("https://hooks.example.com/a/b")
    policy.check_url("https://eu.acme.io/in")
    for url in [
        "https://hooks.example.com.evil.io/a",
        "https://evil.io/https://hooks.example.com/",
        "https://eu.acme.io/in/more",
        "http://hooks.example.com/a",
    ]:
        with pytest.raises(UrlBlocked, match="allowed_url_patterns"):
            policy.check_url(url)
    assert guarded(allowed_url_patterns=[]).check_url("https://anything.example/")
    assert guarded(allowed_url_patterns=["  "]).check_url("https://anything.example/")


def test_user_info_cannot_smuggle_a_host_past_a_pattern() -> None:
    policy = guarded(allowed_url_patterns=["https://hooks.example.com*"])
    policy.check_url("https://hooks.example.com/x")
    with pytest.raises(UrlBlocked, match="allowed_url_patterns"):
        policy.check_url("https://hooks.example.com@evil.example/")
    with pytest.raises(UrlBlocked, match="allowed_url_patterns"):
        policy.check_url("https://hooks.example.com:443@evil.example/")
    with_user = guarded(allowed_url_patterns=["https://*hooks.example.com/*"])
    with_user.check_url("https://user:pw@hooks.example.com/x")
    assert with_user.check_url("https://hooks.example.com/@x").host == "hooks.example.com"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1", "127.0.0.1"),
        ("127.1", "127.0.0.1"),
        ("127.0.1", "127.0.0.1"),
        ("2130706433", "127.0.0.1"),
        ("017700000001", "127.0.0.1"),
        ("0x7f000001", "127.0.0.1"),
        ("0X7F.1", "127.0.0.1"),
        ("0177.0.0.01", "127.0.0.1"),
        ("0", "0.0.0.0"),
        ("127.0.0.1.", "127.0.0.1"),
        ("[::1]", "::1"),
        ("fe80::1%eth0", "fe80::1"),
        ("[fe80::1%25eth0]", "fe80::1"),
        ("::ffff:127.0.0.1", "::ffff:7f00:1"),
        ("4294967295", "255.255.255.255"),
    ],
)
def test_parse_ip_reads_every_resolver_spelling(text: str, expected: str) -> None:
    assert parse_ip(text) == ipaddress.ip_address(expected)


@pytest.mark.parametrize(
    "text",
    [
        "",
        ".",
        "0x",
        "08",
        "1.2.3.256",
        "4294967296",
        "1..2",
        "+1.2.3.4",
        "1_0.0.0.1",
        "\u0661\u0662\u0667.0.0.1",
        "example.com",
        "1.2.3.4.5",
        "::g",
        "0x1.0x100.1",
    ],
)
def test_parse_ip_rejects_what_inet_aton_rejects(text: str) -> None:
    assert parse_ip(text) is None


@pytest.mark.parametrize(
    ("address", "judged"),
    [
        ("::ffff:10.1.2.3", "10.1.2.3"),
        ("::10.1.2.3", "10.1.2.3"),
        ("64:ff9b::a01:203", "10.1.2.3"),
        ("2002:a01:203::1", "10.1.2.3"),
        ("::1", "::1"),
        ("::", "::"),
        ("2606:4700::1111", "2606:4700::1111"),
        ("10.1.2.3", "10.1.2.3"),
    ],
)
def test_embedded_ipv4_is_judged_as_ipv4(address: str, judged: str) -> None:
    assert canonical(ipaddress.ip_address(address)) == ipaddress.ip_address(judged)


def test_teredo_client_address_is_judged() -> None:
    # Teredo: server 65.54.227.120, client 127.0.0.1 (obfuscated as ~0x7f000001)
    teredo = ipaddress.IPv6Address("2001:0:4136:e378:8000:63bf:80ff:fffe")
    assert teredo.teredo is not None and str(teredo.teredo[1]) == "127.0.0.1"
    assert guarded().blocked_reason(teredo) is not None


def test_judge_addresses_rejects_the_whole_answer_if_any_address_is_blocked() -> None:
    policy = lifted(blocked_cidr_ranges=["127.0.0.2/32"])
    policy.judge_addresses("h.test", ["127.0.0.1", "::1"])
    with pytest.raises(UrlBlocked, match=r"127\.0\.0\.2"):
        policy.judge_addresses("h.test", ["127.0.0.1", "127.0.0.2"])
    with pytest.raises(UrlBlocked, match="no address"):
        policy.judge_addresses("h.test", [])
    with pytest.raises(UrlBlocked, match="unparseable"):
        policy.judge_addresses("h.test", ["not-an-address"])
    with pytest.raises(UrlBlocked):
        policy.judge_addresses("h.test", ["::ffff:127.0.0.2"])
    with pytest.raises(UrlBlocked):
        guarded().judge_addresses("h.test", ["93.184.216.34", "fe80::1%eth0"])


def test_unspecified_multicast_and_broadcast_are_blocked_even_with_the_baseline_lifted() -> None:
    policy = lifted(blocked_cidr_ranges=[])
    for address in ["0.0.0.0", "::", "::ffff:0.0.0.0", "224.0.0.1", "ff02::1", "255.255.255.255"]:
        assert policy.blocked_reason(ipaddress.ip_address(address)) is not None
    assert policy.blocked_reason(ipaddress.ip_address("127.0.0.1")) is None


def test_baseline_ranges_of_the_contract() -> None:
    policy = guarded(blocked_cidr_ranges=[])
    for address in [
        "127.0.0.1",
        "::1",
        "0.1.2.3",
        "10.0.0.1",
        "172.31.255.255",
        "192.168.0.1",
        "169.254.169.254",
        "fe80::1",
        "fc00::1",
        "fdff::1",
        "100.127.255.255",
    ]:
        assert policy.blocked_reason(ipaddress.ip_address(address)) is not None, address
    for address in ["93.184.216.34", "100.128.0.1", "172.32.0.1", "2606:4700::1111"]:
        assert policy.blocked_reason(ipaddress.ip_address(address)) is None, address


def test_config_defaults_and_errors() -> None:
    absent = SecurityPolicy.from_stored(None, allow_private_networks=False)
    assert absent.allow_http is False and absent.allowed_url_patterns == ()
    assert ipaddress.ip_network("127.0.0.0/8") in absent.blocked
    nulls = SecurityPolicy.from_stored(
        b'{"allow_http":null,"allowed_url_patterns":null,"blocked_cidr_ranges":null}',
        allow_private_networks=True,
    )
    assert nulls == absent.__class__.build(None, allow_private_networks=True)
    for raw in [
        b"{",
        b"[]",
        b'{"allow_http":"yes"}',
        b'{"allowed_url_patterns":"x"}',
        b'{"blocked_cidr_ranges":["10.0.0.0/33"]}',
        b'{"blocked_cidr_ranges":[1]}',
        b"\xff\xfe",
    ]:
        with pytest.raises(SecurityConfigError):
            SecurityPolicy.from_stored(raw, allow_private_networks=False)


def test_redact_url_drops_user_info_query_and_fragment() -> None:
    assert redact_url("https://user:s3cret@hooks.example.com:8443/p?token=abc#f") == (
        "https://hooks.example.com:8443/p"
    )
    assert redact_url("http://[::1]:99999/") == "(invalid URL)"


def test_a_pattern_with_many_stars_against_a_long_url_is_linear_work() -> None:
    # as a regular expression this pattern backtracks exponentially on this URL
    policy = guarded(allowed_url_patterns=["https://*a*a*a*a*a*a*a*a*a*a*a*a*b"])
    with pytest.raises(UrlBlocked, match="allowed_url_patterns"):
        policy.check_url("https://hooks.example.com/" + "a" * 5000)
    assert glob_match("https://*a*b", "https://x/" + "a" * 5000 + "b")
