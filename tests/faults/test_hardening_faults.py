"""Issue 8 §3 findings against a real relay, the simulated WebFones and a local receiver:
control characters in outside text (#14), non-finite numbers (#9), quarantine across restarts
(#7)."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Awaitable, Callable
from pathlib import Path

import orjson
import pytest

from relay.core.models import Attempt, CallRecord, Finished, IngestBatch, Outcome
from relay.core.status import RelayStatus
from relay.ops.logs import TextFormatter
from relay.sim.receiver import Receiver, Reply
from relay.sim.simulator import Fault, SimulatedWebFones
from relay.store.sqlite.store import SqliteStore
from tests.helpers import (
    KEY_A,
    Sub,
    ago,
    make_settings,
    new_secret,
    running,
    sqlite_rows,
    verify_all,
    wait_until_async,
)
from tests.store.builders import opened

ReceiverFactory = Callable[..., Awaitable[tuple[Receiver, str]]]
CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")  # any control character but \t and \n
FORGED = (
    b"boom\r\n2026-01-01 00:00:00.000 INFO  relay.delivery.claimer delivered\x1b[2J\x1b]0;x\x07"
)


def text_lines(records: list[logging.LogRecord]) -> list[str]:
    formatter = TextFormatter()
    return [formatter.format(r) for r in records]


async def test_control_characters_of_an_upstream_error_are_escaped(
    sim: SimulatedWebFones,
    receiver_factory: ReceiverFactory,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    _, url = await receiver_factory()
    settings = make_settings(tmp_path, sim.url, [Sub("crm", url, new_secret())])
    async with running(settings) as relay:
        assert relay.supervisor is not None
        sim.fail_next(Fault.raw(500, "text/plain", FORGED), key=KEY_A)

        async def failed() -> bool:
            assert relay.supervisor is not None
            account = (await relay.supervisor.store.stats()).accounts.get("alpha")
            return account is not None and "boom" in (account.error or "")

        await wait_until_async(failed, timeout=60)
        status = (await relay.supervisor.status()).to_dict()
    problems = [r for r in caplog.records if "poll failed" in r.getMessage()]
    assert problems
    for line in text_lines(problems):
        assert "\n" not in line and not CONTROL.search(line), line
        assert "boom\\r\\n2026-01-01" in line and "\\x1b[2J" in line
    error = status["accounts"]["alpha"]["error"]
    assert not CONTROL.search(error) and "\n" not in error


async def test_control_characters_of_a_receiver_answer_are_escaped(
    sim: SimulatedWebFones,
    receiver_factory: ReceiverFactory,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    rx, url = await receiver_factory()
    rx.set_default(Reply.status(500, body=FORGED))
    sub = Sub("crm", url, new_secret(), {"retry": ["50ms"], "retry_on_4xx": False})
    settings = make_settings(tmp_path, sim.url, [sub])
    sim.add_record(KEY_A, started_at=ago(30))
    async with running(settings) as relay:
        assert relay.supervisor is not None

        async def dead() -> bool:
            assert relay.supervisor is not None
            return bool(await relay.supervisor.store.dead_letters(None, 10))

        await wait_until_async(dead, timeout=60)
    stored = sqlite_rows(settings.state, "SELECT response, error FROM attempts")
    assert stored
    for response, error in stored:
        assert "boom\\r\\n2026" in response and "\\x1b[2J" in response
        for text in (response, error or ""):
            assert not CONTROL.search(text) and "\n" not in text
    for line in text_lines([r for r in caplog.records if r.name.startswith("relay")]):
        assert not CONTROL.search(line), line


@pytest.mark.parametrize(
    ("message", "fields"),
    [
        ("upstream said %s", {"error": "x\r\x1b[31m"}),
        ("line one\nINFO forged %s", {}),
        ("bidi %s", {"subscriber": "\u202eevil"}),
    ],
)
def test_text_log_lines_escape_control_characters(message: str, fields: dict[str, str]) -> None:
    record = logging.LogRecord(
        "relay.test", logging.WARNING, __file__, 1, message, ("\x1b[2J",), None
    )
    record.__dict__.update(fields)
    line = TextFormatter().format(record)
    assert "\n" not in line and not CONTROL.search(line) and "\u202e" not in line
    assert "\\x1b[2J" in line


def test_status_model_escapes_stored_error_texts() -> None:
    from relay.core.status import AccountState, QueueCounts, StoreStats

    stats = StoreStats(
        accounts={"a": AccountState(error="500 \x1b[2J\r\nforged")},
        subscribers={"s": QueueCounts(disabled="410 \x1b]0;t\x07")},
    )
    doc = RelayStatus(store=stats).to_dict()
    assert doc["accounts"]["a"]["error"] == "500 \\x1b[2J\\r\\nforged"
    assert doc["subscribers"]["s"]["disabled"] == "410 \\x1b]0;t\\x07"


# -- #9: a number beyond double range is kept aside, never sent as null or Infinity ------------


def raw_body(sim: SimulatedWebFones, bad: bytes, fillers: int) -> bytes:
    """The simulator's answer with one record text spliced in, and ``fillers`` small records
    (1 KB each) that make it large enough to be streamed."""
    records = [orjson.dumps(r) for r in sim.records(KEY_A)]
    records += [
        orjson.dumps(
            {"rid": 9_000_000 + n, "call_timestamp": "2000-01-01 00:00:00", "pad": "x" * 1000}
        )
        for n in range(fillers)
    ]
    items = b",".join([*records, bad])
    return b'{"success":true,"count":%d,"records":[%s]}' % (len(records) + 1, items)


@pytest.mark.parametrize("fillers", [1, 2000], ids=["whole-body", "streamed"])
async def test_a_record_with_1e999_is_quarantined_and_never_sent(
    sim: SimulatedWebFones, receiver_factory: ReceiverFactory, tmp_path: Path, fillers: int
) -> None:
    rx, url = await receiver_factory()
    secret = new_secret()
    settings = make_settings(tmp_path, sim.url, [Sub("crm", url, secret)])
    made = [sim.add_record(KEY_A, started_at=ago(40))]
    stamp = made[0]["call_timestamp"]
    # dur overflows a double; the 20-digit integer in the same body sent it through the
    # standard library's encoder, which wrote Infinity.
    bad = (
        b'{"rid":8000001,"call_timestamp":"%s","dur":1e999,"uniqueid":12345678901234567890}'
        % stamp.encode()
    )
    async with running(settings) as relay:
        assert relay.supervisor is not None
        await rx.wait_count(1, timeout=60)
        sim.fail_next(Fault.raw(200, "application/json", raw_body(sim, bad, fillers)), key=KEY_A)

        async def kept_aside() -> bool:
            assert relay.supervisor is not None
            return (await relay.supervisor.store.stats()).quarantined >= 1

        await wait_until_async(kept_aside, timeout=120)
        made.append(sim.add_record(KEY_A, started_at=ago(20)))
        await rx.wait_count(2 + fillers, timeout=120)  # the two records and the fillers
    docs = verify_all(rx.requests, secret)
    for request in rx.requests:
        json.loads(request.body, parse_constant=_refuse)  # strictly valid JSON
    expected = [r["rid"] for r in made] + [9_000_000 + n for n in range(fillers)]
    assert sorted(d["data"]["rid"] for d in docs) == sorted(expected)
    [(raw, reason)] = sqlite_rows(settings.state, "SELECT raw, reason FROM quarantine")
    assert b'"dur":1e999' in raw and "not a finite" in reason


def _refuse(name: str) -> None:
    raise AssertionError(f"{name} in a webhook body")


# -- #8: maintenance runs soon after start and applies every retention ----------------------------


async def seed_old_state(path: Path) -> None:
    """A state file left by an earlier run, decades ago: a dead letter, and deliveries of a
    subscriber that has since been removed from the config."""
    async with opened(SqliteStore(str(path))) as s:
        await s.ingest(
            IngestBatch(
                "alpha",
                [CallRecord(1, "2000-01-01 00:00:00", b"{}")],
                ["crm", "removed"],
                1_000.0,
                None,
            )
        )
        [d] = await s.claim("crm", 1, 1_000.0, 30.0)
        attempt = Attempt(at=2_000.0, status=500, error="HTTP 500", latency_ms=1.0, response="")
        await s.finish([Finished(d.id, attempt, Outcome.DEAD)])


async def test_first_maintenance_pass_runs_soon_after_start(
    sim: SimulatedWebFones,
    receiver_factory: ReceiverFactory,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from relay.runtime import maintenance

    assert maintenance.FIRST_AFTER <= 60 < maintenance.EVERY  # the defaults: soon, then rarely
    monkeypatch.setattr(maintenance, "FIRST_AFTER", 0.05)  # "soon", without a 30 s test
    caplog.set_level(logging.INFO)
    _, url = await receiver_factory()
    settings = make_settings(tmp_path, sim.url, [Sub("crm", url, new_secret())])
    await seed_old_state(Path(settings.state))
    async with running(settings) as relay:
        assert relay.supervisor is not None
        store = relay.supervisor.store

        async def pruned() -> bool:
            return not await store.dead_letters(None, 10)

        await wait_until_async(pruned, timeout=60)
        status = (await relay.supervisor.status()).to_dict()
    # Counted from when it was first found (now): kept and reported, not purged yet.
    assert status["subscribers"]["removed"]["pending"] == 1
    lines = [r.getMessage() for r in caplog.records if r.name == "relay.runtime.maintenance"]
    assert any("removed is no longer configured" in line for line in lines), lines
    assert any("dead letters past dead_letter_retention" in line for line in lines), lines


async def test_orphans_are_reported_in_status_until_their_retention(
    sim: SimulatedWebFones,
    receiver_factory: ReceiverFactory,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from relay.runtime import maintenance

    monkeypatch.setattr(maintenance, "FIRST_AFTER", 0.05)
    _, url = await receiver_factory()
    settings = make_settings(tmp_path, sim.url, [Sub("crm", url, new_secret())])
    await seed_old_state(Path(settings.state))
    async with running(settings) as relay:
        assert relay.supervisor is not None
        supervisor = relay.supervisor

        async def reported() -> bool:
            queue = (await supervisor.status()).to_dict()["subscribers"].get("removed", {})
            return queue.get("orphaned_since") is not None

        await wait_until_async(reported, timeout=60)
        queue = (await supervisor.status()).to_dict()["subscribers"]["removed"]
    assert queue["pending"] == 1  # kept: orphan_retention (7d) counts from now


# -- #7: a bad record the upstream keeps serving is quarantined once, restart after restart -------


async def test_a_bad_record_is_quarantined_once_across_restarts(
    sim: SimulatedWebFones, receiver_factory: ReceiverFactory, tmp_path: Path
) -> None:
    _, url = await receiver_factory()
    settings = make_settings(tmp_path, sim.url, [Sub("crm", url, new_secret())])
    sim.add_raw(KEY_A, {"rid": "R-17", "call_timestamp": sim.format_ts(ago(30))})
    for _ in range(3):
        async with running(settings) as relay:
            assert relay.supervisor is not None
            store = relay.supervisor.store
            polls = relay.supervisor.pollers[0].polls

            async def polled_again(before: int = polls) -> bool:
                assert relay.supervisor is not None
                return relay.supervisor.pollers[0].polls >= before + 3

            await wait_until_async(polled_again, timeout=60)
            assert (await store.stats()).quarantined == 1
    [(times,)] = sqlite_rows(settings.state, "SELECT times FROM quarantine")
    assert times >= 3  # seen again on every run, kept once
