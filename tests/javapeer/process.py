"""Running the peer as a real process (`python -m tests.javapeer`), for kill tests."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from tests.javapeer.options import PeerOptions, to_args

ROOT = Path(__file__).resolve().parents[2]


class PeerProcess:
    """One peer process with its own JSON-lines log file."""

    def __init__(self, options: PeerOptions | None = None, **overrides: Any) -> None:
        """The process options (logging to a file in a temporary directory); not started yet."""
        self.dir = tempfile.mkdtemp(prefix="javapeer-")
        opts = replace(options or PeerOptions(), **overrides)
        if opts.log is None or opts.log == "-":
            opts = replace(opts, log=str(Path(self.dir) / "peer.log"))
        assert opts.die_mode in ("auto", "exit"), "a peer process dies by exiting"
        self.options = opts
        self.log_path = Path(str(opts.log))
        self.stderr_path = Path(self.dir) / "stderr.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        """The command line of the process."""
        return [sys.executable, "-m", "tests.javapeer", *to_args(self.options)]

    def start(self) -> None:
        """Start the process (it logs "started" once it serves)."""
        env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
        with open(self.stderr_path, "ab") as err:
            self.proc = subprocess.Popen(
                self.command(), cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=err
            )

    @property
    def returncode(self) -> int | None:
        """The exit code, None while it runs."""
        return None if self.proc is None else self.proc.poll()

    @property
    def pid(self) -> int:
        """The process id."""
        assert self.proc is not None
        return self.proc.pid

    def records(self) -> list[dict[str, Any]]:
        """Every complete log line so far."""
        if not self.log_path.exists():
            return []
        out = []
        for line in self.log_path.read_text(encoding="utf-8").splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue  # a line cut by a kill
        return out

    def find(self, action: str, delivery_id: str | None = None) -> list[dict[str, Any]]:
        """Log records of one action (and delivery, when given)."""
        return [
            r
            for r in self.records()
            if r.get("action") == action and delivery_id in (None, r.get("delivery_id"))
        ]

    def stderr(self) -> str:
        """What the process wrote to stderr."""
        return self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""

    async def wait_for(
        self, action: str, delivery_id: str | None = None, *, count: int = 1, timeout: float = 15.0
    ) -> list[dict[str, Any]]:
        """Wait until `count` records of an action (and delivery) are logged."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.find(action, delivery_id)
            if len(found) >= count:
                return found
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"peer process logged {len(found)} {action!r} for {delivery_id}; "
                    f"exit={self.returncode} stderr={self.stderr()[-2000:]}"
                )
            await asyncio.sleep(0.03)

    async def wait_started(self, timeout: float = 15.0) -> None:
        """Wait until the process serves."""
        await self.wait_for("started", timeout=timeout)

    async def wait_exit(self, timeout: float = 15.0) -> int:
        """Wait for the process to end; its exit code."""
        deadline = time.monotonic() + timeout
        while self.returncode is None:
            if time.monotonic() > deadline:
                raise AssertionError("peer process did not exit")
            await asyncio.sleep(0.03)
        code = self.returncode
        assert code is not None
        return code

    def signal(self, sig: int = signal.SIGKILL) -> None:
        """Send a signal (SIGKILL by default) to the process."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)

    async def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM and wait (SIGKILL when it does not end in time)."""
        self.signal(signal.SIGTERM)
        try:
            return await self.wait_exit(timeout)
        except AssertionError:
            self.signal(signal.SIGKILL)
            return await self.wait_exit(5)

    def cleanup(self) -> None:
        """Kill the process if it still runs and remove its directory."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        shutil.rmtree(self.dir, ignore_errors=True)
