"""Structured JSON-line logs: every line has a time, a level and an `action`."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any, TextIO

LOGGER_NAME = "cycles_events"


class JsonFormatter(logging.Formatter):
    """Formats records made by `log` as one JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        fields: dict[str, Any] = getattr(record, "fields", None) or {}
        line: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "action": fields.get("action", record.getMessage()),
        }
        line.update((k, v) for k, v in fields.items() if k != "action")
        if record.exc_info and record.exc_info[0] is not None:
            line["exception"] = record.exc_info[0].__name__
        return json.dumps(line, default=str)


def configure(level: str = "INFO", stream: TextIO | None = None) -> None:
    """Send the service's logs to stdout as JSON lines."""
    handler = logging.StreamHandler(stream or sys.stdout)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger(LOGGER_NAME)
    logger.handlers[:] = [handler]
    logger.setLevel(level)
    logger.propagate = False


_logger = logging.getLogger(LOGGER_NAME)


def log(level: int, action: str, **fields: Any) -> None:
    """Write one structured line; callers pass ids and reasons, never secrets or bodies."""
    if _logger.isEnabledFor(level):
        fields["action"] = action
        _logger.log(level, action, extra={"fields": fields})


def debugging() -> bool:
    """Whether DEBUG lines are written (lets a hot path skip building them)."""
    return _logger.isEnabledFor(logging.DEBUG)


def debug(action: str, **fields: Any) -> None:
    """Log at DEBUG."""
    log(logging.DEBUG, action, **fields)


def info(action: str, **fields: Any) -> None:
    """Log at INFO."""
    log(logging.INFO, action, **fields)


def warning(action: str, **fields: Any) -> None:
    """Log at WARNING."""
    log(logging.WARNING, action, **fields)


def error(action: str, **fields: Any) -> None:
    """Log at ERROR."""
    log(logging.ERROR, action, **fields)
