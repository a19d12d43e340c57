"""`make bench-instructions`: Redis's instructions per delivery in a burst, counted by callgrind.

Wall-clock CPU on a shared machine moves by a third from one burst to the next; the number of
instructions redis-server runs for the same burst by a few percent. redis-server runs under
`valgrind --tool=callgrind` with instrumentation off until the burst is pushed; the daemon, the
receiver and the records are the benchmark's own (goal 1's burst, smaller). Redis is some 50x
slower under valgrind, so its batches come bigger than in a real burst: compare one commit with
another by this, and read real figures from `make bench`.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import subprocess
from pathlib import Path

import aiohttp
from redis.asyncio import Redis

from benchmarks.dispatch import records
from benchmarks.dispatch.harness import DAEMON_ROOT, Daemon, ReceiverProc, RedisMeter, git
from benchmarks.dispatch.scenarios import push, settled
from tests.support import Admin, RedisServer


def instructions(workdir: Path) -> int:
    """The instructions (Ir) of every dump callgrind_control asked for in workdir."""
    total = 0
    for dump in sorted(workdir.glob("callgrind.out.*")):
        found = re.search(r"^(?:summary|totals):\s+(\d+)", dump.read_text(), re.MULTILINE)
        if found is None:
            raise RuntimeError(f"no totals in {dump}")
        total += int(found.group(1))
    return total


async def callgrind_control(*args: str) -> None:
    """Run callgrind_control (instrumentation on or off, a dump) and wait for it."""
    proc = await asyncio.create_subprocess_exec(
        "callgrind_control", *args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    if await asyncio.wait_for(proc.wait(), timeout=120) != 0:
        raise RuntimeError(f"callgrind_control {' '.join(args)} failed")


async def run(n: int, subs: int, concurrency: int) -> dict[str, float]:
    """One burst of n deliveries: Redis instructions and commands per delivery."""
    server = RedisServer()  # its folder is made here; callgrind's dumps go there
    out = Path(server.dir) / "callgrind.out"
    server.wrapper = [
        "valgrind",
        "--tool=callgrind",
        "--instr-atstart=no",
        f"--callgrind-out-file={out}",
    ]
    server.start()
    assert server.proc is not None
    pid = str(server.proc.pid)
    client = Redis(port=server.port)
    receiver = ReceiverProc()
    session = aiohttp.ClientSession()
    daemon: Daemon | None = None
    try:
        await receiver.ready()
        admin = Admin(client)
        await admin.security()
        url = receiver.url("/hook")
        sub_ids = [await admin.subscription(url, encrypt=True) for _ in range(subs)]
        pairs = await records.deliveries("127.0.0.1", server.port, sub_ids, n)
        env = {"DISPATCH_CONCURRENCY": str(concurrency), "LOG_LEVEL": "WARNING"}
        daemon = Daemon(server.url, Path(server.dir), "daemon", **env)
        await daemon.ready(session)
        await callgrind_control("-i", "on", pid)
        meter = RedisMeter(client)
        await meter.start()
        await push(client, [d for d, _ in pairs], meter)
        await receiver.wait_receipts([e for _, e in pairs], timeout=900)
        await settled(client, meter, timeout=300)
        work = await meter.stop()
        await callgrind_control("-d", pid)
        await callgrind_control("-i", "off", pid)
        total = instructions(Path(server.dir))
        scripts = work.calls.get("evalsha", 0) / n
        return {"instructions": total / n, "commands": work.commands_per(n), "scripts": scripts}
    finally:
        if daemon is not None:
            daemon.stop()
        await session.close()
        await receiver.close()
        await client.aclose()
        server.cleanup()


def main() -> None:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.dispatch.instructions", description=__doc__
    )
    p.add_argument("--n", type=int, default=3000, help="deliveries in the burst")
    p.add_argument("--subscriptions", type=int, default=8)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--runs", type=int, default=1)
    args = p.parse_args()
    for tool in ("valgrind", "callgrind_control", "redis-server"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is missing (Debian: apt-get install valgrind redis-server)")
    commit = git("rev-parse", "--short", "HEAD", cwd=DAEMON_ROOT)
    print(
        f"daemon at {DAEMON_ROOT} ({commit}); a burst of {args.n:,}, concurrency {args.concurrency}"
    )
    for i in range(args.runs):
        got = asyncio.run(run(args.n, args.subscriptions, args.concurrency))
        print(
            f"run {i + 1}: {got['instructions'] / 1000:,.1f}k Redis instructions per delivery, "
            f"{got['commands']:.2f} commands, {got['scripts']:.3f} scripts"
        )


if __name__ == "__main__":
    main()
