"""Standard Webhooks headers: fixed vectors, and verification by the real receiver libraries."""

from __future__ import annotations

import base64
import binascii
import time
from typing import Any

import pytest
import standardwebhooks
import svix.webhooks
from hypothesis import given, settings
from hypothesis import strategies as st

from cycles_events.signing import sign
from cycles_events.stdwebhooks import (
    RESERVED,
    enabled_for,
    headers,
    key_bytes,
    previous_secret_key,
    receiver_secret,
    secrets_in_force,
    signature,
)
from tests.unit.test_vectors import CONTRACT_VECTOR

CONTRACT_SECRET = CONTRACT_VECTOR["decrypted_secret"]
CONTRACT_BODY = CONTRACT_VECTOR["body"].encode()
CONTRACT_EVENT = "evt_3f9a1c0d5e7b2a64"
CONTRACT_TS = 1795335330  # 2026-11-22T08:15:30Z, the event's own second
# 32 bytes whose base64url has both '-' and '_': what the libraries misread
URL_KEY = bytes(range(224, 256))
URL_SECRET = "whsec_4OHi4-Tl5ufo6err7O3u7_Dx8vP09fb3-Pn6-_z9_v8"
BODY = b'{"a":1}'
EVENT = "evt_0000000000000001"
TS = 1700000000


def test_signature_matches_the_standard_webhooks_published_example() -> None:
    key = base64.b64decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    got = signature(key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, b'{"test": 2432232314}')
    assert got == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_contract_secret_vector() -> None:
    key = "266d9c432f2555bdec4ea5e8d2b3f568aede678b8dc3d747e5f1a22dc46d62f1"
    assert key_bytes(CONTRACT_SECRET).hex() == key
    # no '-' or '_' in it: the library form is the admin's text plus padding
    assert receiver_secret(CONTRACT_SECRET) == CONTRACT_SECRET + "="
    assert headers(CONTRACT_EVENT, CONTRACT_TS, CONTRACT_BODY, [CONTRACT_SECRET]) == {
        "webhook-id": CONTRACT_EVENT,
        "webhook-timestamp": "1795335330",
        "webhook-signature": "v1,B8GE/4ubQemwyShwgaCQepfSDaF1TqDCqow6cw8c500=",
    }
    # the contract's own signature is untouched: same key as ever, the whole string's bytes
    assert sign(CONTRACT_SECRET, CONTRACT_BODY) == CONTRACT_VECTOR["X-Cycles-Signature"]


def test_base64url_secret_vector() -> None:
    assert key_bytes(URL_SECRET) == URL_KEY
    assert receiver_secret(URL_SECRET) == "whsec_4OHi4+Tl5ufo6err7O3u7/Dx8vP09fb3+Pn6+/z9/v8="
    got = headers(EVENT, TS, BODY, [URL_SECRET])
    assert got["webhook-signature"] == "v1,bQfyOpjDl4+wxTQ4G/TBtusx5FB4Jvoz1ABf8gfibw0="


def test_hand_set_secret_vector_uses_its_utf8_bytes() -> None:
    assert key_bytes("whsec_test") == b"whsec_test"
    assert receiver_secret("whsec_test") == "whsec_d2hzZWNfdGVzdA=="
    got = headers(EVENT, TS, BODY, ["whsec_test"])
    assert got["webhook-signature"] == "v1,vj+ngrcPAQWj3mH98+gjMckOAh/bexhMMfIbWURGtKQ="


@pytest.mark.parametrize(
    "secret",
    [
        "whsec_4OHi4-Tl5ufo6err7O3u7_Dx8vP09fb3-Pn6-_z9_v9",  # spare bits set: not canonical
        URL_SECRET + "=",  # padded
        URL_SECRET[:-1],  # 42 characters
        URL_SECRET + "A",  # 44 characters
        "whsec_4OHi4+Tl5ufo6err7O3u7/Dx8vP09fb3+Pn6+/z9/v8",  # standard alphabet
        "WHSEC_" + URL_SECRET[6:],  # the prefix is case-sensitive
        URL_SECRET[6:],  # no prefix
        " " + URL_SECRET,
        "s3cret-value",
        "whsec_",
        "whsec_é" + "A" * 42,
    ],
)
def test_anything_but_an_admin_secret_keys_with_its_utf8_bytes(secret: str) -> None:
    assert key_bytes(secret) == secret.encode("utf-8")


def test_the_libraries_misread_an_admin_secret_and_accept_the_receiver_form() -> None:
    now = int(time.time())
    sent = headers(EVENT, now, BODY, [URL_SECRET])
    # the lenient decoder drops '-' and '_': wrong bytes, or no valid Base64 at all
    with pytest.raises((standardwebhooks.WebhookVerificationError, binascii.Error)):
        standardwebhooks.Webhook(URL_SECRET).verify(BODY, sent)
    misread = "whsec_ISIjJCUmJygpKissLS4vMDEyMzQ1Njc4OTo7PD0-P0A"  # bytes 33..64: 31 bytes read
    assert key_bytes(misread) == bytes(range(33, 65))
    with pytest.raises(standardwebhooks.WebhookVerificationError):
        standardwebhooks.Webhook(misread).verify(BODY, headers(EVENT, now, BODY, [misread]))
    standardwebhooks.Webhook(receiver_secret(misread)).verify(
        BODY, headers(EVENT, now, BODY, [misread])
    )
    assert standardwebhooks.Webhook(receiver_secret(URL_SECRET)).verify(BODY, sent) == {"a": 1}
    svix.webhooks.Webhook(receiver_secret(URL_SECRET)).verify(BODY, sent)


@pytest.mark.parametrize("secret", [CONTRACT_SECRET, URL_SECRET, "whsec_test", "pw@ü"])
def test_real_libraries_verify_the_headers(secret: str) -> None:
    sent = headers(CONTRACT_EVENT, int(time.time()), CONTRACT_BODY, [secret])
    parsed = standardwebhooks.Webhook(receiver_secret(secret)).verify(CONTRACT_BODY, sent)
    assert parsed["event_id"] == CONTRACT_EVENT
    svix.webhooks.Webhook(receiver_secret(secret)).verify(CONTRACT_BODY, sent)
    # header names are case-insensitive on the wire
    upper = {k.title(): v for k, v in sent.items()}
    standardwebhooks.Webhook(receiver_secret(secret)).verify(CONTRACT_BODY, upper)


def test_rotation_sends_two_signatures_and_either_secret_verifies() -> None:
    current, previous = URL_SECRET, CONTRACT_SECRET
    sent = headers(CONTRACT_EVENT, int(time.time()), CONTRACT_BODY, [current, previous])
    parts = sent["webhook-signature"].split(" ")
    assert len(parts) == 2 and all(p.startswith("v1,") for p in parts)
    for secret in (current, previous):
        for verifier in (standardwebhooks.Webhook, svix.webhooks.Webhook):
            verifier(receiver_secret(secret)).verify(CONTRACT_BODY, sent)
    with pytest.raises(standardwebhooks.WebhookVerificationError):
        standardwebhooks.Webhook(receiver_secret("whsec_other")).verify(CONTRACT_BODY, sent)
    # one secret alone gives the first signature: the current one comes first
    alone = headers(CONTRACT_EVENT, int(sent["webhook-timestamp"]), CONTRACT_BODY, [current])
    assert parts[0] == alone["webhook-signature"]


def test_a_tampered_body_or_a_stale_timestamp_is_refused() -> None:
    sent = headers(EVENT, int(time.time()), BODY, [URL_SECRET])
    hook = standardwebhooks.Webhook(receiver_secret(URL_SECRET))
    with pytest.raises(standardwebhooks.WebhookVerificationError):
        hook.verify(b'{"a":2}', sent)
    old = headers(EVENT, int(time.time()) - 3600, BODY, [URL_SECRET])
    with pytest.raises(standardwebhooks.WebhookVerificationError):
        hook.verify(BODY, old)


def test_secrets_in_force() -> None:
    assert secrets_in_force("a", None) == ["a"]
    assert secrets_in_force("a", "") == ["a"]
    assert secrets_in_force("a", "a") == ["a"]
    assert secrets_in_force("a", "b") == ["a", "b"]
    assert secrets_in_force(URL_SECRET, CONTRACT_SECRET) == [URL_SECRET, CONTRACT_SECRET]


def test_equal_keys_and_empty_secrets_sign_once() -> None:
    one = headers(EVENT, TS, BODY, [URL_SECRET])
    assert headers(EVENT, TS, BODY, [URL_SECRET, URL_SECRET, ""]) == one


@pytest.mark.parametrize(
    ("event_id", "ts", "secrets"),
    [
        ("", TS, ["k"]),
        (" \r\n", TS, ["k"]),
        (EVENT, -1, ["k"]),
        (EVENT, True, ["k"]),
        (EVENT, 1.5, ["k"]),
        (EVENT, TS, []),
        (EVENT, TS, [""]),
    ],
)
def test_unusable_inputs_are_refused(event_id: str, ts: Any, secrets: list[str]) -> None:
    with pytest.raises(ValueError):
        headers(event_id, ts, BODY, secrets)


def test_control_characters_never_reach_the_id_header() -> None:
    got = headers("evt_1\r\nX-Evil: 1", TS, BODY, ["k"])
    assert got["webhook-id"] == "evt_1X-Evil: 1"
    assert (
        got["webhook-signature"] == headers("evt_1X-Evil: 1", TS, BODY, ["k"])["webhook-signature"]
    )


def test_receiver_secret_of_an_empty_secret_is_refused() -> None:
    with pytest.raises(ValueError):
        receiver_secret("")


@pytest.mark.parametrize(
    ("metadata", "setting", "expected"),
    [
        (None, False, False),
        (None, True, True),
        ({}, False, False),
        ({"standard_webhooks": True}, False, True),
        ({"standard_webhooks": "true"}, False, True),
        ({"standard_webhooks": " TRUE "}, False, True),
        ({"standard_webhooks": False}, True, False),
        ({"standard_webhooks": "false"}, True, False),
        ({"standard_webhooks": 1}, False, False),  # not a boolean: the setting stands
        ({"standard_webhooks": "maybe"}, True, True),
        ({"standard_webhooks": None}, True, True),
        ("not an object", True, True),
    ],
)
def test_enabled_for(metadata: Any, setting: bool, expected: bool) -> None:
    sub: dict[str, Any] = {"subscription_id": "whsub_1"}
    if metadata is not None:
        sub["metadata"] = metadata
    assert enabled_for(sub, setting) is expected


def test_names() -> None:
    assert previous_secret_key("whsub_0a1b2c3d4e5f6071") == (
        "webhook:secret:whsub_0a1b2c3d4e5f6071:previous"
    )
    assert {"webhook-id", "webhook-timestamp", "webhook-signature"} == RESERVED


@settings(max_examples=200, deadline=None)
@given(raw=st.binary(min_size=32, max_size=32))
def test_every_admin_secret_round_trips(raw: bytes) -> None:
    secret = "whsec_" + base64.urlsafe_b64encode(raw).decode().rstrip("=")
    assert key_bytes(secret) == raw
    assert base64.b64decode(receiver_secret(secret)[6:]) == raw
    sent = headers(EVENT, int(time.time()), BODY, [secret])
    standardwebhooks.Webhook(receiver_secret(secret)).verify(BODY, sent)


@settings(max_examples=200, deadline=None)
@given(secret=st.text(min_size=1, max_size=80))
def test_every_secret_has_a_receiver_form_that_verifies(secret: str) -> None:
    sent = headers(EVENT, int(time.time()), BODY, [secret])
    standardwebhooks.Webhook(receiver_secret(secret)).verify(BODY, sent)
