"""Payload formats: the body each subscriber receives, rendered purely from stored inputs.

``subscribers[].format`` picks one of :data:`FORMATS`:

- ``envelope`` (default): today's body, built by :func:`relay.envelope.build_body`, unchanged;
- ``record``: the upstream record alone, verbatim;
- ``slack``, ``teams``, ``discord``: chat messages (see their modules for the limits honoured);
- ``template``: a Jinja2 template rendering JSON (``subscribers[].template``).

:func:`render` is deterministic -- the same record, view and envelope fields always give the same
bytes -- so a body can be rendered again on every attempt from what the store holds, and the
receiver still sees one byte-identical body (and one signature input) per delivery.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, NotRequired, TypedDict, get_args
from zoneinfo import ZoneInfo

from relay.core.callview import CallView
from relay.core.envelope import build_body
from relay.core.errors import RenderError, TemplateCompileError
from relay.core.formats.common import dumps
from relay.core.formats.discord import render_discord
from relay.core.formats.slack import render_slack
from relay.core.formats.slackfast import render_slack_record
from relay.core.formats.teams import render_teams
from relay.core.formats.template import (
    DEFAULT_MAX_BYTES,
    SAMPLE_RECORD,
    CompiledTemplate,
    compile_template,
    render_template,
)

FormatName = Literal["envelope", "record", "slack", "teams", "discord", "template"]
FORMATS: tuple[str, ...] = get_args(FormatName)
# The chat formats need only the call view (no envelope fields): what render() calls for them.
CHAT_RENDERERS: dict[str, Callable[[CallView], bytes]] = {
    "slack": render_slack,
    "teams": render_teams,
    "discord": render_discord,
}
# Shortcuts from the record itself, for the common case: the bytes the chat renderer gives for
# the record's call view, or None (then build the view and call the renderer).
FastRenderer = Callable[[dict[str, Any], str, ZoneInfo, str | None], bytes | None]
FAST_RENDERERS: dict[str, FastRenderer] = {"slack": render_slack_record}

__all__ = [
    "CHAT_RENDERERS",
    "DEFAULT_MAX_BYTES",
    "FAST_RENDERERS",
    "FORMATS",
    "SAMPLE_RECORD",
    "CompiledTemplate",
    "EnvelopeFields",
    "FastRenderer",
    "FormatName",
    "FormatSpec",
    "RenderError",
    "TemplateCompileError",
    "compile_format",
    "compile_template",
    "render",
]


class EnvelopeFields(TypedDict):
    """What the relay knows about a delivery beyond the record: the account, when the record
    was received (Unix seconds, as stored), and the delivery's stable ``webhook-id``."""

    account: str
    received_at: float
    webhook_id: NotRequired[str]


@dataclass(frozen=True, slots=True)
class FormatSpec:
    """A subscriber's validated format; ``template`` is set exactly when ``name`` is
    ``template``. Build it with :func:`compile_format`."""

    name: FormatName = "envelope"
    template: CompiledTemplate | None = None


ENVELOPE = FormatSpec()


def compile_format(
    name: str,
    template: str | None,
    path: str,
    *,
    tz: ZoneInfo | None = None,
    region: str | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> FormatSpec:
    """Validate a subscriber's ``format`` and ``template`` keys (``path`` is the subscriber's
    key, e.g. ``subscribers[1]``). Raises :class:`TemplateCompileError` with one line naming
    the key: an unknown format, a template without ``format: template`` or the reverse, or a
    template that does not compile or fails on the sample record."""
    if name not in FORMATS:
        choices = ", ".join(FORMATS)
        raise TemplateCompileError(f"{path}.format: unknown format {name!r} (one of {choices})")
    if name == "template":
        if not template:
            raise TemplateCompileError(f"{path}.template: required when format is template")
        compiled = compile_template(
            template, f"{path}.template", tz=tz, region=region, max_bytes=max_bytes
        )
        return FormatSpec("template", compiled)
    if template is not None:
        raise TemplateCompileError(f"{path}.template: only used with format: template")
    return FormatSpec(name)  # type: ignore[arg-type]  # checked against FORMATS above


def render(
    spec: FormatSpec,
    record: Mapping[str, Any],
    view: CallView,
    envelope_fields: EnvelopeFields,
) -> bytes:
    """The body for one delivery, as bytes. Deterministic; raises only :class:`RenderError`
    (from a ``template``), which is permanent for these inputs."""
    if spec.name == "envelope":
        return build_body(envelope_fields["account"], envelope_fields["received_at"], record)
    if spec.name == "record":
        return dumps(record if isinstance(record, dict) else dict(record))
    if (chat := CHAT_RENDERERS.get(spec.name)) is not None:
        return chat(view)
    if spec.template is None:
        raise RenderError("format template without a compiled template")
    return render_template(spec.template, record, view, envelope_fields)
