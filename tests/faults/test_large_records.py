"""Large records (issue 8 §3 finding #13): a size limit at ingest, and memory that does not grow
with the number of subscribers a large record goes to.

A record over ``upstream.max_record_bytes`` is quarantined with its reason and the rest of the
poll is delivered. One allowed but large record, delivered to 1 and then to 12 subscribers, must
peak at about the same traced memory: one body object shared by every claim, written to each
connection a slice at a time rather than joined with the request head.
"""

from __future__ import annotations

import asyncio
import time
import tracemalloc
from collections.abc import Awaitable, Callable
from pathlib import Path

import orjson

from relay.core.models import CallRecord, IngestBatch
from relay.sim.receiver import Receiver
from relay.sim.simulator import SimulatedWebFones
from relay.store.sqlite.store import SqliteStore
from tests.helpers import (
    KEY_A,
    Sub,
    ago,
    make_settings,
    new_secret,
    rids,
    running,
    sqlite_rows,
)
from tests.rawserver import Peer, RawServer

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
BODY_BYTES = 6 * 1024 * 1024  # the large record's webhook body
MAX_RECORD = 8 * 1024 * 1024  # upstream.max_record_bytes for the memory test


async def test_a_record_over_max_record_bytes_is_quarantined_and_the_rest_delivered(
    sim: SimulatedWebFones,
    receiver_factory: Callable[..., Awaitable[tuple[Receiver, str]]],
    tmp_path: Path,
) -> None:
    rx, url = await receiver_factory()
    small = sim.add_record(KEY_A, started_at=ago(30))
    big = sim.add_record(KEY_A, started_at=ago(20), note="n" * 100_000)
    after = sim.add_record(KEY_A, started_at=ago(10))
    settings = make_settings(
        tmp_path,
        sim.url,
        [Sub("hook", url, new_secret())],
        upstream={"max_record_bytes": 64 * 1024},
    )
    async with running(settings):
        await rx.wait_count(2, timeout=120)
    assert sorted(rids(rx.requests)) == sorted([small["rid"], after["rid"]])
    [(account, reason, kept, raw)] = sqlite_rows(
        tmp_path / "state.db", "SELECT account, reason, length(raw), raw FROM quarantine"
    )
    assert account == "alpha"
    assert "over upstream.max_record_bytes (65536)" in reason
    assert kept == 64 * 1024  # a prefix, not the whole record
    assert b'"rid":%d' % big["rid"] in raw


def _drain(received: list[tuple[str, int]]) -> Callable[[Peer], Awaitable[None]]:
    """Answer 200 to every request, reading its body in slices and keeping only its length:
    the receiver shares the test's process, and must not add to the memory measured."""

    async def script(peer: Peer) -> None:
        while True:
            try:
                head = await peer.reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            lines = head.decode("latin-1").split("\r\n")
            target = lines[0].split(" ")[1]
            length = next(
                int(line.split(":", 1)[1])
                for line in lines
                if line.lower().startswith("content-length:")
            )
            left = length
            while left:
                chunk = await peer.reader.read(min(left, 256 * 1024))
                if not chunk:
                    return
                left -= len(chunk)
            received.append((target, length))
            peer.writer.write(OK)
            await peer.changed()

    return script


async def _peak_delivering(tmp_path: Path, sim: SimulatedWebFones, subscribers: int) -> int:
    """Traced memory peak (bytes) of a relay delivering one large record to ``subscribers``."""
    tmp_path.mkdir()
    names = [f"s{i}" for i in range(subscribers)]
    body = orjson.dumps({"type": "call.record", "data": {"rid": 1, "note": "x" * BODY_BYTES}})
    store = SqliteStore(str(tmp_path / "state.db"))
    await store.open()
    try:
        record = CallRecord(rid=1, call_ts="2000-01-01 00:00:00", body=body)
        result = await store.ingest(IngestBatch("alpha", [record], names, time.time(), None))
        assert result.new_rids == [1]
    finally:
        await store.close()
    size = len(body)
    del body, record

    received: list[tuple[str, int]] = []
    async with RawServer(*[_drain(received)] * (subscribers + 100)) as server:
        subs = [Sub(n, f"{server.url}/{n}", new_secret(), {"timeout": "5m"}) for n in names]
        settings = make_settings(tmp_path, sim.url, subs, upstream={"max_record_bytes": MAX_RECORD})
        tracemalloc.start()
        try:
            async with running(settings):
                await server.wait_for(lambda: len(received) >= subscribers, timeout=300)
                _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert sorted(received) == sorted((f"/{n}", size) for n in names)
    return peak


async def test_peak_memory_of_a_large_record_does_not_grow_with_its_subscribers(
    sim: SimulatedWebFones, tmp_path: Path
) -> None:
    one = await _peak_delivering(tmp_path / "one", sim, 1)
    twelve = await _peak_delivering(tmp_path / "twelve", sim, 12)
    print(f"traced peak: {one / 2**20:.1f} MiB for 1 subscriber, {twelve / 2**20:.1f} for 12")
    # The body was read at least once, so the measurement sees it...
    assert one >= BODY_BYTES
    # ...and twelve subscribers share it: a copy each would be twelve times the body more.
    assert twelve < 1.5 * one + 4 * 1024 * 1024, (one, twelve)
