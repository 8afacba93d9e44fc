"""A seam for log lines on the hot path: code below ``relay.ops`` (the delivery path) offers a
line here, and the logging setup (``relay.ops.logs``) installs what writes it, when its
configuration allows writing it without a ``LogRecord``. Nothing installed, or the sink
declines: the caller logs as usual."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

Sink = Callable[[logging.Logger, int, str, dict[str, Any]], bool]

# ``extra={WRITE_NOW: True}``: a line below WARNING that must be in the log before the call
# returns, as warnings are, because what it records is rare and a reader after a crash needs
# it (which instance took an account's lease). A kill then cannot lose it with the last pause.
WRITE_NOW = "write_now"

_sink: Sink | None = None


def install(sink: Sink | None) -> None:
    """Set (or, with None, remove) the process's sink."""
    global _sink
    _sink = sink


def log_fast(logger: logging.Logger, level: int, message: str, fields: dict[str, Any]) -> bool:
    """Whether the installed sink wrote the line (then the caller must not log it again)."""
    sink = _sink
    return sink is not None and sink(logger, level, message, fields)
