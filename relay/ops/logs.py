"""Logging setup: human-readable lines by default, one JSON object per line for production.

Call-related log lines pass stable ids (account, rid, subscriber, webhook_id, attempt…) through
``extra=``; both formats print them as structured fields, so ``grep rid=211159`` or a JSON query
tells the whole story of one call. A redacting filter is the last line of defence against a
secret reaching a log: the code never logs one on purpose, and this makes sure of it.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any, TextIO
from urllib.parse import quote

import orjson

from relay.core import fastlog
from relay.core.fastlog import WRITE_NOW
from relay.core.text import escape_controls, mask_credentials
from relay.ops.logwriter import LineWriter

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
    attrs = record.__dict__  # where ``extra=`` puts them; one dict lookup per name
    return {name: attrs[name] for name in FIELDS if name in attrs}


def _plain(value: object) -> bool:
    """A number or None: its text holds no control character and no credential URL, so it
    skips the per-part pass (the whole line is still redacted once at the end)."""
    return value is None or isinstance(value, int | float)


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


class Redactor:
    """Replaces every configured secret, in every form it can take in a log line, by
    ``[redacted]``, and masks URL credentials (see :func:`relay.core.text.mask_credentials`).

    A secret quoted inside an exception's text reaches the line as written, JSON-escaped (a
    ``"`` or ``\\`` in it becomes ``\\"`` / ``\\\\``), in ``repr()`` form (a traceback's
    ``ValueError('…')``) or percent-encoded (inside a URL); each of those forms is looked for.
    """

    def __init__(self, secrets: Iterable[str]) -> None:
        # Very short values would redact innocent text; real secrets are long.
        forms = {form for secret in secrets if len(secret) >= 6 for form in _forms(secret)}
        # Longest first, so a secret that contains another is replaced whole.
        ordered = sorted(forms, key=len, reverse=True)
        self._pattern = re.compile("|".join(map(re.escape, ordered))) if ordered else None

    def __call__(self, text: str) -> str:
        if self._pattern is not None:
            text = self._pattern.sub(_REDACTED, text)
        return mask_credentials(text)


def _forms(secret: str) -> set[str]:
    """The ways ``secret`` can be spelled inside a formatted log line."""
    # repr() escapes backslashes and non-printables; whether it escapes "'" depends on the
    # whole string it is part of, so both spellings.
    in_repr = repr(secret + "'\"")[1:-4]
    forms = {
        secret,
        in_repr,
        in_repr.replace("\\'", "'"),
        secret.encode("unicode_escape").decode("ascii"),
        quote(secret, safe=""),
    }
    # ... and each of those once more inside a JSON string (a JSON line quoting a repr).
    forms |= {json.dumps(form)[1:-1] for form in list(forms)}
    forms |= {json.dumps(form, ensure_ascii=False)[1:-1] for form in list(forms)}
    return {form for form in forms if form}


def _identity(text: str) -> str:
    return text


# Fields the relay makes itself from no configured text (a webhook-id is ``msg_`` and base32
# of a digest, relay.core.signing): nothing in them to redact or escape.
OURS = frozenset({"webhook_id"})


class _PartCache:
    """A part of a line (message, account or subscriber name) as redacted and escaped, kept:
    the lines of :func:`log_fast` repeat a handful of such texts thousands of times a second.
    """

    LIMIT = 4096  # distinct texts kept; then it starts over (names are few)

    def __init__(self, make: Callable[[str], str]) -> None:
        self._done: dict[str, str] = {}
        self._make = make

    def __call__(self, text: str) -> str:
        done = self._done.get(text)
        if done is None:
            if len(self._done) >= self.LIMIT:
                self._done.clear()
            done = self._done[text] = self._make(text)
        return done


class TextFormatter(logging.Formatter):
    """``2026-11-29 08:40:13.123 INFO  relay.delivery.claimer delivered account=main rid=7 …``

    Every part is redacted on its own, before it is joined into the line, and its control
    characters are escaped: one record is one line (plus its traceback), whatever an upstream
    or a receiver put in the text, and no ANSI escape reaches a terminal.
    """

    def __init__(self, redact: Callable[[str], str] = _identity) -> None:
        super().__init__()
        self._stamp = _SecondStamp("%Y-%m-%d %H:%M:%S", time.localtime)
        self._redact = redact
        self._parts = _PartCache(lambda text: escape_controls(redact(text)))

    def format(self, record: logging.LogRecord) -> str:
        redact = self._redact
        stamp = self._stamp(record.created)
        line = f"{stamp}.{int(record.msecs):03d} {record.levelname:<7} {record.name} "
        line += escape_controls(redact(record.getMessage()))
        for key, value in _fields(record).items():
            if _plain(value):
                line += f" {key}={value}"
            else:
                line += f" {key}={escape_controls(redact(str(value)))}"
        if record.exc_info:
            line += "\n" + _escape_block(redact(self.formatException(record.exc_info)))
        if record.stack_info:
            line += "\n" + _escape_block(redact(self.formatStack(record.stack_info)))
        return line

    def render(
        self, created: float, level: str, name: str, message: str, fields: dict[str, Any]
    ) -> str:
        """The line :meth:`format` makes of such a record, for :func:`log_fast`."""
        part = self._parts
        msecs = int((created - int(created)) * 1000)
        line = f"{self._stamp(created)}.{msecs:03d} {level:<7} {name} {part(message)}"
        for key in FIELDS:
            if key in fields:
                value = fields[key]
                if _plain(value) or key in OURS:
                    line += f" {key}={value}"
                else:
                    line += f" {key}={part(str(value))}"
        return line


def _escape_block(text: str) -> str:
    """A traceback keeps its lines; every other control character in it is escaped."""
    return "\n".join(escape_controls(line) for line in text.split("\n"))


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, then the structured fields.

    Values are redacted before they are encoded: after encoding, a secret containing ``"`` or
    ``\\`` would no longer be spelled as configured.
    """

    def __init__(self, redact: Callable[[str], str] = _identity) -> None:
        super().__init__()
        self._stamp = _SecondStamp("%Y-%m-%dT%H:%M:%S", time.gmtime)
        self._redact = redact
        self._parts = _PartCache(redact)

    def format(self, record: logging.LogRecord) -> str:
        redact = self._redact
        doc: dict[str, Any] = {
            "ts": f"{self._stamp(record.created)}.{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": redact(record.getMessage()),
        }
        for key, value in _fields(record).items():
            doc[key] = value if _plain(value) else redact(str(value))
        if record.exc_info:
            doc["exc"] = redact(self.formatException(record.exc_info))
        if record.stack_info:
            doc["stack"] = redact(self.formatStack(record.stack_info))
        return orjson.dumps(doc, default=str).decode()

    def render(
        self, created: float, level: str, name: str, message: str, fields: dict[str, Any]
    ) -> str:
        """The line :meth:`format` makes of such a record, for :func:`log_fast`."""
        part = self._parts
        msecs = int((created - int(created)) * 1000)
        doc: dict[str, Any] = {
            "ts": f"{self._stamp(created)}.{msecs:03d}Z",
            "level": level,
            "logger": name,
            "msg": part(message),
        }
        for key in FIELDS:
            if key in fields:
                value = fields[key]
                doc[key] = value if _plain(value) or key in OURS else part(str(value))
        return orjson.dumps(doc, default=str).decode()


class RedactingFilter(logging.Filter):
    """Replaces any configured secret in a record's message and fields (for any handler)."""

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        self.redact = Redactor(secrets)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = self.redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        for name in FIELDS:
            value = getattr(record, name, None)
            if isinstance(value, str):
                setattr(record, name, self.redact(value))
        return True


class _RedactingHandler(logging.StreamHandler[TextIO]):
    """Formats (each part redacted), then redacts the final text once more as a backstop.

    No :class:`RedactingFilter` on top: the formatters redact the message and every field
    already, and a filter would redact them all a second time on every line (at one INFO line
    per delivery, logging was half the relay's CPU). With a :class:`LineWriter` the finished
    line is handed to its thread instead of written here."""

    def __init__(
        self, stream: TextIO, redactor: RedactingFilter, writer: LineWriter | None = None
    ) -> None:
        super().__init__(stream)
        self._redactor = redactor
        self.writer = writer

    def format(self, record: logging.LogRecord) -> str:
        return self._redactor.redact(super().format(record))

    def emit(self, record: logging.LogRecord) -> None:
        if self.writer is None:
            super().emit(record)
            return
        try:
            urgent = record.levelno >= logging.WARNING or getattr(record, WRITE_NOW, False)
            self.writer.put(self.format(record), urgent=urgent)
        except RecursionError:
            raise
        except Exception:  # as StreamHandler.emit: reported with its traceback, and go on
            self.handleError(record)

    def flush(self) -> None:
        if self.writer is not None:
            self.writer.flush()
        super().flush()

    def close(self) -> None:
        # Run at exit by logging.shutdown (and when setup_logging replaces this handler):
        # every line still waiting is written before the process ends.
        if self.writer is not None:
            self.writer.close()
        super().close()


def setup_logging(
    level: str = "INFO",
    fmt: str = "text",
    secrets: Iterable[str] = (),
    stream: TextIO | None = None,
    *,
    threaded: bool = False,
) -> None:
    """Configure the root logger once for the process (replacing earlier handlers).

    ``threaded``: lines are written by a :class:`~relay.ops.logwriter.LineWriter` thread (what
    ``relay run`` does; see that module for what a kill can lose)."""
    redactor = RedactingFilter(secrets)
    out = stream or sys.stderr
    handler = _RedactingHandler(out, redactor, LineWriter(out) if threaded else None)
    formatter = JsonFormatter if fmt == "json" else TextFormatter
    handler.setFormatter(formatter(redactor.redact))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
        if isinstance(old, _RedactingHandler):
            old.close()  # its waiting lines first
    root.addHandler(handler)
    root.setLevel(level.upper())
    global _FAST
    _FAST = handler if threaded else None
    fastlog.install(log_fast if threaded else None)
    # No formatter here prints the caller's file and line, thread or process: do not collect
    # them for every record (the logging HOWTO's "Optimization" section; ~7 µs a line).
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    # aiohttp's access log is noise for a relay; keep its errors.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def flush_logs() -> None:
    """Write every line the root logger's handlers still hold (a log writer's queue too)."""
    for handler in logging.getLogger().handlers:
        handler.flush()


def log_fast(logger: logging.Logger, level: int, message: str, fields: dict[str, Any]) -> bool:
    """Hand one line straight to the log writer, without a ``LogRecord``, when nothing but this
    module's handler could see the record (no other handler, no filter on the way, the level
    enabled): the line is then the one the formatter would have made of the record (message
    and names redacted and escaped once per distinct text, numbers and :data:`OURS` as they
    are; no backstop pass over the whole line, as every part was redacted on its own).

    Returns False (the caller logs as usual) otherwise: under pytest's ``caplog``, with a
    handler an embedding added, without the writer thread, or with the level off. For the
    line per delivery: ``LogRecord``, ``extra`` and the handler chain were about half of the
    ~23 µs it cost.
    """
    handler = _FAST
    if handler is None or not logger.isEnabledFor(level) or level < handler.level:
        return False
    if logger.filters or logger.disabled:  # a logger's own filters see only its own calls
        return False
    current: logging.Logger | None = logger
    while current is not _ROOT:
        if current is None or current.handlers or not current.propagate:
            return False
        current = current.parent
    if _ROOT.handlers != [handler] or handler.filters or handler.writer is None:
        return False
    formatter = handler.formatter
    if not isinstance(formatter, TextFormatter | JsonFormatter):
        return False
    name = logging.getLevelName(level)
    line = formatter.render(time.time(), name, logger.name, message, fields)
    handler.writer.put(line, urgent=level >= logging.WARNING)
    return True


_ROOT = logging.getLogger()
_FAST: _RedactingHandler | None = None  # the handler of setup_logging(threaded=True)
