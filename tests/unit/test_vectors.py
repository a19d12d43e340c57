"""Fixed vectors: signing, encryption at rest, retry delays, instants."""

from __future__ import annotations

import pytest

from cycles_events.config import decode_encryption_key
from cycles_events.crypto import SecretError, decrypt_secret, encrypt_secret
from cycles_events.models import format_instant, parse_instant_ms
from cycles_events.retry import RetryPolicy, classify, parse_retry_after_ms, status_family
from cycles_events.signing import sign, verify

KEY = bytes(range(32))


def test_signature_of_known_secret_and_body() -> None:
    expected = "sha256=51426af50a41dd7ff2cd3f116594734766d4018d15d6fb07169aee5d2959adf5"
    assert sign("whsec_test", b'{"a":1}') == expected


# shared/spec/examples/signing.json of the contract, copied so the test stands on its own
CONTRACT_VECTOR = {
    "WEBHOOK_SECRET_ENCRYPTION_KEY": "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=",
    "stored_secret": (
        "enc:ZGVmZ2hpamtsbW5vP3OtAxq2HPMMAQ6R4gk8n3GxUnvTA8MA9+DNA8zG"
        "/3zhpzf5KFquYrqaNFyvNpO5XhBUKVjMdlDeO+osIpXwFhk="
    ),
    "decrypted_secret": "whsec_Jm2cQy8lVb3sTqXo0rP1aK7eZ4uNw9dH5fGiLcRtYvE",
    "body": (
        '{"event_id":"evt_3f9a1c0d5e7b2a64","event_type":"budget.exhausted","category":"b'
        'udget","timestamp":"2026-11-22T08:15:30.123Z","tenant_id":"acme","scope":"tenant'
        ':acme/workspace:prod","actor":{"type":"api_key","key_id":"key_51c2","source_ip":'
        '"203.0.113.7"},"source":"cycles-server","data":{"scope":"tenant:acme/workspace:p'
        'rod","unit":"USD_MICROCENTS","allocated":500000000,"spent":500000000,"remaining"'
        ':0},"correlation_id":"req_7d1e","request_id":"req_7d1e","trace_id":"4bf92f3577b3'
        '4da6a3ce929d0e0e4736"}'
    ),
    "X-Cycles-Signature": "sha256=b5677845450faedbb5078e6d3f3c51105cb497c1677e465aca3028e22f66371a",
}


def test_contract_signing_vector() -> None:
    vector = CONTRACT_VECTOR
    key = decode_encryption_key(vector["WEBHOOK_SECRET_ENCRYPTION_KEY"])
    secret = decrypt_secret(vector["stored_secret"], key)
    assert secret == vector["decrypted_secret"]
    body = vector["body"].encode()
    assert sign(secret, body) == vector["X-Cycles-Signature"]
    assert verify(secret, body, vector["X-Cycles-Signature"])
    assert not verify(secret, body + b" ", vector["X-Cycles-Signature"])


def test_encrypted_secret_layout_round_trips() -> None:
    stored = encrypt_secret("whsec_abc", KEY, iv=b"\x01" * 12)
    assert stored.startswith("enc:")
    assert decrypt_secret(stored, KEY) == "whsec_abc"
    assert decrypt_secret("plain_secret", None) == "plain_secret"


@pytest.mark.parametrize(
    ("stored", "key"),
    [
        (encrypt_secret("s", KEY, iv=bytes(12)), None),
        (encrypt_secret("s", KEY, iv=bytes(12)), bytes(32)),
        ("enc:!!notbase64", KEY),
        ("enc:AAAA", KEY),
    ],
)
def test_bad_encrypted_secrets_are_errors(stored: str, key: bytes | None) -> None:
    with pytest.raises(SecretError) as info:
        decrypt_secret(stored, key)
    assert "enc:" not in str(info.value)


def test_tampered_ciphertext_is_an_error() -> None:
    stored = encrypt_secret("whsec_abc", KEY)
    import base64

    blob = bytearray(base64.b64decode(stored[4:]))
    blob[14] ^= 1
    with pytest.raises(SecretError):
        decrypt_secret("enc:" + base64.b64encode(bytes(blob)).decode(), KEY)


def test_default_retry_delays() -> None:
    policy = RetryPolicy()
    assert [policy.delay_ms(n) for n in range(1, 6)] == [1000, 2000, 4000, 8000, 16000]
    assert policy.delay_ms(20) == 60000


def test_retry_policy_from_subscription_clamps() -> None:
    policy = RetryPolicy.from_subscription(
        {"retry_policy": {"max_retries": 99, "initial_delay_ms": 5, "backoff_multiplier": "x"}}
    )
    assert policy == RetryPolicy(max_retries=10, initial_delay_ms=100, backoff_multiplier=2.0)
    assert RetryPolicy.from_subscription({}) == RetryPolicy()


def test_retry_after_is_parsed_in_seconds_and_as_a_date() -> None:
    assert parse_retry_after_ms("12", 0) == 12000
    assert parse_retry_after_ms("Wed, 21 Oct 2015 07:28:10 GMT", 1445412480000) == 10000
    assert parse_retry_after_ms("soon", 0) is None


@pytest.mark.parametrize(
    ("status", "error", "reason", "message"),
    [
        (200, None, "success", None),
        (204, None, "success", None),
        (404, None, "http_4xx", "HTTP 404"),
        (503, None, "http_5xx", "HTTP 503"),
        (
            302,
            "Redirect not followed (HTTP 302)",
            "transport_error",
            "Redirect not followed (HTTP 302)",
        ),
        (None, "Connection failed: refused", "transport_error", "Connection failed: refused"),
    ],
)
def test_classification(
    status: int | None, error: str | None, reason: str, message: str | None
) -> None:
    outcome = classify(status, error)
    assert outcome.reason == reason
    assert outcome.message == message


def test_status_family() -> None:
    assert [status_family(s) for s in (200, 302, 404, 500, None, 99)] == [
        "2xx",
        "3xx",
        "4xx",
        "5xx",
        "UNKNOWN",
        "UNKNOWN",
    ]


@pytest.mark.parametrize(
    ("text", "ms"),
    [
        ("2026-11-22T08:15:30Z", 1795335330000),
        ("2026-11-22T08:15:30.123Z", 1795335330123),
        ("2026-11-22T08:15:30.123456Z", 1795335330123),
        ("2026-11-22T08:15:30.5Z", 1795335330500),
        ("2026-11-22T09:15:30+01:00", 1795335330000),
    ],
)
def test_parse_instants(text: str, ms: int) -> None:
    assert parse_instant_ms(text) == ms


def test_format_instants_like_java() -> None:
    assert format_instant(1795335330000) == "2026-11-22T08:15:30Z"
    assert format_instant(1795335330123) == "2026-11-22T08:15:30.123Z"
    assert format_instant(1795335330100) == "2026-11-22T08:15:30.100Z"
    assert parse_instant_ms("garbage") is None
