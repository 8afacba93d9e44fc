"""Logging setup: human-readable lines by default, one JSON object per line for production.

Call-related log lines pass stable ids (account, rid, subscriber, webhook_id, attempt…) through
``extra=``; both formats print them as structured fields, so ``grep rid=211159`` or a JSON query
tells the whole story of one call. A redacting filter is the last line of defence against a
secret reaching a log: the code never logs one on purpose, and this makes sure of it.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any, TextIO

import orjson

# The structured fields we print, in this order, when a record carries them.
FIELDS = (
    "account",
    "rid",
    "subscriber",
    "webhook_id",
    "delivery_id",
    "attempt",
    "status",
    "latency_ms",
    "next_in",
    "error",
    "since",
    "count",
    "new",
)

_REDACTED = "[redacted]"


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return {name: getattr(record, name) for name in FIELDS if hasattr(record, name)}


class _SecondStamp:
    """strftime once per second, not once per line: a busy relay logs thousands a second."""

    def __init__(self, fmt: str, convert: Callable[[float], time.struct_time]) -> None:
        self._fmt, self._convert = fmt, convert
        self._second, self._text = -1, ""

    def __call__(self, created: float) -> str:
        second = int(created)
        if second != self._second:
            self._second, self._text = second, time.strftime(self._fmt, self._convert(created))
        return self._text


class TextFormatter(logging.Formatter):
    """``2026-11-29 08:40:13.123 INFO  relay.delivery.claimer delivered account=main rid=7 …``"""

    def __init__(self) -> None:
        super().__init__()
        self._stamp = _SecondStamp("%Y-%m-%d %H:%M:%S", time.localtime)

    def format(self, record: logging.LogRecord) -> str:
        stamp = self._stamp(record.created)
        line = f"{stamp}.{int(record.msecs):03d} {record.levelname:<7} {record.name} "
        line += record.getMessage()
        for key, value in _fields(record).items():
            line += f" {key}={value}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, then the structured fields."""

    def __init__(self) -> None:
        super().__init__()
        self._stamp = _SecondStamp("%Y-%m-%dT%H:%M:%S", time.gmtime)

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": f"{self._stamp(record.created)}.{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        doc.update(_fields(record))
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(doc, default=str).decode()


class RedactingFilter(logging.Filter):
    """Replaces any configured secret that would appear in a formatted line."""

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        # Very short values would redact innocent text; real secrets are long.
        self._secrets = sorted({s for s in secrets if len(s) >= 6}, key=len, reverse=True)

    def filter(self, record: logging.LogRecord) -> bool:
        if not self._secrets:
            return True
        message = record.getMessage()
        cleaned = self.redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        for name in FIELDS:
            value = getattr(record, name, None)
            if isinstance(value, str):
                setattr(record, name, self.redact(value))
        return True

    def redact(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, _REDACTED)
        return text


class _RedactingHandler(logging.StreamHandler[TextIO]):
    """Formats, then redacts the final text too (tracebacks can quote values)."""

    def __init__(self, stream: TextIO, redactor: RedactingFilter) -> None:
        super().__init__(stream)
        self._redactor = redactor
        self.addFilter(redactor)

    def format(self, record: logging.LogRecord) -> str:
        return self._redactor.redact(super().format(record))


def setup_logging(
    level: str = "INFO",
    fmt: str = "text",
    secrets: Iterable[str] = (),
    stream: TextIO | None = None,
) -> None:
    """Configure the root logger once for the process (replacing earlier handlers)."""
    handler = _RedactingHandler(stream or sys.stderr, RedactingFilter(secrets))
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # aiohttp's access log is noise for a relay; keep its errors.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
