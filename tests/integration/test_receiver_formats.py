"""End to end (issue 10): a running relay delivers in each subscriber's format to receivers that
enforce the real services' contracts, filters decide deliveries at ingest, a template body is
byte-identical across retries, and every key of a rotated list signs (checked with
``standardwebhooks`` for v1 and PyNaCl for v1a)."""

from __future__ import annotations

import base64
import re
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
import pytest
from nacl.signing import VerifyKey
from standardwebhooks.webhooks import Webhook

from relay.core.keys import generate_ed25519_pair
from relay.core.signing import webhook_id
from relay.runtime.stores import open_store
from relay.sim.chat_receivers import DiscordLike, SlackLike, TeamsLike, _ChatReceiver
from relay.sim.receiver import Reply
from tests.helpers import KEY_A, Sub, ago, make_settings, new_secret, running, sqlite_rows

# The retry schedule tests use: long enough that a receiver's 429s (Slack: 1 message/s) never
# exhaust it; Retry-After, not the schedule, decides when the next attempt goes.
PATIENT = {"retry": ["100ms"] * 12, "max_in_flight": 1}


@pytest.fixture
async def chat() -> AsyncIterator[Callable[..., Any]]:
    started: list[_ChatReceiver] = []

    async def make(kind: type[_ChatReceiver], **kwargs: Any) -> Any:
        rx = kind(**kwargs)
        await rx.start()
        started.append(rx)
        return rx

    try:
        yield make
    finally:
        for rx in started:
            await rx.stop()


AWKWARD = [
    {"cidname_outside": "B WHITTAKER", "direction": "INCOMING", "disposition": "NO ANSWER"},
    {"cidname_outside": "Zoë & <Partners> ☎", "direction": "INCOMING", "disposition": "ANSWERED"},
    {"cidname_outside": "", "direction": "OUTGOING", "disposition": "ANSWERED"},
    {"cidname_outside": "x" * 5000, "direction": "INTERNAL", "cidnumber_outside": "3204"},
]


async def test_chat_formats_are_accepted_by_slack_teams_and_discord(sim, chat, tmp_path) -> None:
    slack, teams, discord = await chat(SlackLike), await chat(TeamsLike), await chat(DiscordLike)
    made = [sim.add_record(KEY_A, started_at=ago(30), **fields) for fields in AWKWARD]
    subs = [
        Sub("slack", slack.url("calls"), new_secret(), {"format": "slack", **PATIENT}),
        Sub("teams", teams.url("calls"), new_secret(), {"format": "teams", **PATIENT}),
        Sub("discord", discord.url("calls"), new_secret(), {"format": "discord", **PATIENT}),
    ]
    async with running(make_settings(tmp_path, sim.url, subs)):
        for rx in (slack, teams, discord):
            await rx.wait_accepted(len(made))
    # Nothing refused as malformed; Slack's only refusals are its 1/s rate limit.
    assert {status for _, status, _ in slack.rejected} <= {429}
    assert teams.rejected == [] and discord.rejected == []
    for name, rx in (("slack", slack), ("teams", teams), ("discord", discord)):
        ids = [a.headers["webhook-id"] for a in rx.accepted]
        assert sorted(ids) == sorted(webhook_id("alpha", r["rid"], name) for r in made)
    texts = [body["text"] for body in slack.bodies()]
    assert any(t.startswith("Missed call from B WHITTAKER (555) ") for t in texts)
    assert any("Zoë &amp; &lt;Partners&gt; ☎" in t for t in texts)  # mrkdwn-escaped
    cards = [b["attachments"][0]["content"] for b in teams.bodies()]
    assert all(card["type"] == "AdaptiveCard" for card in cards)
    assert all(b.get("content") or b.get("embeds") for b in discord.bodies())


# Filters and the independent predicates that must select the same calls (plain Python over
# the generated records: no call view, no phonenumbers).
FILTERS: dict[str, tuple[dict[str, Any], Callable[[dict[str, Any]], bool]]] = {
    "missed": (
        {"direction": "INCOMING", "disposition": {"$ne": "ANSWERED"}},
        lambda r: r["direction"] == "INCOMING" and r["disposition"] != "ANSWERED",
    ),
    "view": (
        {"call.missed": True, "call.caller.number": {"$startsWith": "+1555016"}},
        lambda r: (
            r["direction"] == "INCOMING"
            and r["disposition"] != "ANSWERED"
            and re.sub(r"\D", "", r["cidnumber_outside"]).startswith("555016")
        ),
    ),
    "busy-or-sales": (
        {
            "$or": [{"billsec": {"$gte": 120}}, {"queue": {"$in": ["Sales"]}}],
            "$not": {"direction": "INTERNAL"},
        },
        lambda r: (r["billsec"] >= 120 or r["queue"] == "Sales") and r["direction"] != "INTERNAL",
    ),
}


async def test_filters_deliver_exactly_what_an_independent_predicate_selects(
    sim, receiver_factory, tmp_path
) -> None:
    everyone, everyone_url = await receiver_factory()
    receivers = {name: await receiver_factory() for name in FILTERS}
    subs = [Sub("everyone", everyone_url, new_secret())] + [
        Sub(name, receivers[name][1], new_secret(), {"filter": spec})
        for name, (spec, _) in FILTERS.items()
    ]
    settings = make_settings(tmp_path, sim.url, subs)
    async with running(settings):
        produced = await sim.produce(KEY_A, rate=200, count=120, late_prob=0.2, max_late=900)
        await everyone.wait_count(produced, timeout=120)
        expected = {
            name: sorted(r["rid"] for r in sim.records(KEY_A) if test(r))
            for name, (_, test) in FILTERS.items()
        }
        for name, (rx, _) in receivers.items():
            await rx.wait_count(len(expected[name]), timeout=120)
    state = tmp_path / "state.db"
    for name, (rx, _) in receivers.items():
        assert 0 < len(expected[name]) < produced, name  # the stream exercises the filter
        got = sorted(orjson.loads(r.body)["data"]["rid"] for r in rx.requests)
        assert got == expected[name], name
        # Filtered-out records created no delivery at all (not a skipped or dead one).
        sql = "SELECT COUNT(*) FROM deliveries WHERE subscriber = ?"
        assert sqlite_rows(state, sql, (name,)) == [(len(expected[name]),)]
    assert sqlite_rows(state, "SELECT COUNT(*) FROM records") == [(produced,)]


HUBSPOT = """{
  "properties": {
    "hs_timestamp": {{ call.start_ms | tojson }},
    "hs_call_direction": {{ ("INBOUND" if call.direction == "inbound" else "OUTBOUND") | tojson }},
    "hs_call_duration": {{ record.duration | duration_ms | tojson }},
    "hs_call_from_number": {{ call.caller.number | tojson }},
    "hs_call_title": {{ ("Call with " ~ (record.cidname_outside or "unknown")) | tojson }},
    "hs_call_body": {{ record.duration | mmss | tojson }}
  }
}"""


async def test_template_body_is_byte_identical_across_a_retry(
    sim, receiver_factory, tmp_path
) -> None:
    rx, url = await receiver_factory()
    rx.script(Reply.status(500))  # then the default 200
    secret = new_secret()
    made = sim.add_record(KEY_A, started_at=ago(30), cidname_outside="Zoë <&>", duration=75)
    sub = Sub("hubspot", url, secret, {"format": "template", "template": HUBSPOT})
    async with running(make_settings(tmp_path, sim.url, [sub])):
        await rx.wait_count(2, timeout=60)
    first, second = rx.requests
    assert (first.status_sent, second.status_sent) == (500, 200)
    assert first.body == second.body
    assert first.headers["webhook-id"] == second.headers["webhook-id"]
    for request in (first, second):
        Webhook(secret).verify(request.body, request.headers)
    props = orjson.loads(second.body)["properties"]
    assert props["hs_call_duration"] == 75_000 and props["hs_call_body"] == "01:15"
    assert props["hs_call_title"] == "Call with Zoë <&>"
    assert props["hs_call_from_number"].startswith("+1555") or made["direction"] == "OUTGOING"


async def test_slack_body_is_byte_identical_across_a_retry(sim, receiver_factory, tmp_path) -> None:
    # Rendered ahead for each claim (the dispatcher renders a claimed batch in one loop): the
    # retry is a new claim, rendered again from the stored record, to the same bytes.
    rx, url = await receiver_factory()
    rx.script(Reply.status(500), Reply.status(503))  # then the default 200
    secret = new_secret()
    sim.add_record(KEY_A, started_at=ago(30), cidname_outside="B WHITTAKER", duration=75)
    sim.add_record(KEY_A, started_at=ago(20), cidname_outside="Zoë <&>", duration=5)
    sub = Sub("slack", url, secret, {"format": "slack", "max_in_flight": 1, "retry": ["50ms"] * 5})
    async with running(make_settings(tmp_path, sim.url, [sub])):
        await rx.wait_count(4, timeout=60)
    by_id: dict[str, list[bytes]] = {}
    for request in rx.requests:
        Webhook(secret).verify(request.body, request.headers)
        by_id.setdefault(request.headers["webhook-id"], []).append(request.body)
    assert len(by_id) == 2 and sum(map(len, by_id.values())) == 4  # 2 failures, 2 successes
    for bodies in by_id.values():
        assert len(set(bodies)) == 1  # every attempt of a delivery: the same bytes
    texts = [orjson.loads(bodies[0])["text"] for bodies in by_id.values()]
    assert any("B WHITTAKER" in text for text in texts)  # the shortcut from the record
    assert any("Zoë &lt;&amp;&gt;" in text for text in texts)  # the escaping path


async def test_a_template_failing_on_one_record_dead_letters_only_that_delivery(
    sim, receiver_factory, tmp_path
) -> None:
    rx, url = await receiver_factory()
    template = '{"ratio": {{ (record.duration / record.billsec) | tojson }}}'
    bad = sim.add_record(KEY_A, started_at=ago(40), billsec=0)
    good = sim.add_record(KEY_A, started_at=ago(30), duration=90, billsec=45)
    settings = make_settings(
        tmp_path,
        sim.url,
        [Sub("ratio", url, new_secret(), {"format": "template", "template": template})],
    )
    async with running(settings):
        await rx.wait_count(1, timeout=60)
    assert [orjson.loads(r.body) for r in rx.requests] == [{"ratio": 2.0}]
    store = open_store(settings.state)
    await store.open()
    try:
        [letter] = await store.dead_letters("ratio", 10)
    finally:
        await store.close()
    assert letter.rid == bad["rid"] and letter.attempts == 1  # permanent: not retried
    assert letter.last_error is not None
    assert "cannot render the body: template failed: ZeroDivisionError" in letter.last_error
    assert good["rid"] != bad["rid"]


async def test_every_key_of_a_rotated_list_signs_newest_first(
    sim, receiver_factory, tmp_path
) -> None:
    rx, url = await receiver_factory()
    private, public = generate_ed25519_pair()
    old = new_secret()
    made = sim.add_record(KEY_A, started_at=ago(30))
    sub = Sub("crm", url, private, {"secret": [private, old], "format": "record"})
    async with running(make_settings(tmp_path, sim.url, [sub])):
        await rx.wait_count(1, timeout=60)
    [request] = rx.requests
    assert orjson.loads(request.body) == made  # format: record, the record alone
    entries = request.headers["webhook-signature"].split(" ")
    assert [e.split(",")[0] for e in entries] == ["v1a", "v1"]  # the order configured
    Webhook(old).verify(request.body, request.headers)  # the old HMAC secret still verifies
    signed = f"{request.headers['webhook-id']}.{request.headers['webhook-timestamp']}.".encode()
    verify_key = VerifyKey(base64.b64decode(public.removeprefix("whpk_")))
    verify_key.verify(signed + request.body, base64.b64decode(entries[0].split(",")[1]))
