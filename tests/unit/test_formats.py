"""Chat formats and the record/envelope formats: shape, escaping, limits, determinism."""

from __future__ import annotations

import json
import re
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from relay.core.callview import call_view
from relay.core.envelope import build_body
from relay.core.formats import (
    FORMATS,
    EnvelopeFields,
    FormatSpec,
    TemplateCompileError,
    compile_format,
    render,
)
from relay.core.formats.common import clean, headline, mmss, truncate
from relay.core.formats.discord import embed_length
from relay.core.formats.template import SAMPLE_RECORD

NY = ZoneInfo("America/New_York")
ENV: EnvelopeFields = {"account": "acme", "received_at": 1751417700.5}
# The spec's sample record, as a missed call.
BASE: dict[str, Any] = {**SAMPLE_RECORD, "disposition": "NO ANSWER", "duration": 25, "billsec": 0}
LONG = "Ω" * 9000


def rec(**changes: Any) -> dict[str, Any]:
    return {**BASE, **changes}


AWKWARD = {
    "spec": BASE,
    "empty_name": rec(cidname_outside=""),
    "null_everything": {k: None for k in BASE},
    "empty_record": {},
    "emoji": rec(cidname_outside="😀 Émilie 王"),
    "markup": rec(cidname_outside="A & B <!channel> <@U123> *bold* _it_ `x` > q"),
    "mentions": rec(cidname_outside="@everyone @here"),
    "newlines": rec(cidname_outside="line1\nline2\r\n# heading\u2028x"),
    "long_name": rec(cidname_outside=LONG, cidnumber_outside=LONG, disposition=LONG),
    "long_escapes": rec(cidname_outside="&" * 5000),
    "answered_out": rec(direction="OUTGOING", disposition="ANSWERED", billsec=192),
    "internal": rec(direction="INTERNAL", cidnumber_outside="3204", cidname_outside="Front Desk"),
    "voicemail": rec(disposition="VOICEMAIL", duration=40),
    "unknown_dir": rec(direction="WEIRD"),
}


def view_of(record: dict[str, Any]) -> Any:
    return call_view(record, "acme", NY, "US")


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        (BASE, "Missed call from B WHITTAKER (111) 111-1111 → x3203, 20:54"),
        (
            rec(direction="OUTGOING", disposition="ANSWERED", billsec=192),
            "Outgoing call from x3203 → B WHITTAKER (111) 111-1111, 20:54 (answered, 3:12)",
        ),
        (
            rec(disposition="ANSWERED", billsec=3725),
            "Incoming call from B WHITTAKER (111) 111-1111 → x3203, 20:54 (answered, 1:02:05)",
        ),
        (
            rec(disposition="VOICEMAIL"),
            "Missed call from B WHITTAKER (111) 111-1111 → x3203, 20:54 (voicemail)",
        ),
        (
            rec(
                direction="INTERNAL",
                disposition="ANSWERED",
                billsec=0,
                duration=0,
                cidnumber_outside="3204",
                cidname_outside="",
            ),
            "Internal call from x3204 → x3203, 20:54 (answered)",
        ),
        (
            rec(cidname_outside="", cidnumber_outside=None),
            "Missed call from unknown → x3203, 20:54",
        ),
        ({}, "Call from unknown → unknown"),
        (rec(cidname_outside="a\nb"), "Missed call from a b (111) 111-1111 → x3203, 20:54"),
    ],
)
def test_headline(record: dict[str, Any], expected: str) -> None:
    assert headline(view_of(record)) == expected


@pytest.mark.parametrize(
    ("text", "limit", "expected"),
    [("abc", 3, "abc"), ("abcd", 3, "ab…"), ("", 1, ""), ("ab", 1, "…")],
)
def test_truncate(text: str, limit: int, expected: str) -> None:
    assert truncate(text, limit) == expected


def test_small_helpers() -> None:
    assert mmss(None) is None and mmss(0) == "0:00" and mmss(61) == "1:01"
    assert clean("\x00a\tb\n") == "a b"


@pytest.mark.parametrize("case", sorted(AWKWARD))
@pytest.mark.parametrize("name", ["slack", "teams", "discord", "record"])
def test_every_format_renders_awkward_records_deterministically(case: str, name: str) -> None:
    record = AWKWARD[case]
    spec = compile_format(name, None, "subscribers[0]")
    body = render(spec, record, view_of(record), ENV)
    assert body == render(spec, dict(record), view_of(dict(record)), ENV)  # same bytes
    parsed = json.loads(body)
    if name == "slack":
        check_slack(parsed)
    elif name == "teams":
        check_teams(parsed)
    elif name == "discord":
        check_discord(parsed)
    else:
        assert parsed == record


def check_slack(msg: dict[str, Any]) -> None:
    assert 0 < len(msg["text"]) <= 3000 and len(msg["blocks"]) <= 50
    for block in msg["blocks"]:
        texts = [block["text"]["text"]] if "text" in block else []
        texts += [e["text"] for e in block.get("elements", [])]
        assert all(len(t) <= 3000 for t in texts)
        assert len(block.get("fields", [])) <= 10
        assert all(len(f["text"]) <= 2000 for f in block.get("fields", []))
        for t in [*texts, *(f["text"] for f in block.get("fields", []))]:
            raw = t.replace("&amp;", "").replace("&lt;", "").replace("&gt;", "")
            assert "<" not in raw and ">" not in raw and "&" not in raw


def check_teams(msg: dict[str, Any]) -> None:
    assert msg["type"] == "message" and len(msg["attachments"]) == 1
    att = msg["attachments"][0]
    assert att["contentType"] == "application/vnd.microsoft.card.adaptive"
    card = att["content"]
    assert card["type"] == "AdaptiveCard" and card["version"] == "1.4"
    assert card["body"] and card["body"][0]["type"] == "TextBlock" and card["body"][0]["text"]
    assert len(json.dumps(msg).encode()) < 28 * 1024


def check_discord(msg: dict[str, Any]) -> None:
    assert 0 < len(msg["content"]) <= 2000 and msg["allowed_mentions"] == {"parse": []}
    (embed,) = msg["embeds"]
    assert len(embed["title"]) <= 256 and len(embed["description"]) <= 4096
    assert len(embed["fields"]) <= 25 and len(embed["footer"]["text"]) <= 2048
    assert all(0 < len(f["name"]) <= 256 and 0 < len(f["value"]) <= 1024 for f in embed["fields"])
    assert embed_length(embed) <= 6000


def test_slack_escapes_and_keeps_entities_whole() -> None:
    msg = json.loads(
        render(FormatSpec("slack"), AWKWARD["markup"], view_of(AWKWARD["markup"]), ENV)
    )
    assert "A &amp; B &lt;!channel&gt; &lt;@U123&gt;" in msg["text"]
    long = json.loads(
        render(FormatSpec("slack"), AWKWARD["long_escapes"], view_of(AWKWARD["long_escapes"]), ENV)
    )
    text = long["blocks"][0]["text"]["text"]
    assert text.endswith("&amp;…") and len(text) <= 3000


def test_discord_escapes_markdown_and_mentions() -> None:
    record = AWKWARD["markup"]
    msg = json.loads(render(FormatSpec("discord"), record, view_of(record), ENV))
    assert r"\*bold\* \_it\_ \`x\` \> q" in msg["content"]
    assert "\n" not in msg["content"]


def test_discord_long_fields_fit_total() -> None:
    record = AWKWARD["long_name"]
    embed = json.loads(render(FormatSpec("discord"), record, view_of(record), ENV))["embeds"][0]
    assert embed_length(embed) <= 6000 and embed["description"].endswith("…")


def test_teams_missed_is_highlighted() -> None:
    card = json.loads(render(FormatSpec("teams"), BASE, view_of(BASE), ENV))
    body = card["attachments"][0]["content"]["body"]
    assert body[0]["color"] == "Attention"
    assert {"title": "From", "value": "B WHITTAKER +11111111111"} in body[1]["facts"]


def test_envelope_is_the_existing_body_byte_for_byte() -> None:
    body = render(FormatSpec("envelope"), BASE, view_of(BASE), ENV)
    assert body == build_body("acme", 1751417700.5, BASE)


def test_record_keeps_big_integers_and_order() -> None:
    record = {"z": 1, "a": 2**70, "m": "é"}
    assert render(FormatSpec("record"), record, view_of(record), ENV) == (
        '{"z":1,"a":1180591620717411303424,"m":"é"}'.encode()
    )


@pytest.mark.parametrize(
    ("name", "template", "message"),
    [
        ("xml", None, "subscribers[3].format: unknown format 'xml' (one of "),
        ("template", None, "subscribers[3].template: required when format is template"),
        ("slack", "{}", "subscribers[3].template: only used with format: template"),
    ],
)
def test_compile_format_errors(name: str, template: str | None, message: str) -> None:
    with pytest.raises(TemplateCompileError, match=re.escape(message)):
        compile_format(name, template, "subscribers[3]")


def test_formats_list() -> None:
    assert FORMATS == ("envelope", "record", "slack", "teams", "discord", "template")
