"""The contract receivers over real HTTP on 127.0.0.1: what they accept, what they refuse, and
their rate limits, with a clock the test moves instead of sleeping."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp
import orjson
import pytest

from relay.core.callview import call_view
from relay.core.formats import FormatSpec, render
from relay.sim.chat_receivers import DiscordLike, SlackLike, TeamsLike
from tests.helpers import GENEROUS

RECORD = {
    "rid": 1,
    "call_timestamp": "2025-07-01 20:54:53",
    "cidname_outside": "B & <W>",
    "cidext_inside": "3203",
    "direction": "INCOMING",
    "cidnumber_outside": "(111) 111-1111",
    "cidnumber_inside": "(111) 111-1111, x3203",
    "disposition": "NO ANSWER",
}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def post(
    http: aiohttp.ClientSession, url: str, body: Any, raw: bytes | None = None
) -> tuple[int, str, dict[str, str]]:
    data = raw if raw is not None else orjson.dumps(body)
    headers = {"Content-Type": "application/json"}
    async with http.post(url, data=data, headers=headers) as resp:
        return resp.status, await resp.text(), dict(resp.headers)


def rendered(name: str) -> bytes:
    view = call_view(RECORD, "acme", ZoneInfo("UTC"), "US")
    return render(FormatSpec(name), RECORD, view, {"account": "acme", "received_at": 0.0})  # type: ignore[arg-type]


SLACK_CASES: list[tuple[Any, int, str]] = [
    ({"text": "hi"}, 200, "ok"),
    ({"blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": "x"}}]}, 200, "ok"),
    ({}, 400, "no_text"),
    ({"text": ""}, 400, "no_text"),
    ({"username": "bot"}, 400, "no_text"),
    ([1, 2], 400, "invalid_payload"),
    ({"text": 5}, 400, "invalid_payload"),
    ({"text": "x", "blocks": "nope"}, 400, "invalid_payload"),
    ({"blocks": [{"type": "section"}]}, 400, "invalid_payload"),
    ({"blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": "x" * 3001}}]}, 400,
     "invalid_payload"),
    ({"blocks": [{"type": "header", "text": {"type": "plain_text", "text": "x" * 151}}]}, 400,
     "invalid_payload"),
    ({"blocks": [{"type": "divider"}] * 51}, 400, "invalid_payload"),
    ({"blocks": [{"type": "section", "fields": [{"type": "mrkdwn", "text": "a"}] * 11}]}, 400,
     "invalid_payload"),
    ({"blocks": [{"type": "carousel"}]}, 400, "invalid_payload"),
]  # fmt: skip


@pytest.mark.parametrize(("body", "status", "text"), SLACK_CASES)
async def test_slack_contract(
    http: aiohttp.ClientSession, body: Any, status: int, text: str
) -> None:
    slack = SlackLike()
    await slack.start()
    try:
        assert (await post(http, slack.url(), body))[:2] == (status, text)
        assert len(slack.accepted) == (1 if status == 200 else 0)
    finally:
        await slack.stop()


async def test_slack_rejects_non_json_and_accepts_our_format(http: aiohttp.ClientSession) -> None:
    slack = SlackLike()
    await slack.start()
    try:
        assert (await post(http, slack.url("a"), None, raw=b"text=hello"))[:2] == (
            400,
            "invalid_payload",
        )
        assert (await post(http, slack.url("b"), None, raw=rendered("slack")))[:2] == (200, "ok")
        assert slack.bodies("b")[0]["text"].startswith("Missed call from B &amp; &lt;W&gt;")
        assert slack.rejected == [("a", 400, "invalid_payload")]
    finally:
        await slack.stop()


async def test_slack_paces_each_hook_one_per_second(http: aiohttp.ClientSession) -> None:
    clock = Clock()
    slack = SlackLike(clock=clock)
    await slack.start()
    try:
        assert (await post(http, slack.url("a"), {"text": "1"}))[0] == 200
        status, text, headers = await post(http, slack.url("a"), {"text": "2"})
        assert (status, text, headers["Retry-After"]) == (429, "rate_limited", "1")
        assert (await post(http, slack.url("b"), {"text": "other hook"}))[0] == 200
        clock.now += 0.5
        assert (await post(http, slack.url("a"), {"text": "3"}))[0] == 429
        clock.now += 0.5
        assert (await post(http, slack.url("a"), {"text": "4"}))[0] == 200
        assert [b["text"] for b in slack.bodies("a")] == ["1", "4"]
    finally:
        await slack.stop()


async def test_slack_burst_allowance(http: aiohttp.ClientSession) -> None:
    clock = Clock()
    slack = SlackLike(burst=3, clock=clock)
    await slack.start()
    try:
        statuses = [(await post(http, slack.url(), {"text": str(i)}))[0] for i in range(4)]
        assert statuses == [200, 200, 200, 429]
        await slack.wait_accepted(3, timeout=GENEROUS)
    finally:
        await slack.stop()


def card(**changes: Any) -> dict[str, Any]:
    attachment: dict[str, Any] = {
        "contentType": "application/vnd.microsoft.card.adaptive",
        "content": {"type": "AdaptiveCard", "version": "1.4", "body": [{"type": "TextBlock"}]},
    }
    attachment.update(changes)
    return {"type": "message", "attachments": [attachment]}


TEAMS_CASES: list[tuple[Any, int]] = [
    (card(), 202),
    ({"text": "hello"}, 400),  # a plain message: Workflows want a card
    ({"@type": "MessageCard", "text": "legacy"}, 400),
    ({"type": "message", "attachments": []}, 400),
    (card(contentType="application/json"), 400),
    (card(content={"type": "AdaptiveCard", "body": []}), 400),  # no version
    (card(content={"type": "HeroCard", "version": "1.4", "body": []}), 400),
    (card(content={"type": "AdaptiveCard", "version": "1.4", "body": [{"text": "x"}]}), 400),
    ({"type": "message", "attachments": ["x"]}, 400),
    ("just a string", 400),
]


@pytest.mark.parametrize(("body", "status"), TEAMS_CASES)
async def test_teams_contract(http: aiohttp.ClientSession, body: Any, status: int) -> None:
    teams = TeamsLike()
    await teams.start()
    try:
        assert (await post(http, teams.url(), body))[0] == status
    finally:
        await teams.stop()


async def test_teams_accepts_our_format_and_refuses_oversize(http: aiohttp.ClientSession) -> None:
    teams = TeamsLike()
    await teams.start()
    try:
        assert (await post(http, teams.url(), None, raw=rendered("teams")))[0] == 202
        big = card(content={"type": "AdaptiveCard", "version": "1.4",
                            "body": [{"type": "TextBlock", "text": "x" * 30_000}]})  # fmt: skip
        assert (await post(http, teams.url(), big))[0] == 413
        assert (await post(http, teams.url(), None, raw=b"{nope"))[0] == 400
        assert len(teams.accepted) == 1
    finally:
        await teams.stop()


def embed(**changes: Any) -> dict[str, Any]:
    return {"embeds": [{"title": "t", "description": "d", **changes}]}


DISCORD_CASES: list[tuple[Any, int, int | None]] = [
    ({"content": "hi"}, 204, None),
    (embed(), 204, None),
    ({}, 400, 50006),
    ({"content": ""}, 400, 50006),
    ({"content": "x" * 2001}, 400, 50035),
    (embed(title="x" * 257), 400, 50035),
    (embed(description="x" * 4097), 400, 50035),
    (embed(fields=[{"name": "n", "value": "v"}] * 26), 400, 50035),
    (embed(fields=[{"name": "n", "value": ""}]), 400, 50035),
    (embed(fields=[{"name": "x" * 257, "value": "v"}]), 400, 50035),
    (embed(footer={"text": "x" * 2049}), 400, 50035),
    (embed(description="x" * 4000, fields=[{"name": "n", "value": "x" * 1024}] * 2), 400, 50035),
    ({"content": "x", "embeds": [{}] * 11}, 400, 50035),
]


@pytest.mark.parametrize(("body", "status", "code"), DISCORD_CASES)
async def test_discord_contract(
    http: aiohttp.ClientSession, body: Any, status: int, code: int | None
) -> None:
    discord = DiscordLike()
    await discord.start()
    try:
        got, text, _ = await post(http, discord.url(), body)
        assert got == status
        if code is not None:
            assert orjson.loads(text)["code"] == code
    finally:
        await discord.stop()


async def test_discord_accepts_our_format_and_rate_limits(http: aiohttp.ClientSession) -> None:
    clock = Clock()
    discord = DiscordLike(clock=clock)
    await discord.start()
    try:
        body = rendered("discord")
        statuses = [(await post(http, discord.url(), None, raw=body))[0] for _ in range(5)]
        assert statuses == [204] * 5
        status, text, headers = await post(http, discord.url(), None, raw=body)
        assert status == 429 and headers["Retry-After"] == "1"
        limited = orjson.loads(text)
        assert limited["global"] is False and limited["retry_after"] == pytest.approx(0.4)
        clock.now += 0.4
        assert (await post(http, discord.url(), None, raw=body))[0] == 204
        assert discord.bodies()[0]["allowed_mentions"] == {"parse": []}
        assert len(discord.accepted) == 6
    finally:
        await discord.stop()
