"""The outbound HTTP client against hostile local servers: redirects, floods, stalls, TLS."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import socket
import ssl
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from cycles_events.sender import Sender
from cycles_events.urlguard import SecurityPolicy
from tests.dns_support import (
    DnsResolver,
    DnsServer,
    RawServer,
    endless_body,
    respond,
    respond_each,
    silent,
)
from tests.integration.conftest import StartApp
from tests.support import OPEN_SECURITY, Admin

LIFTED = SecurityPolicy.build(OPEN_SECURITY, allow_private_networks=True)


async def new_sender(
    *,
    total: float = 5.0,
    connect: float = 2.0,
    policy: Callable[[], SecurityPolicy] = lambda: LIFTED,
    resolver: AbstractResolver | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> Sender:
    sender = Sender(
        policy=policy,
        connect_timeout=connect,
        total_timeout=total,
        resolver=resolver,
        ssl_context=ssl_context,
    )
    await sender.start()
    return sender


async def wait_for(predicate: Callable[[], object], timeout: float = 5.0) -> None:
    for _ in range(int(timeout / 0.02)):
        if predicate():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not reached")


@pytest.fixture
async def dns() -> AsyncIterator[DnsServer]:
    server = DnsServer()
    await server.start()
    yield server
    server.stop()


@pytest.mark.parametrize("code", [301, 302, 303, 307, 308])
async def test_redirects_are_never_followed(code: int) -> None:
    elsewhere = await RawServer().start()
    location = elsewhere.url("/stolen").encode()
    redirecting = await RawServer(
        respond(
            b"HTTP/1.1 %d Moved\r\nLocation: %s\r\nContent-Length: 0\r\n\r\n" % (code, location)
        )
    ).start()
    sender = await new_sender()
    try:
        result = await sender.post(redirecting.url(), b"{}", {})
    finally:
        await sender.close()
        await redirecting.stop()
        await elsewhere.stop()
    assert result.status == code
    assert result.error == f"Redirect not followed (HTTP {code})"
    assert elsewhere.connections == 0


async def test_a_redirect_is_a_retried_transport_error_through_the_daemon(
    start_app: StartApp, admin: Admin
) -> None:
    elsewhere = await RawServer().start()
    location = elsewhere.url("/stolen").encode()
    redirecting = await RawServer(
        respond(b"HTTP/1.1 302 Found\r\nLocation: %s\r\nContent-Length: 0\r\n\r\n" % location)
    ).start()
    try:
        await admin.security()
        sub = await admin.subscription(redirecting.url())
        delivery = await admin.deliver(sub)
        await start_app()
        (doc,) = await admin.wait_status([delivery], {"RETRYING", "FAILED"})
        assert doc["response_status"] == 302 and doc["attempts"] == 1
        assert doc["error_message"] == "Redirect not followed (HTTP 302)"
        assert elsewhere.connections == 0
    finally:
        await redirecting.stop()
        await elsewhere.stop()


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 200_000 + b"\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 " + b"O" * 100_000 + b"\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(2000)) + b"\r\n",
        b"HTTP/1.1 200 OK\r\nX-Folded: a\r\n" + b" b\r\n" * 20_000 + b"Content-Length: 0\r\n\r\n",
    ],
    ids=["huge-header-line", "huge-status-line", "too-many-headers", "endless-folding"],
)
async def test_oversized_response_heads_are_refused(answer: bytes) -> None:
    server = await RawServer(respond(answer)).start()
    sender = await new_sender()
    try:
        result = await sender.post(server.url(), b"{}", {})
    finally:
        await sender.close()
        await server.stop()
    assert result.status is None
    assert result.error is not None and result.error.startswith("Invalid HTTP response")


async def test_an_endless_body_is_cut_off_after_64_kib() -> None:
    server = await RawServer(endless_body).start()
    sender = await new_sender()
    try:
        result = await sender.post(server.url(), b"{}", {})
        assert (result.status, result.error) == (200, None)
        await wait_for(lambda: server.ended)  # the client hung up on the stream
        assert server.ended[0] in ("ConnectionResetError", "BrokenPipeError")
        again = await sender.post(server.url(), b"{}", {})  # dropped, not returned to the pool
        assert again.status == 200 and server.connections == 2
    finally:
        await sender.close()
        await server.stop()


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
        b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nhello\r\n0\r\n\r\n",
        b"HTTP/1.1 202 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\nX-T: 1\r\n\r\n",
        b"HTTP/1.1 204 No Content\r\n\r\n",
    ],
    ids=["content-length", "chunked", "chunked-trailer", "no-content"],
)
async def test_a_small_body_is_read_whole_and_the_connection_kept(answer: bytes) -> None:
    server = await RawServer(respond_each(answer)).start()
    sender = await new_sender()
    try:
        first = await sender.post(server.url(), b"{}", {})
        second = await sender.post(server.url(), b"{}", {})
        assert first.status == second.status == int(answer[9:12]) and first.error is None
        assert server.connections == 1  # the connection was kept and reused
    finally:
        await sender.close()
        await server.stop()


async def test_the_total_timeout_ends_a_silent_receiver() -> None:
    server = await RawServer(silent).start()
    sender = await new_sender(total=0.5)
    try:
        result = await sender.post(server.url(), b"{}", {})
    finally:
        await sender.close()
        await server.stop()
    assert result.status is None
    assert result.error == "Timeout: no response within 0.5s"
    assert len(server.requests) == 1


@pytest.fixture
def unaccepting_port() -> Iterator[int]:
    """A port whose accept queue is full, so that a new connection attempt never completes."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(4):
        s = socket.socket()
        s.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            s.connect(("127.0.0.1", port))
        fillers.append(s)
    yield port
    for s in fillers:
        s.close()
    listener.close()


async def test_the_connect_timeout_is_applied(unaccepting_port: int) -> None:
    sender = await new_sender(connect=0.3, total=30.0)
    try:
        result = await sender.post(f"http://127.0.0.1:{unaccepting_port}/hook", b"{}", {})
    finally:
        await sender.close()
    assert result.status is None
    assert result.error == "Timeout: no connection within 0.3s"


async def test_proxy_environment_variables_are_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    proxy = await RawServer().start()
    target = await RawServer().start()
    for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY"):
        monkeypatch.setenv(name, proxy.url("/"))
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    sender = await new_sender()
    try:
        result = await sender.post(target.url(), b"{}", {})
    finally:
        await sender.close()
        await proxy.stop()
        await target.stop()
    assert result.status == 200
    assert (proxy.connections, target.connections) == (0, 1)


async def test_a_policy_change_retires_pooled_connections(dns: DnsServer) -> None:
    server = await RawServer().start()
    dns.set("keep.test", ["127.0.0.1"])
    closed = SecurityPolicy.build(
        {**OPEN_SECURITY, "blocked_cidr_ranges": ["127.0.0.1/32"]}, allow_private_networks=True
    )
    current = [LIFTED]
    sender = await new_sender(policy=lambda: current[0], resolver=DnsResolver(dns.port))
    url = f"http://keep.test:{server.port}/hook"
    try:
        assert (await sender.post(url, b"{}", {})).status == 200
        assert (await sender.post(url, b"{}", {})).status == 200
        assert (server.connections, dns.count("keep.test")) == (1, 1)  # kept alive
        current[0] = closed
        result = await sender.post(url, b"{}", {})
        assert result.blocked is not None and "127.0.0.1" in result.blocked
        assert server.connections == 1
        await wait_for(lambda: server.ended)  # the old pool's connection was closed
        current[0] = LIFTED
        assert (await sender.post(url, b"{}", {})).status == 200
        assert (server.connections, dns.count("keep.test")) == (2, 3)
    finally:
        await sender.close()
        await server.stop()


# --- TLS: the judged address is dialled, the certificate is checked against the URL's host --------


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_pki(host: str) -> tuple[bytes, bytes, bytes]:
    """A CA certificate, and a key and certificate for `host` signed by it (all PEM)."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("test ca"))
        .issuer_name(_name("test ca"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(host))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    key_pem = key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return ca.public_bytes(pem), key_pem, cert.public_bytes(pem)


async def test_tls_checks_the_certificate_against_the_url_host(
    dns: DnsServer, tmp_path: Path
) -> None:
    ca_pem, key_pem, cert_pem = make_pki("hooks.test")
    (tmp_path / "key.pem").write_bytes(key_pem)
    (tmp_path / "cert.pem").write_bytes(cert_pem)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
    names: list[str | None] = []

    def sni(_sock: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> None:
        names.append(name)

    server_ctx.sni_callback = sni  # type: ignore[assignment]
    hosts: list[str] = []

    async def handle(request: web.Request) -> web.Response:
        hosts.append(request.host)
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/hook", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=server_ctx)
    await site.start()
    port = runner.addresses[0][1]
    dns.set("hooks.test", ["127.0.0.1"])
    dns.set("other.test", ["127.0.0.1"])
    client_ctx = ssl.create_default_context(cadata=ca_pem.decode())
    sender = await new_sender(resolver=DnsResolver(dns.port), ssl_context=client_ctx)
    try:
        good = await sender.post(f"https://hooks.test:{port}/hook", b"{}", {})
        assert (good.status, good.error) == (200, None)
        assert names == ["hooks.test"] and hosts == [f"hooks.test:{port}"]
        wrong = await sender.post(f"https://other.test:{port}/hook", b"{}", {})
        assert (wrong.status, wrong.error) == (None, "TLS certificate verification failed")
        literal = await sender.post(f"https://127.0.0.1:{port}/hook", b"{}", {})
        assert literal.error == "TLS certificate verification failed"
        assert len(hosts) == 1
    finally:
        await sender.close()
        await runner.cleanup()


async def test_user_info_is_basic_auth_unless_a_custom_authorization_header_is_set() -> None:
    server = await RawServer().start()
    sender = await new_sender()
    url = f"http://u:p@127.0.0.1:{server.port}/hook"
    try:
        assert (await sender.post(url, b"{}", {})).status == 200
        custom = await sender.post(url, b"{}", {"Authorization": "Bearer t"})
        assert (custom.status, custom.error) == (200, None)
    finally:
        await sender.close()
        await server.stop()
    first, second = server.requests
    assert b"Authorization: Basic dTpw\r\n" in first and first.startswith(b"POST /hook HTTP/1.1")
    assert b"Authorization: Bearer t\r\n" in second and b"Basic" not in second


async def test_a_kept_connection_closed_by_the_server_is_replaced_not_failed() -> None:
    """The server drops an idle keep-alive connection as the next request reaches it."""
    from tests.dns_support import read_request

    async def answer_once(
        server: RawServer, r: asyncio.StreamReader, w: asyncio.StreamWriter
    ) -> None:
        request = await read_request(r)
        if request is None:
            return
        server.requests.append(request[0])
        if server.connections == 1:  # the first connection answers once, then dies unanswered
            w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
            await w.drain()
            await read_request(r)
            w.transport.abort()
            return
        w.write(b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n")
        await w.drain()
        await r.read()

    server = await RawServer(answer_once).start()
    sender = await new_sender()
    try:
        assert (await sender.post(server.url(), b"{}", {})).status == 200
        again = await sender.post(server.url(), b"{}", {})
        assert (again.status, again.error) == (201, None)
        assert server.connections == 2
    finally:
        await sender.close()
        await server.stop()
