"""Reaching Redis as the Java service's settings describe: an ACL user, TLS with a private CA,
and errors that say what failed (contract section 8)."""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.integration.conftest import StartApp
from tests.support import Admin, Receiver, RedisServer, free_port, wait_until


def _write_pki(folder: Path, name: str) -> tuple[Path, Path, Path]:
    """A private CA and a server certificate for 127.0.0.1 signed by it: (ca, cert, key)."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name} test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = (folder / f"{name}-ca.pem", folder / f"{name}-cert.pem", folder / f"{name}-key.pem")
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return paths


@pytest.fixture
def tls_redis(tmp_path: Path) -> Iterator[tuple[RedisServer, int, Path, Path]]:
    """A redis-server with a plain port (for the test) and a TLS port with an ACL user."""
    ca, cert, key = _write_pki(tmp_path, "redis")
    other_ca, _, _ = _write_pki(tmp_path, "other")
    tls_port = free_port()
    server = RedisServer(
        extra_args=[
            *("--tls-port", str(tls_port), "--tls-cert-file", str(cert)),
            *("--tls-key-file", str(key), "--tls-ca-cert-file", str(ca)),
            *("--tls-auth-clients", "no"),
            *("--user", "cycles", "on", ">cycles-pw", "~*", "&*", "+@all"),
        ]
    )
    server.start()
    yield server, tls_port, ca, other_ca
    server.cleanup()


async def test_acl_user_over_tls_with_a_private_ca(
    start_app: StartApp,
    tls_redis: tuple[RedisServer, int, Path, Path],
    receiver: Receiver,
) -> None:
    from redis.asyncio import Redis

    server, tls_port, ca, _ = tls_redis
    plain = Redis.from_url(server.url)
    admin = Admin(plain)
    await admin.security()
    sub = await admin.subscription(receiver.url())
    delivery_id = await admin.deliver(sub)
    app = await start_app(
        REDIS_URL="",
        REDIS_HOST="127.0.0.1",
        REDIS_PORT=tls_port,
        REDIS_USERNAME="cycles",
        REDIS_PASSWORD="cycles-pw",
        REDIS_TLS_ENABLED="true",
        REDIS_TLS_CA_FILE=str(ca),
    )
    await admin.wait_status([delivery_id], {"SUCCESS"})
    clients = (await plain.execute_command("CLIENT", "LIST")).decode()
    assert "user=cycles" in clients
    assert app.settings.tls_redis
    await plain.aclose()


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"REDIS_TLS_CA_FILE": "other"}, "TLS handshake failed"),
        ({"REDIS_PASSWORD": "wrong"}, "authentication failed"),
    ],
)
async def test_what_failed_is_said(
    start_app: StartApp,
    tls_redis: tuple[RedisServer, int, Path, Path],
    change: dict[str, str],
    expected: str,
) -> None:
    import json

    import aiohttp

    _, tls_port, ca, other_ca = tls_redis
    settings = {
        "REDIS_URL": "",
        "REDIS_HOST": "127.0.0.1",
        "REDIS_PORT": tls_port,
        "REDIS_USERNAME": "cycles",
        "REDIS_PASSWORD": "cycles-pw",
        "REDIS_TLS_ENABLED": "true",
        "REDIS_TLS_CA_FILE": str(ca),
    }
    settings.update(change)
    if settings["REDIS_TLS_CA_FILE"] == "other":
        settings["REDIS_TLS_CA_FILE"] = str(other_ca)
    app = await start_app(**settings)
    url = f"http://127.0.0.1:{app.settings.management_port}/actuator/health"

    seen: list[str] = []

    async def says_what_failed() -> bool:
        async with aiohttp.ClientSession() as session, session.get(url) as resp:
            body = await resp.read()
        seen.append(body.decode())
        error = json.loads(body)["components"]["redis"]["details"].get("error")
        return resp.status == 503 and expected in str(error)

    await wait_until(says_what_failed, True, timeout=15)
    assert "cycles-pw" not in seen[-1] and "wrong" not in seen[-1]
