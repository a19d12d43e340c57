"""The command line in-process: help texts, argument errors and the commands without Redis."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import pytest

from cycles_events import cli
from cycles_events.cli import common
from cycles_events.crypto import decrypt_secret

EXAMPLES = Path("/work/shared/spec/examples/signing.json")
VECTORS = json.loads(EXAMPLES.read_text()) if EXAMPLES.exists() else None
COMMANDS = [
    ["stats"],
    ["deliveries", "show"],
    ["deliveries", "list"],
    ["replay"],
    ["quarantine", "list"],
    ["quarantine", "requeue"],
    ["quarantine", "drop"],
    ["subscriptions", "list"],
    ["subscriptions", "show"],
    ["subscriptions", "enable"],
    ["healthcheck"],
    ["keygen"],
    ["encrypt-secret"],
    ["verify"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_command_has_help_with_an_example(
    command: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main([*command, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "example" in out and "cycles-events " in out.split("example", 1)[1]
    assert "--json" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["deliveries", "show", "nope"], "not a delivery id"),
        (["deliveries", "list"], "--subscription"),
        (["deliveries", "list", "--subscription", "whsub_1", "--since", "soon"], "not a time"),
        (["deliveries", "list", "--subscription", "whsub_1", "--status", "DONE"], "unknown status"),
        (["deliveries", "list", "--subscription", "whsub_1", "--limit", "0"], "at least 1"),
        (["replay"], "give delivery ids or --subscription"),
        (["replay", "del_1", "--subscription", "whsub_1"], "not both"),
        (["replay", "del_1", "--reason", "http_5xx"], "only apply with --subscription"),
        (["replay", "--subscription", "whsub_1", "--reason", "bad"], "invalid choice"),
        (["replay", "--subscription", "whsub_1", "--rate", "fast"], "not a rate"),
        (["replay", "--subscription", "whsub_1", "--since", "1h", "--until", "2h"], "after"),
        (["quarantine", "requeue"], "required"),
        (["subscriptions", "enable", "sub_1"], "not a subscription id"),
        (["subscriptions", "show", "sub_1"], "not a subscription id"),
        (["subscriptions", "list", "--status", "GONE"], "unknown status"),
        (["subscriptions", "list", "--limit", "0"], "at least 1"),
        (["deliveries", "list", "--subscription", "whsub_1", "--reason", "bad"], "invalid choice"),
        (
            ["verify", "--secret-file", "/nonexistent", "--signature", "sha256=" + "a" * 64],
            "cannot read",
        ),
        (["bogus"], "invalid choice"),
    ],
)
def test_bad_arguments_exit_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "usage:" in err and message in err


def test_verify_rejects_a_malformed_signature(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    secret = tmp_path / "secret"
    secret.write_text("whsec_x\n")
    with pytest.raises(SystemExit) as exc:
        cli.main(["verify", "--secret-file", str(secret), "--signature", "md5=abc"])
    assert exc.value.code == 2
    assert "sha256=<64 hex digits>" in capsys.readouterr().err


def test_keygen(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["keygen"]) == 0
    key = capsys.readouterr().out.strip()
    assert len(base64.b64decode(key, validate=True)) == 32
    assert cli.main(["keygen", "--json"]) == 0
    other = json.loads(capsys.readouterr().out)["WEBHOOK_SECRET_ENCRYPTION_KEY"]
    assert other != key and len(base64.b64decode(other)) == 32


def _stdin(monkeypatch: pytest.MonkeyPatch, data: bytes) -> None:
    monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(data), encoding="utf-8"))


def test_encrypt_secret_round_trips(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    key_b64 = base64.b64encode(bytes(range(32))).decode()
    monkeypatch.setenv("WEBHOOK_SECRET_ENCRYPTION_KEY", key_b64)
    _stdin(monkeypatch, b"whsec_hello\n")
    assert cli.main(["encrypt-secret"]) == 0
    stored = capsys.readouterr().out.strip()
    assert stored.startswith("enc:") and "whsec_hello" not in stored
    assert decrypt_secret(stored, bytes(range(32))) == "whsec_hello"


def test_encrypt_secret_needs_a_key_and_a_secret(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("WEBHOOK_SECRET_ENCRYPTION_KEY", raising=False)
    _stdin(monkeypatch, b"whsec_hello\n")
    assert cli.main(["encrypt-secret"]) == 1
    assert "WEBHOOK_SECRET_ENCRYPTION_KEY is not set" in capsys.readouterr().err
    monkeypatch.setenv("WEBHOOK_SECRET_ENCRYPTION_KEY", base64.b64encode(b"k" * 32).decode())
    _stdin(monkeypatch, b"\n")
    assert cli.main(["encrypt-secret"]) == 1
    assert "no secret" in capsys.readouterr().err


@pytest.mark.skipif(VECTORS is None, reason="spec examples not present")
def test_verify_with_the_contract_vectors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert VECTORS is not None
    body = VECTORS["body"].encode()
    signature = VECTORS["X-Cycles-Signature"]
    plain = tmp_path / "plain"
    plain.write_text(VECTORS["decrypted_secret"] + "\n")
    _stdin(monkeypatch, body)
    assert cli.main(["verify", "--secret-file", str(plain), "--signature", signature]) == 0
    assert capsys.readouterr().out.strip() == "signature valid"
    _stdin(monkeypatch, body + b" ")
    assert cli.main(["verify", "--secret-file", str(plain), "--signature", signature]) == 1
    assert "INVALID" in capsys.readouterr().out
    encrypted = tmp_path / "enc"
    encrypted.write_text(VECTORS["stored_secret"])
    monkeypatch.setenv("WEBHOOK_SECRET_ENCRYPTION_KEY", VECTORS["WEBHOOK_SECRET_ENCRYPTION_KEY"])
    _stdin(monkeypatch, body)
    argv = ["verify", "--json", "--secret-file", str(encrypted), "--signature", signature]
    assert cli.main(argv) == 0
    assert json.loads(capsys.readouterr().out) == {"valid": True, "body_bytes": len(body)}
    monkeypatch.setenv("WEBHOOK_SECRET_ENCRYPTION_KEY", base64.b64encode(b"w" * 32).decode())
    _stdin(monkeypatch, body)
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert "decryption failed" in err and VECTORS["decrypted_secret"] not in err


def test_redis_target_never_shows_the_password(monkeypatch: pytest.MonkeyPatch) -> None:
    from cycles_events.config import Settings

    monkeypatch.delenv("REDIS_URL", raising=False)
    with_url = Settings(REDIS_URL="redis://:hunter2@redis.internal:6380/0")
    assert common._redis_target(with_url) == "redis.internal:6380"
    plain = Settings(REDIS_HOST="cache", REDIS_PORT=7000, REDIS_PASSWORD="hunter2")
    assert common._redis_target(plain) == "cache:7000"
