"""The ceiling: a raw aiohttp POST loop, in a process of its own so that its CPU can be read.

The process reads one JSON command a line on stdin and answers one JSON line on stdout; the
driver (`RawLoop`) reads the process's CPU time from /proc before and after each command. One
`aiohttp.ClientSession` lives as long as the process (its connections stay warm, as the
daemon's pool does). The request it sends is the one the daemon sent: the body and header set
the receiver saw on a real delivery (values fixed, nothing signed or generated per request, only
X-Cycles-Event-Id numbered so the receiver can tell the requests apart).

Commands: {"op": "request", "headers": [[k, v], ...], "body": base64} sets that request;
{"op": "burst", "n", "concurrency", "path", "minimal"} sends n requests with `concurrency`
workers; {"op": "paced", "n", "rate", "concurrency", "path"} makes one request due every
1/rate s and sends each as soon as a worker is free (due time and round trip of each).
"""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import sys
import time
from typing import Any

import aiohttp

from benchmarks.dispatch.harness import ROOT, cpu_seconds
from cycles_events.cli import tune_gc

SKIPPED = {"host", "content-length"}  # set by the client itself
AUTO = ("Accept", "Accept-Encoding", "User-Agent")  # aiohttp adds these unless told not to


class Loop:
    """The loop's state: its session and the request it sends."""

    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}"
        self.session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
        self.headers: dict[str, str] = {"Content-Type": "application/json"}
        self.body = b"{}"
        self.skip: tuple[str, ...] = ()
        self.runs = 0

    def request(self, headers: list[list[str]], body: str) -> dict[str, Any]:
        self.headers = {k: v for k, v in headers if k.lower() not in SKIPPED}
        lower = {k.lower() for k in self.headers}
        self.skip = tuple(h for h in AUTO if h.lower() not in lower)
        self.body = base64.b64decode(body)
        return {"headers": len(self.headers), "body_bytes": len(self.body)}

    def _headers(self, i: int, minimal: bool) -> dict[str, str]:
        event_id = f"raw_{self.runs}_{i}"
        if minimal:
            return {"Content-Type": "application/json", "X-Cycles-Event-Id": event_id}
        headers = dict(self.headers)
        headers["X-Cycles-Event-Id"] = event_id
        return headers

    async def _post(self, url: str, headers: dict[str, str], minimal: bool) -> None:
        skip = () if minimal else self.skip
        async with self.session.post(
            url, data=self.body, headers=headers, skip_auto_headers=skip
        ) as resp:
            await resp.read()

    async def burst(self, n: int, concurrency: int, path: str, minimal: bool) -> dict[str, Any]:
        self.runs += 1
        url = self.base + path
        counter = iter(range(n))

        async def worker() -> None:
            for i in counter:
                await self._post(url, self._headers(i, minimal), minimal)

        wall = time.time()
        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        seconds = time.perf_counter() - started
        return {"rate": n / seconds, "seconds": seconds, "started": wall}

    async def paced(self, n: int, rate: float, concurrency: int, path: str) -> dict[str, Any]:
        self.runs += 1
        url = self.base + path
        queue: asyncio.Queue[tuple[int, float]] = asyncio.Queue()
        due: dict[str, float] = {}
        rtt_ms: list[float] = []

        async def worker() -> None:
            while True:
                i, at = await queue.get()
                if i < 0:
                    return
                headers = self._headers(i, False)
                due[headers["X-Cycles-Event-Id"]] = at
                await self._post(url, headers, False)
                rtt_ms.append((time.time() - at) * 1000)

        workers = [asyncio.create_task(worker()) for _ in range(concurrency)]
        started = time.perf_counter()
        made = 0
        while made < n:
            now = time.perf_counter()
            upto = min(n, int((now - started) * rate) + 1)
            at = time.time()
            for i in range(made, upto):
                queue.put_nowait((i, at))
            made = upto
            await asyncio.sleep(0.001)
        for _ in workers:
            queue.put_nowait((-1, 0.0))
        await asyncio.gather(*workers)
        seconds = time.perf_counter() - started
        return {"due": due, "rtt_ms": rtt_ms, "seconds": seconds}


async def serve(port: int) -> None:
    """Answer commands until stdin closes or says quit."""
    loop = Loop(port)
    reader = asyncio.get_running_loop()
    try:
        print(json.dumps({"ready": True}), flush=True)
        while True:
            line = await reader.run_in_executor(None, sys.stdin.readline)
            if not line.strip():
                return
            cmd = json.loads(line)
            op = cmd.pop("op")
            if op == "quit":
                return
            if op == "request":
                out = loop.request(**cmd)
            elif op == "burst":
                out = await loop.burst(**cmd)
            elif op == "paced":
                out = await loop.paced(**cmd)
            else:
                out = {"error": f"unknown op {op}"}
            print(json.dumps(out), flush=True)
    finally:
        await loop.session.close()


class RawLoop:
    """The driver's side: starts the loop's process, sends it commands, reads its CPU time."""

    def __init__(self, port: int) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.dispatch.raw", str(port)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )

    async def _line(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = await asyncio.to_thread(self.proc.stdout.readline)
        if not line:
            raise RuntimeError("the raw loop's process exited")
        out: dict[str, Any] = json.loads(line)
        return out

    async def ready(self) -> None:
        await self._line()

    async def call(self, op: str, **args: Any) -> tuple[dict[str, Any], float]:
        """Run one command; its answer and the CPU seconds the process spent on it."""
        assert self.proc.stdin is not None
        before = cpu_seconds(self.proc.pid)
        self.proc.stdin.write(json.dumps({"op": op, **args}) + "\n")
        self.proc.stdin.flush()
        out = await self._line()
        return out, cpu_seconds(self.proc.pid) - before

    async def close(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.write('{"op": "quit"}\n')
            self.proc.stdin.close()
            try:
                await asyncio.to_thread(self.proc.wait, 10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def main() -> None:
    """Run the loop with the daemon's garbage-collector settings, so both sides have them."""
    tune_gc()
    asyncio.run(serve(int(sys.argv[1])))


if __name__ == "__main__":
    main()
