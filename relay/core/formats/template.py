"""The ``template`` format: a Jinja2 template that renders a JSON body (for CRMs and the like).

Rendering is sandboxed (:class:`jinja2.sandbox.ImmutableSandboxedEnvironment`: no attribute
tricks, no mutation of the record) and deterministic: Jinja's ``random`` filter and ``lipsum``
global are removed, so the same record renders the same bytes on every attempt. The output must
parse as JSON (checked with the stdlib, which keeps big integers exact) and is re-serialised
compactly; it must stay under ``max_bytes`` -- rendering stops as soon as it passes the cap, so a
runaway loop cannot eat memory.

Context: ``record`` (the upstream record), ``call`` (the call view as a dict), ``account``,
``received_at`` (ISO 8601 UTC), ``event_type`` and, when known, ``webhook_id``. A missing field
is undefined, not an error: ``{{ record.nope | tojson }}`` renders ``null``, and a bare
``{{ x }}`` that is None/true/false prints ``null``/``true``/``false``.

Filters (beyond Jinja's own): ``tojson``; ``e164`` (phone number to E.164 in the configured
region, as written if it cannot be parsed); ``duration_ms`` (seconds to milliseconds); ``mmss``
(seconds to ``MM:SS``); ``iso``, ``epoch_ms`` and ``utc`` (a time to ISO 8601 with offset, epoch
milliseconds, or ``YYYY-MM-DD HH:MM:SS`` in UTC). Times may be the record's
``YYYY-MM-DD HH:MM:SS`` (read in the upstream time zone), an ISO 8601 string, or epoch
milliseconds (a number, like ``call.start_ms``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from relay.core.callview import CallView, call_view, parse_number
from relay.core.envelope import iso_utc
from relay.core.errors import RenderError, TemplateCompileError
from relay.core.formats.common import dumps

DEFAULT_MAX_BYTES = 64 * 1024
EVENT_TYPE = "call.record"
_RECORD_TIME = "%Y-%m-%d %H:%M:%S"
_MESSAGE_LIMIT = 200

# The spec's sample record, used to test-render every template at check-config.
SAMPLE_RECORD: dict[str, Any] = {
    "rid": 211159,
    "call_timestamp": "2025-07-01 20:54:53",
    "cidname_outside": "B WHITTAKER",
    "cidext_inside": "3203",
    "direction": "INCOMING",
    "cidnumber_outside": "(111) 111-1111",
    "cidnumber_inside": "(111) 111-1111, x3203",
    "disposition": "ANSWERED",
    "duration": 192,
    "billsec": 180,
}


@dataclass(frozen=True, slots=True)
class CompiledTemplate:
    """A template ready to render; build it with :func:`compile_template`."""

    path: str
    max_bytes: int
    _template: jinja2.Template = field(repr=False, compare=False)


def compile_template(
    text: str,
    path: str,
    *,
    tz: ZoneInfo | None = None,
    region: str | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> CompiledTemplate:
    """Compile ``text`` and test-render it against :data:`SAMPLE_RECORD`.

    ``tz`` is the upstream time zone (default UTC), ``region`` the default phone region. Raises
    :class:`TemplateCompileError` with one line naming ``path``, e.g.
    ``subscribers[1].template: line 3: unexpected '}'`` or
    ``subscribers[1].template: output is not JSON: Expecting ',' delimiter (line 1 column 9)``.
    """
    zone = tz or ZoneInfo("UTC")
    env = _environment(zone, region)
    try:
        template = env.from_string(text)
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateCompileError(
            f"{path}: line {exc.lineno}: {_short(exc.message or 'syntax error')}"
        ) from None
    compiled = CompiledTemplate(path, max_bytes, template)
    view = call_view(SAMPLE_RECORD, "sample", zone, region)
    try:
        render_template(compiled, SAMPLE_RECORD, view, {"account": "sample", "received_at": 0.0})
    except RenderError as exc:
        raise TemplateCompileError(f"{path}: {exc} (rendering the sample record)") from None
    return compiled


def render_template(
    compiled: CompiledTemplate,
    record: Mapping[str, Any],
    view: CallView,
    envelope_fields: Mapping[str, Any],
) -> bytes:
    """Render one body. Raises :class:`RenderError` (never anything else) if the template
    fails, its output is not JSON, or it is larger than the cap."""
    context = {
        "record": record,
        "call": view.as_dict(),
        "account": envelope_fields.get("account", view.account),
        "received_at": _iso_utc(envelope_fields.get("received_at")),
        "event_type": EVENT_TYPE,
        "webhook_id": envelope_fields.get("webhook_id"),
    }
    chunks: list[str] = []
    size = 0
    try:
        for chunk in compiled._template.generate(context):
            size += len(chunk)  # characters: a lower bound of the bytes, cheap to keep
            if size > compiled.max_bytes:
                raise RenderError(f"output is larger than {compiled.max_bytes} bytes")
            chunks.append(chunk)
    except RenderError:
        raise
    except Exception as exc:
        # Any failure inside a user template (undefined call, ZeroDivisionError, a sandbox
        # SecurityError...) is this delivery's permanent error, re-raised as one type.
        raise RenderError(f"template failed: {type(exc).__name__}: {_short(str(exc))}") from exc
    text = "".join(chunks).strip()
    try:
        value = json.loads(text, parse_constant=_refuse_constant)
    except ValueError as exc:
        raise RenderError(f"output is not JSON: {_short(str(exc))}") from None
    body = dumps(value)
    if len(body) > compiled.max_bytes:
        raise RenderError(f"output is larger than {compiled.max_bytes} bytes")
    return body


# --- the environment and its filters --------------------------------------------------------


def _environment(tz: ZoneInfo, region: str | None) -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(
        autoescape=False,
        undefined=jinja2.ChainableUndefined,
        finalize=_finalize,
        keep_trailing_newline=False,
    )
    env.filters.pop("random", None)  # same inputs must give the same bytes
    env.globals.pop("lipsum", None)
    env.filters.update(
        tojson=_tojson,
        e164=lambda value: _e164(value, region),
        duration_ms=_duration_ms,
        mmss=_mmss,
        iso=lambda value: _iso(value, tz),
        epoch_ms=lambda value: _epoch_ms(value, tz),
        utc=lambda value: _utc(value, tz),
    )
    return env


def _finalize(value: Any) -> Any:
    # A bare {{ x }} is written in JSON's spelling for the values JSON and Python spell apart.
    if value is None or isinstance(value, jinja2.Undefined):
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    return value


def _tojson(value: Any) -> str:
    return dumps(_plain(value)).decode()


def _plain(value: Any) -> Any:
    if isinstance(value, jinja2.Undefined):
        return None
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _e164(value: Any, region: str | None) -> Any:
    if not isinstance(value, str):
        return None if isinstance(value, jinja2.Undefined) else value
    parsed = parse_number(value.strip(), region)
    return parsed[0] if parsed else value


def _seconds(value: Any) -> float | None:
    if isinstance(value, bool | jinja2.Undefined) or value is None:
        return None
    if isinstance(value, int | float):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            return None
        return number if math.isfinite(number) else None
    return None


def _duration_ms(value: Any) -> int | None:
    seconds = _seconds(value)
    return None if seconds is None else round(seconds * 1000)


def _mmss(value: Any) -> str | None:
    seconds = _seconds(value)
    if seconds is None or seconds < 0:
        return None
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes:02d}:{secs:02d}"


def _moment(value: Any, tz: ZoneInfo) -> datetime | None:
    if isinstance(value, bool) or value is None or isinstance(value, jinja2.Undefined):
        return None
    try:
        if isinstance(value, int | float):
            return datetime.fromtimestamp(value / 1000, tz=UTC)
        if isinstance(value, str):
            text = value.strip()
            if len(text) == 19 and text[10] == " ":
                return datetime.strptime(text, _RECORD_TIME).replace(tzinfo=tz)
            moment = datetime.fromisoformat(text)
            return moment if moment.tzinfo else moment.replace(tzinfo=tz)
    except (ValueError, OverflowError, OSError):
        return None
    return None


def _iso(value: Any, tz: ZoneInfo) -> str | None:
    moment = _moment(value, tz)
    return moment.astimezone(tz).isoformat() if moment else None


def _epoch_ms(value: Any, tz: ZoneInfo) -> int | None:
    moment = _moment(value, tz)
    return round(moment.timestamp() * 1000) if moment else None


def _utc(value: Any, tz: ZoneInfo) -> str | None:
    moment = _moment(value, tz)
    return moment.astimezone(UTC).strftime(_RECORD_TIME) if moment else None


def _iso_utc(ts: object) -> str | None:
    # The envelope's own spelling, so a template's received_at equals the envelope timestamp.
    if not isinstance(ts, int | float) or isinstance(ts, bool):
        return None
    return iso_utc(float(ts))


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _short(message: str) -> str:
    line = " ".join(message.split())
    return line if len(line) <= _MESSAGE_LIMIT else line[: _MESSAGE_LIMIT - 1] + "…"
