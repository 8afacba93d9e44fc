"""The ``slack`` format: an incoming-webhook message with a ``text`` fallback and Block Kit.

Slack answers ``400 no_text`` to a body without ``text`` or ``blocks`` and ``invalid_payload``
/``invalid_blocks`` to blocks over their limits, so every piece is cut to the documented sizes:
a section's text at most 3,000 characters, at most 10 fields of 2,000 each, a context element's
text 3,000, at most 50 blocks (we send 3); ``text`` is kept to 3,000 too (Slack advises under
4,000 and truncates past 40,000). Sources: docs.slack.dev/reference/block-kit/blocks/
(section-block, context-block), api.slack.com/changelog/2016-05-17-changes-to-errors-for-
incoming-webhooks, docs.slack.dev/messaging/sending-messages-using-incoming-webhooks.

mrkdwn needs only ``&``, ``<`` and ``>`` escaped (as ``&amp;`` ``&lt;`` ``&gt;``); that also stops a
caller name from forming ``<!channel>`` or a link. Truncation counts the escaped text, and never
cuts through an entity.
"""

from __future__ import annotations

import re
from typing import Any

from relay.core.callview import CallView
from relay.core.formats.common import dumps, fit, summary

TEXT_LIMIT = 3000  # section text, context text, and what we allow the fallback
FIELD_LIMIT = 2000
MAX_FIELDS = 10
MAX_BLOCKS = 50
_ESCAPES = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}


def escape(text: str, limit: int = TEXT_LIMIT) -> str:
    """mrkdwn-escape ``text``, cut (with ``…``) so the escaped result fits ``limit``."""
    if len(text) <= limit and "&" not in text and "<" not in text and ">" not in text:
        return text  # the common case: nothing to escape, nothing to cut
    return fit(text, limit, _escape_char, _escape_all)


def _escape_char(char: str) -> str:
    return _ESCAPES.get(char, char)


def _escape_all(text: str) -> str:
    # "&" first, so the "&" of the other entities is not escaped again.
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def render_slack(view: CallView) -> bytes:
    """The Slack message for ``view`` as compact JSON bytes (deterministic)."""
    title, line, pairs, foot = summary(view)
    section = f"*{title}*{line.removeprefix(title)}"  # bold the kind, escape the rest
    texts = [f"*{label}*\n{value}" for label, value in pairs[:MAX_FIELDS]]
    # The common case, checked once for the whole message: nothing to escape, nothing to cut,
    # so every escape() below would return its input.
    whole = "".join((section, foot, *texts))
    if (
        "&" in whole
        or "<" in whole
        or ">" in whole
        or max(len(section), len(foot)) > TEXT_LIMIT
        or max(map(len, texts), default=0) > FIELD_LIMIT
    ):
        line, section, foot = escape(line), escape(section), escape(foot)
        texts = [escape(text, FIELD_LIMIT) for text in texts]
    elif (
        texts
        and _JSON_PLAIN.fullmatch(section + foot)
        and _JSON_PLAIN.fullmatch("".join(texts).replace("\n", ""))
    ):
        # Nothing JSON must escape either (the only control character is the fields' own
        # newline): the bytes orjson would write, without building the dicts.
        fields = ",".join(_FIELD % text.replace("\n", "\\n") for text in texts)
        try:
            return (_MESSAGE % (line, section, fields, foot)).encode()
        except UnicodeEncodeError:
            pass  # a lone surrogate: dumps() knows what to do with it
    blocks: list[dict[str, Any]] = [
        {"type": "section", "text": {"type": "mrkdwn", "text": section}},
    ]
    if texts:
        blocks[0]["fields"] = [{"type": "mrkdwn", "text": text} for text in texts]
    blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": foot}]})
    return dumps({"text": line, "blocks": blocks[:MAX_BLOCKS]})


# What dumps() writes for the message above when no text needs a JSON escape (checked by
# tests/unit/test_formats_fast.py against dumps on awkward inputs).
_JSON_PLAIN = re.compile(r'[^"\\\x00-\x1f]*')
_FIELD = '{"type":"mrkdwn","text":"%s"}'
_MESSAGE = (
    '{"text":"%s","blocks":[{"type":"section","text":{"type":"mrkdwn","text":"%s"},'
    '"fields":[%s]},{"type":"context","elements":[{"type":"mrkdwn","text":"%s"}]}]}'
)
