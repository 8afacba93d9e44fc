"""The ``discord`` format: an execute-webhook body with ``content`` and one embed.

Discord's documented limits: ``content`` 2,000 characters; per embed a title of 256, a
description of 4,096, at most 25 fields with names of 256 and values of 1,024 (never empty), a
footer of 2,048; and 6,000 characters across all embeds of a message. Sources:
docs.discord.com/developers/resources/message (embed limits),
docs.discord.com/developers/resources/webhook (execute webhook, allowed_mentions).

``allowed_mentions: {"parse": []}`` makes sure a caller named ``@everyone`` pings nobody, and
Markdown characters in caller names are backslash-escaped so they show as written.
"""

from __future__ import annotations

import re
from typing import Any

from relay.core.callview import CallView
from relay.core.formats.common import clean, dumps, fit, summary

CONTENT_LIMIT = 2000
TITLE_LIMIT = 256
DESCRIPTION_LIMIT = 4096
FIELD_NAME_LIMIT = 256
FIELD_VALUE_LIMIT = 1024
FOOTER_LIMIT = 2048
MAX_FIELDS = 25
EMBED_TOTAL_LIMIT = 6000
COLOR_MISSED = 0xE01E5A
COLOR_ANSWERED = 0x2EB67D
COLOR_OTHER = 0x8D8D8D
_MARKDOWN = frozenset("\\*_~`|>[]#")
_MARKDOWN_RE = re.compile("[" + re.escape("".join(sorted(_MARKDOWN))) + "]")


def escape(text: str, limit: int) -> str:
    """One line of ``text`` with Markdown escaped, cut to ``limit`` characters."""
    text = clean(text)
    if len(text) <= limit and not _MARKDOWN_RE.search(text):
        return text  # the common case: nothing to escape, nothing to cut
    return fit(text, limit, _escape_char, _escape_all)


def _escape_char(char: str) -> str:
    return "\\" + char if char in _MARKDOWN else char


def _escape_all(text: str) -> str:
    return _MARKDOWN_RE.sub(lambda m: "\\" + m[0], text)


def render_discord(view: CallView) -> bytes:
    """The Discord webhook body for ``view`` as compact JSON bytes (deterministic)."""
    title, line, pairs, foot = summary(view)
    color = COLOR_MISSED if view.missed else COLOR_ANSWERED if view.answered else COLOR_OTHER
    embed: dict[str, Any] = {
        "title": escape(title, TITLE_LIMIT),
        "description": escape(line, DESCRIPTION_LIMIT),
        "color": color,
        "fields": [
            {
                "name": escape(label, FIELD_NAME_LIMIT),
                "value": escape(value, FIELD_VALUE_LIMIT) or "-",
                "inline": True,
            }
            for label, value in pairs[:MAX_FIELDS]
        ],
        "footer": {"text": escape(foot, FOOTER_LIMIT) or "-"},
    }
    if view.start:
        embed["timestamp"] = view.start
    _fit_total(embed, line)
    body = {
        "content": escape(line, CONTENT_LIMIT),
        "allowed_mentions": {"parse": []},
        "embeds": [embed],
    }
    return dumps(body)


def embed_length(embed: dict[str, Any]) -> int:
    """Characters Discord counts towards the 6,000 total: title, description, field names
    and values, footer text and author name."""
    total = len(embed.get("title", "")) + len(embed.get("description", ""))
    total += sum(len(f["name"]) + len(f["value"]) for f in embed.get("fields", []))
    total += len(embed.get("footer", {}).get("text", ""))
    return total + len(embed.get("author", {}).get("name", ""))


def _fit_total(embed: dict[str, Any], line: str) -> None:
    # The description repeats the headline, so it is the piece that gives way first; it is
    # re-escaped from the source rather than cut, so no escape is split.
    while True:
        others = embed_length(embed) - len(embed["description"])
        room = min(DESCRIPTION_LIMIT, EMBED_TOTAL_LIMIT - others)
        if room >= 1 or not embed["fields"]:
            break
        embed["fields"].pop()
    embed["description"] = escape(line, max(room, 1))
