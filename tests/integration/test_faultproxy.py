"""The fault-injection proxy, driven with real redis-py clients against a real redis-server."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import redis as sync_redis
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ConstantBackoff, NoBackoff
from redis.exceptions import ConnectionError, ResponseError, TimeoutError
from redis.retry import Retry as SyncRetry

from tests.faultproxy import (
    FaultProxy,
    ProtocolError,
    command,
    parse_command,
    reply_end,
    script_contains,
)
from tests.support import RedisServer, wait_until

Connect = Callable[..., Redis]


@pytest.fixture
async def proxy(redis_server: RedisServer, redis: Redis) -> AsyncIterator[FaultProxy]:
    async with FaultProxy(redis_server.port) as p:
        yield p


@pytest.fixture
async def connect(proxy: FaultProxy) -> AsyncIterator[Connect]:
    """Clients through the proxy; `retries` 0 by default, so every fault shows."""
    clients: list[Redis] = []

    def make(retries: int = 0, **kwargs: object) -> Redis:
        kwargs.setdefault("retry", Retry(NoBackoff(), retries))
        client = Redis(host="127.0.0.1", port=proxy.port, **kwargs)  # type: ignore[arg-type]
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.aclose()


def poll(value: Callable[[], object]) -> Callable[[], Awaitable[object]]:
    """A `wait_until` probe for a plain value."""

    async def probe() -> object:
        return value()

    return probe


async def raw_exchange(port: int, *commands: list[bytes]) -> list[bytes]:
    """Send `commands` in one packet and return the reply frames received before EOF."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    packet = b"".join(
        b"*%d\r\n" % len(cmd) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in cmd)
        for cmd in commands
    )
    writer.write(packet)
    data = await asyncio.wait_for(reader.read(), timeout=5)  # until the proxy closes
    writer.close()
    frames, pos = [], 0
    while (end := reply_end(data, pos)) is not None:
        frames.append(data[pos:end])
        pos = end
    assert pos == len(data), "a partial frame was sent"
    return frames


# --- the RESP parser ---------------------------------------------------------------------------

FRAMES = [
    b"+OK\r\n",
    b"-ERR wrong\r\n",
    b":-12\r\n",
    b"$-1\r\n",
    b"$0\r\n\r\n",
    b"$6\r\nhe\r\nlo\r\n",  # CRLF inside a bulk string
    b"*-1\r\n",
    b"*0\r\n",
    b"*3\r\n:1\r\n*2\r\n$1\r\na\r\n*1\r\n$-1\r\n+x\r\n",  # nested arrays
    b"_\r\n",  # RESP3 from here on
    b",3.14\r\n",
    b"#t\r\n",
    b"(3492890328409238509324850943850943825024385\r\n",
    b"!21\r\nSYNTAX invalid syntax\r\n",
    b"=15\r\ntxt:Some string\r\n",
    b"%2\r\n+first\r\n:1\r\n$6\r\nsecond\r\n*1\r\n:2\r\n",
    b"~2\r\n+a\r\n+b\r\n",
    b">3\r\n$10\r\ninvalidate\r\n*1\r\n$1\r\nk\r\n+x\r\n",
    b"|1\r\n+key-popularity\r\n%1\r\n$1\r\na\r\n,0.19\r\n*1\r\n:2\r\n",  # attribute + value
]


@pytest.mark.parametrize("frame", FRAMES)
def test_reply_end_finds_whole_frames_only(frame: bytes) -> None:
    assert reply_end(frame) == len(frame)
    assert reply_end(frame + b"+next\r\n") == len(frame)
    assert reply_end(b"+before\r\n" + frame, 9) == 9 + len(frame)
    for cut in range(len(frame)):
        assert reply_end(frame[:cut]) is None, frame[:cut]


def test_parse_command_handles_pipelines_inline_and_garbage() -> None:
    get, ping = b"*2\r\n$3\r\nGET\r\n$2\r\n\r\n\r\n", b"*1\r\n$4\r\nPING\r\n"
    packet = get + ping + b"PING extra\r\n"
    assert parse_command(packet) == ([b"GET", b"\r\n"], len(get))
    assert parse_command(packet, len(get)) == ([b"PING"], len(get + ping))
    assert parse_command(packet, len(get + ping)) == ([b"PING", b"extra"], len(packet))
    assert all(parse_command(packet[:cut]) is None for cut in range(len(get)))
    with pytest.raises(ProtocolError):
        reply_end(b"?what\r\n")
    with pytest.raises(ProtocolError):
        parse_command(b"*1\r\n:1\r\n")


# --- pass-through -----------------------------------------------------------------------------


async def test_commands_replies_and_pipelines_pass_through_intact(
    proxy: FaultProxy, connect: Connect, redis: Redis
) -> None:
    client = connect()
    big = bytes(range(256)) * 8192  # 2 MiB, arrives in many reads
    assert await client.set("big", big)
    assert await client.get("big") == big
    pipe = client.pipeline(transaction=False)
    for i in range(300):
        pipe.set(f"k{i}", i).get(f"k{i}").hgetall("missing")
    results = await pipe.execute()
    assert results == [x for i in range(300) for x in (True, str(i).encode(), {})]
    async with client.pipeline(transaction=True) as tx:
        tx.incr("n").incr("n").lpush("list", "a", "b").lrange("list", 0, -1)
        assert await tx.execute() == [1, 2, 2, [b"b", b"a"]]
    nested = await client.eval("return {1, {2, {'three', false}}, 'x'}", 0)
    assert nested == [1, [2, [b"three", None]], b"x"]
    pipe = client.pipeline(transaction=False)
    pipe.set("s", "v").incr("s").get("s")
    ok, error, value = await pipe.execute(raise_on_error=False)
    assert ok is True and isinstance(error, ResponseError) and value == b"v"
    assert proxy.commands["SET"] == 302 and proxy.commands["GET"] == 302
    assert proxy.commands["MULTI"] == 1 and proxy.commands["EXEC"] == 1
    assert await redis.get("k299") == b"299"


async def test_resp3_replies_pass_through(proxy: FaultProxy, connect: Connect) -> None:
    client = connect(protocol=3)
    await client.hset("h", mapping={"a": "1", "b": "2"})
    await client.sadd("set", "x", "y")
    await client.zadd("z", {"m": 1.5})
    assert await client.hgetall("h") == {b"a": b"1", b"b": b"2"}
    assert await client.smembers("set") == {b"x", b"y"}
    assert await client.zscore("z", "m") == 1.5
    assert await client.get("nothing") is None
    assert proxy.commands["HELLO"] == 1


async def test_resp3_push_frames_do_not_take_a_reply_slot(proxy: FaultProxy) -> None:
    # tracking sends this connection an invalidation push of its own SET; the PING after it
    # must still be the one whose reply gets dropped
    proxy.drop_reply("PING")
    frames = await raw_exchange(
        proxy.port,
        [b"HELLO", b"3"],
        [b"CLIENT", b"TRACKING", b"ON"],
        [b"GET", b"tracked"],
        [b"SET", b"tracked", b"v"],
        [b"PING"],
    )
    assert [f[:1] for f in frames if f[:1] != b">"] == [b"%", b"+", b"_", b"+"]
    assert [f for f in frames if f[:1] == b">"] == [
        b">2\r\n$10\r\ninvalidate\r\n*1\r\n$7\r\ntracked\r\n"
    ]
    assert proxy.dropped_replies == 1


async def test_pubsub_connections_pass_through(
    proxy: FaultProxy, connect: Connect, redis: Redis
) -> None:
    pubsub = connect().pubsub()
    await pubsub.subscribe("news")
    await redis.publish("news", "hello")
    messages: list[bytes] = []
    deadline = time.monotonic() + 5
    while not messages and time.monotonic() < deadline:
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.2)
        if message is not None:
            messages.append(message["data"])
    assert messages == [b"hello"]
    await pubsub.aclose()


# --- drop_reply -------------------------------------------------------------------------------


async def test_dropped_reply_runs_the_command_but_the_client_gets_an_error(
    proxy: FaultProxy, connect: Connect, redis: Redis
) -> None:
    client = connect(retries=0)
    rule = proxy.drop_reply("INCRBY")  # what redis-py sends for incr()
    with pytest.raises(ConnectionError):
        await client.incr("n")
    assert await redis.get("n") == b"1"  # it ran
    assert proxy.dropped_replies == 1 and rule.hits == 1
    assert await client.incr("n") == 2  # times=1: used up, and the client reconnects


async def test_a_retrying_client_runs_the_command_twice(
    proxy: FaultProxy, connect: Connect, redis: Redis
) -> None:
    client = connect(retries=1)
    proxy.drop_reply("INCRBY")
    assert await client.incr("n") == 2  # why the daemon's scripts must be idempotent
    assert await redis.get("n") == b"2"
    assert proxy.commands["INCRBY"] == 2


async def test_drop_reply_matches_scripts_by_sha_or_text(
    proxy: FaultProxy, connect: Connect, redis: Redis
) -> None:
    client = connect()
    mark = "return redis.call('INCR', KEYS[1])"
    other = await client.script_load("return redis.call('INCRBY', KEYS[1], 10)")
    sha = await client.script_load(mark)
    proxy.drop_reply(command("EVALSHA", sha), times=2)
    assert await client.evalsha(other, 1, "n") == 10  # another script is not touched
    with pytest.raises(ConnectionError):
        await client.evalsha(sha, 1, "n")
    proxy.drop_reply(script_contains("-- claim"))
    with pytest.raises(ConnectionError):
        await client.eval(f"-- claim\n{mark}", 1, "n")
    assert await client.eval(f"-- other\n{mark}", 1, "n") == 13
    assert await redis.get("n") == b"13"
    assert proxy.dropped_replies == 2


async def test_drop_in_a_pipeline_delivers_earlier_replies_and_runs_later_commands(
    proxy: FaultProxy, connect: Connect, redis: Redis
) -> None:
    proxy.drop_reply(command("INCR", "b"))
    frames = await raw_exchange(
        proxy.port, [b"SET", b"a", b"1"], [b"GET", b"a"], [b"INCR", b"b"], [b"INCR", b"c"]
    )
    assert frames == [b"+OK\r\n", b"$1\r\n1\r\n"]  # then EOF instead of ":1"
    await wait_until(lambda: redis.mget("b", "c"), [b"1", b"1"])
    client = connect()
    proxy.drop_reply(command("INCRBY", "b"))
    pipe = client.pipeline(transaction=False)
    pipe.incr("a").incr("b").incr("c")
    with pytest.raises(ConnectionError):
        await pipe.execute()
    pipe = client.pipeline(transaction=False)
    pipe.incr("a").incr("b").incr("c")
    assert await pipe.execute() == [3, 3, 3]  # all ran once before, and the stream is in sync


async def test_a_drop_on_one_connection_leaves_the_others_alone(
    proxy: FaultProxy, connect: Connect
) -> None:
    victim, bystander = connect(), connect()
    proxy.drop_reply("GET")
    busy = asyncio.gather(*(bystander.incr("count") for _ in range(50)))  # 50 connections
    with pytest.raises(ConnectionError):
        await victim.get("x")
    assert sorted(await busy) == list(range(1, 51))


# --- fail_request -----------------------------------------------------------------------------


async def test_failed_request_never_runs(proxy: FaultProxy, connect: Connect, redis: Redis) -> None:
    client = connect()
    proxy.fail_request(command("SET", "k"))
    pipe = client.pipeline(transaction=False)
    pipe.set("before", 1).set("k", 1).set("after", 1)
    with pytest.raises(ConnectionError):
        await pipe.execute()
    await wait_until(lambda: redis.get("before"), b"1")  # forwarded before the failure
    assert await redis.mget("k", "after") == [None, None]
    assert proxy.failed_requests == 1 and proxy.commands["SET"] == 1
    assert await client.set("k", 2) and await redis.get("k") == b"2"


# --- delay_reply ------------------------------------------------------------------------------


async def test_delayed_replies_arrive_late_and_in_order(
    proxy: FaultProxy, connect: Connect
) -> None:
    client = connect()
    await client.set("k", "v")
    proxy.delay_reply("GET", 0.3, times=2)
    start = time.monotonic()
    assert await client.ping()
    assert time.monotonic() - start < 0.2
    assert await client.get("k") == b"v"
    assert time.monotonic() - start >= 0.3
    start = time.monotonic()
    pipe = client.pipeline(transaction=False)
    pipe.get("k").ping().set("k", "w").get("k")
    assert await pipe.execute() == [b"v", True, True, b"w"]  # the replies after it wait too
    assert time.monotonic() - start >= 0.3
    assert proxy.delayed_replies == 2


async def test_a_delay_beyond_the_socket_timeout_times_out(
    proxy: FaultProxy, connect: Connect
) -> None:
    client = connect(socket_timeout=0.1)
    proxy.delay_reply("BLPOP", 0.5, times=1)
    with pytest.raises(TimeoutError):
        await client.blpop(["q"], timeout=0.05)


# --- cut_all, pause, resume -------------------------------------------------------------------


async def test_cut_all_breaks_commands_in_flight_and_new_ones_work(
    proxy: FaultProxy, connect: Connect
) -> None:
    client, idle = connect(), connect()
    assert await idle.ping()
    proxy.delay_reply("GET", 5)
    in_flight = asyncio.create_task(client.get("k"))
    await wait_until(poll(lambda: proxy.commands["GET"]), 1)  # the GET waits for its reply
    assert proxy.cut_all() == 2
    with pytest.raises(ConnectionError):
        await in_flight
    proxy.clear()
    assert await client.get("k") is None
    # a reset idle connection fails at most once, when next used: redis-py before 8 finds the
    # reset only then; 8 checks a pooled connection before it uses it
    with contextlib.suppress(ConnectionError):
        await idle.ping()
    assert await idle.ping()


@pytest.mark.parametrize("refuse", [True, False])
async def test_pause_makes_redis_unreachable_until_resume(
    proxy: FaultProxy, connect: Connect, refuse: bool
) -> None:
    client = connect()
    assert await client.ping()
    port = proxy.port
    proxy.pause(refuse=refuse)
    assert proxy.open_connections == 0
    for _ in range(2):
        with pytest.raises(ConnectionError):
            await client.ping()
        with pytest.raises(ConnectionError):
            await connect().ping()
    proxy.resume()
    assert await client.ping() and proxy.port == port


async def test_a_retrying_client_rides_out_a_short_pause(
    proxy: FaultProxy, connect: Connect, redis: Redis
) -> None:
    client = connect(retry=Retry(ConstantBackoff(0.05), 20))
    assert await client.ping()
    proxy.pause()
    asyncio.get_running_loop().call_later(0.3, proxy.resume)
    start = time.monotonic()
    assert await client.incr("n") == 1
    assert time.monotonic() - start >= 0.25
    assert await redis.get("n") == b"1"


# --- a proxy in its own thread, for sync code -------------------------------------------------


def test_a_proxy_in_a_thread_serves_sync_clients(redis_server: RedisServer) -> None:
    if redis_server.proc is None or redis_server.proc.poll() is not None:
        redis_server.start()
    proxy = FaultProxy(redis_server.port).start_in_thread()
    direct = sync_redis.Redis(port=redis_server.port)
    client = sync_redis.Redis(host="127.0.0.1", port=proxy.port, retry=SyncRetry(NoBackoff(), 0))
    try:
        direct.delete("thread:n")
        proxy.drop_reply(command("INCRBY", "thread:n"))
        with pytest.raises(ConnectionError):
            client.incr("thread:n")
        assert direct.get("thread:n") == b"1"
        assert client.incr("thread:n") == 2
        assert proxy.cut_all() == 1
        proxy.pause()
        with pytest.raises(ConnectionError):
            client.ping()
        proxy.resume()
        assert client.ping()
        assert proxy.dropped_replies == 1
    finally:
        client.close()
        direct.close()
        proxy.stop_in_thread()
