"""The daemon's commands: `run` (with its garbage-collector tuning) and `healthcheck`."""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import sys
import urllib.error
import urllib.request
from typing import Any

from cycles_events import logs
from cycles_events.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    PROG,
    emit,
    fail,
    load_settings,
)
from cycles_events.config import ConfigError

GC_THRESHOLD = 20_000  # allocations between young-generation collections (Python: 700)


def cmd_run(args: argparse.Namespace) -> int:
    """Run the dispatcher daemon until SIGTERM/SIGINT."""
    from cycles_events.app import App

    settings = load_settings()
    logs.configure(settings.log_level)

    async def main() -> int:
        app = App(settings)
        tune_gc()
        return await app.run()

    try:
        return asyncio.run(main())
    except ConfigError as exc:  # found only once running: the management port, say
        print(f"cycles-events: {exc}", file=sys.stderr)
        return EXIT_USAGE


def tune_gc() -> None:
    """Collect less often, and never scan what start-up built (the daemon's process only).

    A delivery allocates dozens of short-lived containers, nearly all freed by reference
    counting, yet at the default threshold (700) the young generation was collected every
    couple of dozen deliveries and the whole heap every few thousand: together about a tenth
    of the dispatcher's CPU.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_THRESHOLD, 10, 10)


WILDCARDS = ("", "0.0.0.0", "::", "*")


def _down_text(body: dict[str, Any]) -> str:
    """The components that are DOWN, each with what it says is wrong."""
    parts = []
    components = body.get("components")
    for name, comp in (components if isinstance(components, dict) else {}).items():
        if not isinstance(comp, dict) or comp.get("status") == "UP":
            continue
        found = comp.get("details")
        details: dict[str, Any] = found if isinstance(found, dict) else {}
        why = [str(details[k]) for k in ("error", "redis_error") if details.get(k)]
        if details.get("failing"):
            why.append("failing: " + ", ".join(map(str, details["failing"])))
        if details.get("draining"):
            why.append("draining")
        if details.get("consuming") is False:
            why.append("not consuming")
        parts.append(f"{name} DOWN" + (f" ({'; '.join(why)})" if why else ""))
    return ", ".join(parts)


def cmd_healthcheck(args: argparse.Namespace) -> int:
    """Exit 0 when the local daemon's readiness is UP; --json prints its answer."""
    port, host = args.port, "127.0.0.1"
    if port is None:
        settings = load_settings()
        port = settings.management_port
        if settings.management_address.strip() not in WILDCARDS:
            host = settings.management_address.strip()
    netloc = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    url = f"http://{netloc}/actuator/health/readiness"
    try:
        try:
            with urllib.request.urlopen(url, timeout=args.timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:  # a 503 DOWN still carries the components
            with exc:
                raw = exc.read()
        body = json.loads(raw or b"{}")
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        return fail(f"readiness check failed: {url}: {reason}")
    if not isinstance(body, dict):
        return fail(f"readiness check failed: {url} did not answer a JSON object")
    up = body.get("status") == "UP"
    if args.json:
        emit(args, body, "")
    elif not up:
        print(
            f"{PROG}: readiness is DOWN: {_down_text(body) or 'no component says why'}",
            file=sys.stderr,
        )
    return EXIT_OK if up else EXIT_FAILED
