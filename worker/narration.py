"""Narration: the worker's structured log, one JSON object per line on stderr.

    narrate("model_load_progress", percent=42.0, done_bytes=..., total_bytes=...)
    -> {"ts": "2025-01-01T12:00:00.123456Z", "event": "model_load_progress",
        "correlation_id": "…", "percent": 42.0, ...}

The correlation id comes from a context variable, so every line written while a request is
being handled (in the event loop or in the inference thread, which runs in a copy of the
request's context) carries that request's id without being passed around. Lines written
outside a request carry `"correlation_id": null`.
"""
from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import sys
import threading
from datetime import datetime, timezone
from typing import Iterator, TextIO

correlation_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("correlation_id", default=None)

_lock = threading.Lock()     # one line at a time, even from several threads
_stream: TextIO | None = None  # None = sys.stderr at call time (so pytest's capsys sees it)


def set_stream(stream: TextIO | None) -> None:
    """Send narration somewhere other than stderr (None restores stderr)."""
    global _stream
    _stream = stream


def narrate(event: str, **fields) -> dict:
    """Write one JSON line: ts, event, correlation_id, then the given fields. Returns the record."""
    record = {"ts": datetime.now(timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z"),
              "event": event,
              "correlation_id": correlation_id.get()}
    record.update(fields)
    line = json.dumps(record, default=str, ensure_ascii=False)
    with _lock:
        stream = _stream or sys.stderr
        stream.write(line + "\n")
        stream.flush()
    return record


@contextlib.contextmanager
def correlation_scope(cid: str | None) -> Iterator[None]:
    """Run a block with the given correlation id (restored afterwards)."""
    token = correlation_id.set(cid)
    try:
        yield
    finally:
        correlation_id.reset(token)


class NarrationHandler(logging.Handler):
    """Route library logging (uvicorn, ...) into narration so stderr stays one JSON per line."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            narrate("log", level=record.levelname.lower(), logger=record.name, message=record.getMessage())
        except Exception:   # logging must never take the worker down
            self.handleError(record)


def route_logging(*logger_names: str, level: int = logging.INFO) -> None:
    """Replace the handlers of the named loggers with narration."""
    handler = NarrationHandler()
    for name in logger_names:
        logger = logging.getLogger(name)
        logger.handlers = [handler]
        logger.setLevel(level)
        logger.propagate = False
