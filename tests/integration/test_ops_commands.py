"""`relay status`, `inspect`, `redeliver` and `backup` (and their admin endpoints) against a
running `relay run` process."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import stat
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from relay.core.signing import webhook_id
from relay.sim.receiver import Reply
from tests.helpers import KEY_A, KEY_B, ago, rids, start_relay_process, wait_until_async
from tests.opsrelay import OpsRelay, ops_relay, subscriber

pytestmark = pytest.mark.slow


async def cli(relay: OpsRelay, *args: str) -> tuple[int, Any, str]:
    """``relay ARGS --config …`` as a process: exit code, parsed stdout, stderr."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "relay",
        args[0],
        "--config",
        str(relay.config),
        *args[1:],
        env=relay.env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    doc = orjson.loads(out) if out.strip() else None
    return proc.returncode or 0, doc, err.decode()


async def test_status_works_while_the_relay_runs_without_an_admin_api(
    sim, receiver_factory, tmp_path
):
    rx, url = await receiver_factory()
    relay = ops_relay(tmp_path, sim.url, [subscriber("crm", url)])
    del relay.doc["admin"]  # nothing but the state file to read
    relay.write()
    proc = await start_relay_process(relay.config, relay.env, relay.log)
    for _ in range(3):
        sim.add_record(KEY_A, started_at=ago(20))
    await rx.wait_count(3, timeout=60)

    async def delivered_in_file() -> bool:
        code, doc, err = await cli(relay, "status")
        assert code == 0, err
        return doc["subscribers"]["crm"]["delivered"] == 3

    await wait_until_async(delivered_in_file, timeout=60, interval=0.2)
    code, doc, _ = await cli(relay, "status")
    assert doc["source"] == "state file (read-only)"
    assert doc["accounts"]["alpha"]["status"] == "ok"
    code, letters, _ = await cli(relay, "dead-letters")
    assert (code, letters) == (0, [])
    # A write needs the owner: it says how to do it instead.
    code, _, err = await cli(relay, "enable-subscriber", "crm")
    assert code == 1 and "admin.listen" in err
    assert proc.returncode is None  # the relay was not disturbed
    relay.proc = proc
    await relay.stop()


async def test_inspect_a_calls_journey_search_and_redeliver(sim, receiver_factory, tmp_path):
    crm, crm_url = await receiver_factory()
    sales, sales_url = await receiver_factory()
    relay = await ops_relay(
        tmp_path,
        sim.url,
        [subscriber("crm", crm_url), subscriber("sales", sales_url, accounts=["bravo"])],
        two_accounts=True,
    ).start()
    call = sim.add_record(KEY_A, started_at=ago(30))
    other = sim.add_record(KEY_B, started_at=ago(25))
    await crm.wait_count(2, timeout=60)
    await sales.wait_count(1, timeout=60)
    # A record the relay must keep aside (no call_timestamp), with a rid to look it up by.
    sim.add_raw(KEY_A, {"rid": 999_001, "cidnumber_outside": "5550100"})

    async def journey_of(account: str, rid: int) -> tuple[int, dict[str, Any]]:
        return await relay.call("GET", f"/records/{account}/{rid}")

    async def recorded() -> bool:  # the result is written a moment after the answer
        doc = (await journey_of("alpha", call["rid"]))[1]
        return [d["state"] for d in doc["deliveries"]] == ["delivered"]

    await wait_until_async(recorded, timeout=60)
    status, doc = await journey_of("alpha", call["rid"])
    assert status == 200
    assert doc["record"]["body"]["data"] == call
    (delivery,) = doc["deliveries"]
    assert delivery["subscriber"] == "crm" and delivery["state"] == "delivered"
    wid = webhook_id("alpha", call["rid"], "crm")
    assert delivery["webhook_id"] == wid
    (attempt,) = delivery["attempt_log"]
    assert attempt["status"] == 200 and attempt["error"] is None
    assert attempt["latency_ms"] > 0 and '"ok"' in attempt["response"]
    assert doc["missing"] == {"sales": "subscriber is not subscribed to account alpha"}
    sent = [r for r in crm.requests if r.headers["webhook-id"] == wid]
    assert len(sent) == 1

    # The CLI shows the same journey (through the admin API of the running relay).
    code, same, err = await cli(relay, "inspect", "--account", "alpha", "--rid", str(call["rid"]))
    assert code == 0, err
    assert same["deliveries"][0]["webhook_id"] == wid

    async def quarantined() -> bool:
        return (await journey_of("alpha", 999_001))[1]["quarantined"] != []

    await wait_until_async(quarantined, timeout=60)
    status, doc = await journey_of("alpha", 999_001)
    assert status == 200 and doc["record"] is None
    assert "call_timestamp" in doc["quarantined"][0]["reason"]
    assert doc["missing"]["crm"].startswith("record quarantined: ")
    status, doc = await journey_of("alpha", 123_456_789)
    assert status == 404 and doc["missing"]["crm"] == "record never received"

    # Search by the caller's number as a person types it, and by time range.
    number = call["cidnumber_outside"]
    status, hits = await relay.call("GET", "/records?caller=" + number.replace("", " ").strip())
    assert status == 200 and [h["rid"] for h in hits] == [call["rid"]]
    assert hits[0]["states"] == {"crm": "delivered"}
    code, hits, _ = await cli(relay, "inspect", "--since", call["call_timestamp"])
    assert {h["rid"] for h in hits} == {call["rid"], other["rid"]}
    code, hits, _ = await cli(relay, "inspect", "--account", "bravo")
    assert [h["rid"] for h in hits] == [other["rid"]]

    # Redeliver after a CRM lost data: the same webhook-id, a new attempt.
    crm.script(Reply.status(200))
    code, result, err = await cli(relay, "redeliver", str(delivery["id"]))
    assert code == 0, err
    assert result == {"redelivering": delivery["id"], "subscriber": "crm"}
    await crm.wait_for(lambda reqs: [r.headers["webhook-id"] for r in reqs].count(wid) == 2, 60)
    again = [r for r in crm.requests if r.headers["webhook-id"] == wid]
    assert again[0].body == again[1].body and rids(again) == [call["rid"]] * 2

    async def two_attempts() -> bool:
        d = (await journey_of("alpha", call["rid"]))[1]["deliveries"][0]
        return d["state"] == "delivered" and len(d["attempt_log"]) == 2

    await wait_until_async(two_attempts, timeout=60)
    assert (await relay.call("POST", "/deliveries/987654/redeliver", {}))[0] == 404
    assert (await relay.call("POST", "/deliveries/abc/redeliver", {}))[0] == 400
    await relay.stop()


async def test_backup_while_running(sim, receiver_factory, tmp_path):
    rx, url = await receiver_factory()
    relay = await ops_relay(tmp_path, sim.url, [subscriber("crm", url)]).start()
    for _ in range(5):
        sim.add_record(KEY_A, started_at=ago(20))
    await rx.wait_count(5, timeout=60)
    target = tmp_path / "backup" / "copy.db"
    target.parent.mkdir()
    code, result, err = await cli(relay, "backup", str(target))
    assert code == 0, err
    assert result == {"backup": str(target)}
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o600
    assert not Path(f"{target}.partial").exists()
    with contextlib.closing(sqlite3.connect(target)) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert db.execute("SELECT COUNT(*) FROM records").fetchone()[0] == 5
    await relay.stop()
