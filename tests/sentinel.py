"""A throwaway Redis Sentinel deployment on loopback: a primary, a replica and three sentinels."""

from __future__ import annotations

import asyncio
import atexit
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from redis import Redis
from redis.asyncio.sentinel import Sentinel as AsyncSentinel
from redis.exceptions import RedisError, ResponseError

HOST = "127.0.0.1"
T = TypeVar("T")


class HarnessError(RuntimeError):
    """The sentinel deployment did not reach the expected state in time."""


class _PortTaken(HarnessError):
    """A process could not bind its port (someone took it after free_port)."""


class _NotYet(Exception):
    """A condition that is being polled for does not hold yet."""


def free_port() -> int:
    """A TCP port nobody listens on right now (like tests.support, without importing the app)."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _quote(value: str) -> str:
    """A string as a double-quoted redis.conf argument."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _pairs(reply: dict[Any, Any] | list[Any]) -> dict[str, str]:
    """A RESP3 map or RESP2 flat key/value list as a dict of strings."""
    items = reply.items() if isinstance(reply, dict) else zip(reply[::2], reply[1::2], strict=True)
    return {str(k): str(v) for k, v in items}


# a peer flagged `master_down` only carries a stale vote from the last failover: still usable
_UNHEALTHY = {"s_down", "o_down", "disconnected"}


def _flags(state: dict[str, str]) -> set[str]:
    """The flags of a SENTINEL MASTER/REPLICAS/SENTINELS entry."""
    return set(filter(None, state.get("flags", "").split(",")))


@dataclass
class Node:
    """One redis-server or sentinel process with its own port, directory, config and log."""

    name: str
    dir: Path
    password: str | None = None
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        self.conf, self.log = self.dir / "node.conf", self.dir / "node.log"

    def alive(self) -> bool:
        """Whether the process is running."""
        return self.proc is not None and self.proc.poll() is None

    def call(self, *args: Any, timeout: float = 1.0) -> Any:
        """One command on a fresh connection; the reply is decoded and unparsed."""
        opts: dict[str, Any] = {"socket_timeout": timeout, "socket_connect_timeout": timeout}
        with Redis(HOST, self.port, password=self.password, decode_responses=True, **opts) as r:
            return r.execute_command(*args)

    def info(self, section: str = "replication") -> dict[str, str]:
        """An INFO section as a dict of strings."""
        parsed: dict[str, Any] = self.call("INFO", section)  # redis-py parses INFO replies
        return {str(k): str(v) for k, v in parsed.items()}

    def launch(self, extra: list[str], timeout: float = 10.0) -> None:
        """Start the process on its config file and wait until it answers PING."""
        # sentinels run as `redis-server conf --sentinel`; FileNotFoundError if it is not installed
        argv = [shutil.which("redis-server") or "redis-server", str(self.conf), *extra]
        with self.log.open("ab") as out:  # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=self.dir)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                if "Address already in use" in self.tail():
                    raise _PortTaken(self.name)
                raise HarnessError(f"{self.name} exited ({self.proc.returncode}):\n{self.tail()}")
            with suppress(RedisError, OSError):
                if self.call("PING", timeout=0.2) in (True, "PONG"):
                    return
            if time.monotonic() > deadline:
                self.kill()
                raise HarnessError(f"{self.name} did not answer PING in {timeout}s:\n{self.tail()}")
            time.sleep(0.01)

    def kill(self, *, graceful: bool = False) -> None:
        """SIGKILL (or SIGTERM, then SIGKILL after 10 s) the process and reap it."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate() if graceful else self.proc.kill()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def tail(self, lines: int = 40) -> str:
        """The end of the process log."""
        if not self.log.exists():
            return "(no log)"
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


@dataclass(kw_only=True)
class SentinelSet:
    """A primary, one replica and three sentinels on 127.0.0.1, each in its own directory."""

    master_name: str = "mymaster"
    persistent: bool = False  # AOF with appendfsync always on both data nodes
    password: str | None = None  # requirepass + masterauth on the data nodes
    sentinel_password: str | None = None  # requirepass on the sentinels
    sentinel_count: int = 3
    quorum: int = 2
    # > 1000: after a switch a sentinel may wait its 1 s reconnect period before it pings the new
    # master; at <= 1000 that reads as s_down, and stale votes turn it into a second failover
    down_after_ms: int = 1500
    failover_timeout_ms: int = 3000

    def __post_init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="cycles-sentinel-"))
        pw, spw = self.password, self.sentinel_password
        self.servers = [self._node("primary", pw), self._node("replica", pw)]
        self.sentinels = [self._node(f"sentinel-{i + 1}", spw) for i in range(self.sentinel_count)]

    def _node(self, name: str, password: str | None) -> Node:
        (path := self.root / name).mkdir()
        return Node(name, path, password)

    def start(self, timeout: float = 20.0) -> SentinelSet:
        """Start everything and wait until a failover could succeed; clean up on failure."""
        atexit.register(self.cleanup)  # no orphans if the caller never gets to cleanup()
        try:
            primary, replica = self.servers
            self._launch(self.servers, self._server_conf, [])
            self._until("replica synced", lambda: self._synced(replica, primary.port), timeout)
            ids = {s.name: os.urandom(20).hex() for s in self.sentinels}
            self._launch(self.sentinels, lambda s: self._sentinel_conf(s, ids), ["--sentinel"])
            self.wait_ready(timeout)
        except BaseException:
            self.cleanup()
            raise
        return self

    def cleanup(self) -> None:
        """Stop every process and remove the temporary directories."""
        atexit.unregister(self.cleanup)
        for node in (*self.sentinels, *self.servers):
            node.kill()
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> SentinelSet:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.cleanup()

    @staticmethod
    def _base_conf(n: Node) -> list[str]:
        return f"port {n.port}\nbind {HOST}\nprotected-mode no\ndir {_quote(str(n.dir))}".split(
            "\n"
        )

    def _server_conf(self, node: Node) -> str:
        auth = _quote(node.password) if node.password else None
        lines = [
            *self._base_conf(node),
            'save ""',
            "repl-diskless-sync-delay 0",
            "shutdown-timeout 2",
            *(["appendonly yes", "appendfsync always"] if self.persistent else ["appendonly no"]),
            *([f"requirepass {auth}", f"masterauth {auth}"] if auth else []),
            *([f"replicaof {HOST} {self.servers[0].port}"] if node is not self.servers[0] else []),
        ]
        return "\n".join(lines) + "\n"

    def _sentinel_conf(self, me: Node, ids: dict[str, str]) -> str:
        name, auth = self.master_name, _quote(me.password) if me.password else None
        peers = [s for s in self.sentinels if s is not me]
        lines = [
            *self._base_conf(me),
            f"sentinel myid {ids[me.name]}",
            f"sentinel monitor {name} {HOST} {self.servers[0].port} {self.quorum}",
            f"sentinel down-after-milliseconds {name} {self.down_after_ms}",
            f"sentinel failover-timeout {name} {self.failover_timeout_ms}",
            f"sentinel parallel-syncs {name} 1",
            *([f"sentinel auth-pass {name} {_quote(self.password)}"] if self.password else []),
            *([f"requirepass {auth}", f"sentinel sentinel-pass {auth}"] if auth else []),
            # known peers up front: no waiting for the 2 s hello messages to find each other
            f"sentinel known-replica {name} {HOST} {self.servers[1].port}",
            *(f"sentinel known-sentinel {name} {HOST} {s.port} {ids[s.name]}" for s in peers),
        ]
        return "\n".join(lines) + "\n"

    def _launch(self, group: list[Node], conf: Callable[[Node], str], extra: list[str]) -> None:
        """Write the group's configs and start it; on a port race pick new ports and retry."""
        for attempt in range(3):
            for node in group:
                node.port = free_port() if attempt else node.port
                node.conf.write_text(conf(node))
            try:
                for node in group:
                    node.launch(extra)
                return
            except _PortTaken:
                for node in group:
                    node.kill()
        raise HarnessError(f"{[n.name for n in group]}: no free ports after 3 attempts")

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """The sentinels as (host, port) tuples, as redis-py's Sentinel takes them."""
        return [(HOST, s.port) for s in self.sentinels]

    @property
    def nodes(self) -> str:
        """The sentinels as `host:port,host:port,...` (a REDIS_SENTINEL_NODES value)."""
        return ",".join(f"{HOST}:{s.port}" for s in self.sentinels)

    def async_sentinel(self, **connection_kwargs: Any) -> AsyncSentinel:
        """A redis.asyncio Sentinel client with this set's passwords."""
        own: dict[str, Any] = {"socket_timeout": 1.0, "password": self.sentinel_password}
        connection_kwargs = {"socket_timeout": 2.0, "password": self.password, **connection_kwargs}
        return AsyncSentinel(self.addresses, sentinel_kwargs=own, **connection_kwargs)

    def node_at(self, port: int) -> Node:
        """The data node (redis-server) listening on `port`."""
        for node in self.servers:
            if node.port == port:
                return node
        raise HarnessError(f"no redis-server of this set on port {port}")

    def primary_port(self) -> int:
        """The master port reported by the first sentinel that answers."""
        errors = []
        for s in self.sentinels:
            try:
                return self._master_of(s)
            except (RedisError, OSError, TypeError) as exc:
                errors.append(f"{s.name}: {exc!r}")
        raise HarnessError(f"no sentinel reports {self.master_name}: {errors}")

    def _ask(self, sentinel: Node, subcommand: str) -> Any:
        return sentinel.call("SENTINEL", subcommand, self.master_name)

    def _master_of(self, sentinel: Node) -> int:
        return int(self._ask(sentinel, "GET-MASTER-ADDR-BY-NAME")[1])

    def _reported_ports(self) -> set[int]:
        """The master port of every live sentinel (raises if one does not answer)."""
        return {self._master_of(s) for s in self.sentinels if s.alive()}

    def _synced(self, node: Node, master_port: int) -> None:
        info = node.info()
        link = (info.get("master_port"), info.get("master_link_status"))
        if link != (str(master_port), "up"):
            raise _NotYet(f"{node.name}: master port and link {link}, want {master_port}")

    def _ready(self) -> int:
        ports = self._reported_ports()
        if len(ports) != 1:
            raise _NotYet(f"sentinels disagree on the master: {sorted(ports)}")
        master = self.node_at(port := ports.pop())
        if not master.alive() or master.info().get("role") != "master":
            raise _NotYet(f"{master.name} on {port} is not a live master")
        replicas = [n for n in self.servers if n.alive() and n is not master]
        for node in replicas:
            self._synced(node, port)
        live = [s for s in self.sentinels if s.alive()]
        for s in live:
            flags = _flags(_pairs(self._ask(s, "MASTER")))
            if "master" not in flags or flags & (_UNHEALTHY | {"failover_in_progress"}):
                raise _NotYet(f"{s.name} sees master flags {sorted(flags)}")
            peers = [_pairs(p) for p in self._ask(s, "SENTINELS")]
            healthy = {int(p["port"]) for p in peers if not _flags(p) & _UNHEALTHY}
            if len(healthy & {o.port for o in live}) < len(live) - 1:
                raise _NotYet(f"{s.name} sees healthy sentinels {sorted(healthy)}")
            seen = {int(r["port"]): r for r in map(_pairs, self._ask(s, "REPLICAS"))}
            for node in replicas:
                entry = seen.get(node.port, {})
                # its master-port here lags up to 10 s (INFO period): _synced checked the node
                if _flags(entry) != {"slave"}:
                    raise _NotYet(f"{s.name} sees {node.name} as {entry or 'unknown'}")
            self._ask(s, "CKQUORUM")
        return port

    def _until(self, what: str, check: Callable[[], T], timeout: float) -> T:
        deadline = time.monotonic() + timeout
        while True:
            try:
                return check()
            except (_NotYet, RedisError, OSError) as exc:
                problem = str(exc) or type(exc).__name__
            if time.monotonic() > deadline:
                raise HarnessError(f"{what}: not within {timeout}s: {problem}\n{self.log_tails()}")
            time.sleep(0.05)

    def wait_ready(self, timeout: float = 20.0) -> int:
        """Wait until all sentinels agree on a live master and see every live replica and peer."""
        return self._until("sentinel set ready", self._ready, timeout)

    def log_tails(self, lines: int = 15) -> str:
        """The end of every process log, for a failing test to print."""
        nodes = (*self.servers, *self.sentinels)
        return "\n".join(f"--- {n.name} (port {n.port}) ---\n{n.tail(lines)}" for n in nodes)

    def kill_primary(self, *, graceful: bool = False) -> int:
        """SIGKILL (or SIGTERM) the current primary; returns its port."""
        port = self.primary_port()
        self.node_at(port).kill(graceful=graceful)
        return port

    def wait_new_primary(self, old_port: int, timeout: float = 20.0) -> int:
        """Wait until every live sentinel reports a live master other than `old_port`."""

        def moved() -> int:
            ports = self._reported_ports()
            if len(ports) != 1 or old_port in ports:
                raise _NotYet(f"sentinels report {sorted(ports)} (old {old_port})")
            if self.node_at(port := ports.pop()).info().get("role") != "master":
                raise _NotYet(f"port {port} does not say role:master yet")
            return port

        return self._until(f"failover away from {old_port}", moved, timeout)

    def failover(self, timeout: float = 20.0, *, demote: bool = True) -> int:
        """SENTINEL FAILOVER, retried while no replica is eligible; returns the new port."""
        # `demote`: REPLICAOF the old primary now; sentinels convert it only at their next INFO
        # of it, ~10 s later, and it takes writes until then
        old = self.primary_port()
        sentinel = next(s for s in self.sentinels if s.alive())

        def trigger() -> None:
            try:
                self._ask(sentinel, "FAILOVER")
            except ResponseError as exc:
                if "INPROG" not in str(exc):
                    raise

        deadline = time.monotonic() + timeout
        self._until("SENTINEL FAILOVER accepted", trigger, timeout)
        new = self.wait_new_primary(old, max(1.0, deadline - time.monotonic()))
        previous = self.node_at(old)
        if demote and previous.alive() and previous.info().get("role") == "master":
            previous.call("REPLICAOF", HOST, str(new))
        return new

    def restart(self, port: int, *, as_replica: bool = True, timeout: float = 20.0) -> None:
        """Start a stopped node again on its port (as a replica of the current master)."""
        node = self.node_at(port)
        if node.alive():
            raise HarnessError(f"{node.name} on {port} is still running")
        if (master := self.primary_port()) == port:
            raise HarnessError(f"sentinels still report {port} as master: fail over first")
        node.launch(["--replicaof", HOST, str(master)] if as_replica else [])
        self.wait_ready(timeout)

    # async wrappers: the blocking waits would stall a daemon running in the test's loop
    async def await_new_primary(self, old_port: int, timeout: float = 20.0) -> int:
        """wait_new_primary in a thread."""
        return await asyncio.to_thread(self.wait_new_primary, old_port, timeout)

    async def afailover(self, timeout: float = 20.0) -> int:
        """failover in a thread."""
        return await asyncio.to_thread(self.failover, timeout)

    async def arestart(self, port: int, *, as_replica: bool = True, timeout: float = 20.0) -> None:
        """restart in a thread."""
        await asyncio.to_thread(self.restart, port, as_replica=as_replica, timeout=timeout)
