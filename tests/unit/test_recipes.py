"""Every YAML recipe in docs/RECIPES.md compiles, renders against sample calls, and (for the
chat services) is accepted by the matching contract receiver."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp
import orjson
import pytest
import yaml

from relay.core.callview import call_view
from relay.core.filters import compile_filter
from relay.core.formats import EnvelopeFields, compile_format, render
from relay.core.formats.template import SAMPLE_RECORD
from relay.sim.chat_receivers import DiscordLike, SlackLike, TeamsLike

DOC = Path(__file__).resolve().parents[2] / "docs" / "RECIPES.md"
TZ = ZoneInfo("America/New_York")
REGION = "US"
ENV: EnvelopeFields = {"account": "acme", "received_at": 1751417700.5, "webhook_id": "msg_x"}

SAMPLES: list[dict[str, Any]] = [
    # The spec's sample record, as a missed call to the Sales queue.
    {**SAMPLE_RECORD, "disposition": "NO ANSWER", "duration": 25, "billsec": 0, "queue": "Sales"},
    {
        "rid": 211160,
        "call_timestamp": "2025-07-01 21:02:10",
        "cidname_outside": "José & <Ñúñez> 😀 @everyone",
        "cidext_inside": "3204",
        "direction": "OUTGOING",
        "cidnumber_outside": "+44 20 7946 0958",
        "cidnumber_inside": "(212) 555-0100, x3204",
        "disposition": "ANSWERED",
        "duration": 400,
        "billsec": 380,
        "queue": "",
    },
    {
        "rid": 211161,
        "call_timestamp": "2025-07-01 21:05:00",
        "cidname_outside": "",
        "cidext_inside": "3205",
        "direction": "INCOMING",
        "cidnumber_outside": "anonymous",
        "cidnumber_inside": None,
        "disposition": "VOICEMAIL",
        "duration": None,
        "queue": "Support",
    },
    {"rid": 211162, "direction": "INTERNAL", "cidnumber_outside": "3203", "cidext_inside": "3204"},
    {},
]


def recipes() -> dict[str, dict[str, Any]]:
    blocks = re.findall(r"```yaml\n(.*?)```", DOC.read_text(encoding="utf-8"), re.DOTALL)
    found: dict[str, dict[str, Any]] = {}
    for block in blocks:
        for subscriber in yaml.safe_load(block)["subscribers"]:
            found[subscriber["name"]] = subscriber
    return found


RECIPES = recipes()


def test_the_doc_has_every_recipe_the_issue_asks_for() -> None:
    formats = {name: r.get("format", "envelope") for name, r in RECIPES.items()}
    assert formats == {
        "slack-missed": "slack",
        "teams-sales": "teams",
        "discord-calls": "discord",
        "zapier": "record",
        "n8n": "envelope",
        "hubspot-calls": "template",
    }
    assert isinstance(RECIPES["zapier"]["secret"], list)
    assert "X-Relay-Auth" in RECIPES["n8n"]["headers"]


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def rendered(name: str) -> list[tuple[dict[str, Any], bytes]]:
    recipe = RECIPES[name]
    path = f"subscribers[{name}]"
    flt = compile_filter(recipe.get("filter"), f"{path}.filter")
    spec = compile_format(
        recipe.get("format", "envelope"), recipe.get("template"), path, tz=TZ, region=REGION
    )
    out = []
    for record in SAMPLES:
        view = call_view(record, "acme", TZ, REGION)
        if flt.matches(record, view.as_dict()):
            out.append((record, render(spec, record, view, ENV)))
    return out


@pytest.mark.parametrize(
    ("name", "receiver_type", "passed"),
    [
        ("slack-missed", SlackLike, [211159, 211161]),
        ("teams-sales", TeamsLike, [211159, 211161]),
        ("discord-calls", DiscordLike, [211159, 211160, 211161]),
    ],
)
async def test_chat_recipes_are_accepted(
    http: aiohttp.ClientSession, name: str, receiver_type: type[Any], passed: list[int]
) -> None:
    bodies = rendered(name)
    assert [r.get("rid") for r, _ in bodies] == passed
    receiver = receiver_type(burst=100) if receiver_type is not TeamsLike else receiver_type()
    await receiver.start()
    try:
        for _, body in bodies:
            headers = {"Content-Type": "application/json"}
            async with http.post(receiver.url(name), data=body, headers=headers) as resp:
                assert 200 <= resp.status < 300, (resp.status, await resp.text())
        assert len(receiver.accepted) == len(bodies)
    finally:
        await receiver.stop()


def test_zapier_and_n8n_bodies() -> None:
    zapier = rendered("zapier")
    assert [orjson.loads(body) for _, body in zapier] == SAMPLES
    n8n = rendered("n8n")
    assert orjson.loads(n8n[0][1])["data"] == SAMPLES[0]
    assert orjson.loads(n8n[0][1])["type"] == "call.record"


def test_hubspot_body() -> None:
    bodies = {
        r.get("rid"): orjson.loads(body)["properties"] for r, body in rendered("hubspot-calls")
    }
    assert set(bodies) == {211159, 211160, 211161, None}  # internal calls filtered out
    assert bodies[211159] == {
        "hs_timestamp": 1751417693000,
        "hs_call_title": "Missed call with B WHITTAKER",
        "hs_call_body": "WebFones call 211159, queue Sales",
        "hs_call_direction": "INBOUND",
        "hs_call_duration": 0,
        "hs_call_from_number": "+11111111111",
        "hs_call_to_number": "+11111111111",
        "hs_call_status": "NO_ANSWER",
    }
    out = bodies[211160]
    assert out["hs_call_direction"] == "OUTBOUND" and out["hs_call_status"] == "COMPLETED"
    assert out["hs_call_duration"] == 380000 and out["hs_call_to_number"] == "+442079460958"
    assert out["hs_call_from_number"] == "+12125550100"
    assert bodies[211161]["hs_call_from_number"] == "anonymous"
    assert bodies[None]["hs_timestamp"] is None  # an empty record still renders JSON
