"""The peer's action log: JSON lines (never secrets or bodies), kept in memory too."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from typing import IO, Any


class PeerLog:
    """Records `{"action": ..., "delivery_id": ...}` lines to memory and a file or stdout."""

    def __init__(self, target: str | None = None, *, peer: str = "javapeer") -> None:
        """Log to memory and to a file path, "-" (stdout) or nothing else (None)."""
        self.peer = peer
        self.records: list[dict[str, Any]] = []
        self._stream: IO[str] | None = None
        self._owned = False
        if target == "-":
            self._stream = sys.stdout
        elif target:
            self._stream = open(target, "a", encoding="utf-8", buffering=1)  # noqa: SIM115
            self._owned = True
        self._changed = asyncio.Event()

    def emit(self, action: str, delivery_id: str | None = None, **fields: Any) -> dict[str, Any]:
        """Record one action."""
        record: dict[str, Any] = {"action": action, "delivery_id": delivery_id}
        record.update(fields)
        record["peer"] = self.peer
        record["ts_ms"] = int(time.time() * 1000)
        self.records.append(record)
        if self._stream is not None:
            self._stream.write(json.dumps(record, separators=(",", ":")) + "\n")
            self._stream.flush()
        self._changed.set()
        return record

    def find(self, action: str, delivery_id: str | None = None) -> list[dict[str, Any]]:
        """Records of one action (and delivery, when given)."""
        return [
            r
            for r in self.records
            if r["action"] == action and (delivery_id is None or r["delivery_id"] == delivery_id)
        ]

    async def wait_for(
        self, action: str, delivery_id: str | None = None, *, count: int = 1, timeout: float = 10.0
    ) -> list[dict[str, Any]]:
        """Wait until `count` records of an action (and delivery) exist."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.find(action, delivery_id)
            if len(found) >= count:
                return found
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(
                    f"peer logged {len(found)} {action!r} for {delivery_id}, wanted {count}"
                )
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), timeout=min(left, 0.5))

    def close(self) -> None:
        """Close the log file (stdout is left open)."""
        if self._stream is not None:
            self._stream.flush()
            if self._owned:
                self._stream.close()
            self._stream = None
