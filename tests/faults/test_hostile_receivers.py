"""Receivers that answer with hostile heads (issue 8 §3 finding #1), against byte-scripted servers.

A receiver's answer is untrusted input. Each hostile head must end the attempt within its time
limit with a clear error, close the connection (never reuse it), cost bounded memory, and occupy
only its own subscriber's workers: another subscriber's deliveries keep flowing meanwhile.

The servers write lazily (a slice at a time, after the previous one drained), so the memory the
test measures is the client's, not a megabyte script waiting in the server's buffer.
"""

from __future__ import annotations

import asyncio
import tracemalloc
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from relay.core.status import QueueCounts
from relay.http1.client import MAX_HEAD_BYTES, BadResponse, Http1Client
from relay.sim.receiver import Receiver
from relay.sim.simulator import SimulatedWebFones
from tests.helpers import (
    KEY_A,
    Sub,
    ago,
    make_settings,
    new_secret,
    running,
    sqlite_rows,
    wait_until_async,
)
from tests.rawserver import Peer, RawServer, Script

LIMIT = 60.0  # seconds: time limit of posts that a bounded head must end long before
DRIP_LIMIT = 0.5  # seconds: time limit of a post whose head drips in forever
MEMORY_BOUND = 16 * 1024 * 1024  # bytes: traced peak allowed per hostile post (it takes ~0.1 MB)
SLICE = 64 * 1024

HEAD_ERROR = f"response head exceeds {MAX_HEAD_BYTES // 1024} KiB"
FIELDS_ERROR = "response has more than 100 header fields"


async def _write_until_hung_up(
    peer: Peer, first: bytes, pieces: Callable[[], bytes | None]
) -> None:
    """Write ``first``, then ``pieces()`` after each drain, until the client closes (or
    ``pieces()`` returns None: then wait for that)."""
    assert await peer.read_request() is not None
    try:
        peer.writer.write(first)
        while not peer.writer.is_closing():
            await peer.writer.drain()
            piece = pieces()
            if piece is None:
                break
            peer.writer.write(piece)
    except (ConnectionError, OSError):
        pass  # the client hung up: what a bounded client must do


def many_headers(count: int = 400_000) -> Script:
    """``HTTP/1.1 200`` and then ``count`` headers ``X: a`` (the head of the finding)."""
    line = b"X: a\r\n"
    per_piece = SLICE // len(line)

    async def script(peer: Peer) -> None:
        left = count

        def piece() -> bytes | None:
            nonlocal left
            if left < 0:
                return None
            n = min(per_piece, left)
            left -= n or 1
            return line * n if n else b"\r\n"

        await _write_until_hung_up(peer, b"HTTP/1.1 200 OK\r\n", piece)

    return script


async def endless_header(peer: Peer) -> None:
    await _write_until_hung_up(peer, b"HTTP/1.1 200 OK\r\nX-Endless: ", lambda: b"a" * SLICE)


async def endless_status_line(peer: Peer) -> None:
    await _write_until_hung_up(peer, b"HTTP/1.1 200 ", lambda: b"O" * SLICE)


async def endless_trailer(peer: Peer) -> None:
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n0\r\nX-T: "
    await _write_until_hung_up(peer, head, lambda: b"t" * SLICE)


async def slow_drip(peer: Peer) -> None:
    """A plausible head, one byte every 10 ms: each byte arrives well within any read timeout."""
    data = b"HTTP/1.1 200 OK\r\n" + b"X-Slow: " + b"s" * 10_000
    assert await peer.read_request() is not None
    try:
        for i in range(len(data)):
            if peer.writer.is_closing() or peer.hung_up:
                return
            peer.writer.write(data[i : i + 1])
            await peer.writer.drain()
            await asyncio.sleep(0.01)  # the receiver's behaviour, not synchronisation
    except (ConnectionError, OSError):
        pass


HOSTILE = [
    pytest.param(many_headers(), LIMIT, FIELDS_ERROR, id="400k-headers"),
    pytest.param(endless_header, LIMIT, HEAD_ERROR, id="endless-header"),
    pytest.param(endless_status_line, LIMIT, HEAD_ERROR, id="endless-status-line"),
    pytest.param(slow_drip, DRIP_LIMIT, None, id="slow-drip-head"),
]


@pytest.mark.parametrize(("script", "limit", "error"), HOSTILE)
async def test_hostile_head_fails_the_attempt_with_bounded_memory_and_a_fresh_connection(
    script: Script, limit: float, error: str | None
) -> None:
    client = Http1Client()
    async with RawServer(script) as server:
        endpoint = client.endpoint(server.url, {})
        tracemalloc.start()
        try:
            base, _ = tracemalloc.get_traced_memory()
            tracemalloc.reset_peak()
            if error is None:
                with pytest.raises(TimeoutError):
                    await endpoint.post({}, b"{}", time_limit=limit, cap=1024)
            else:
                with pytest.raises(BadResponse, match=error):
                    await endpoint.post({}, b"{}", time_limit=limit, cap=1024)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak - base < MEMORY_BOUND
        # The client closed the hostile connection rather than keep it...
        await server.wait_for(lambda: server.peers[0].done)
        # ...and the next attempt goes out on a fresh one.
        answer = await endpoint.post({}, b"{}", time_limit=LIMIT, cap=1024)
        assert (answer.status, answer.body) == (200, b"conn1")
        assert len(server.peers) == 2
    client.close()


async def test_endless_trailer_ends_the_answer_with_its_status_and_an_error() -> None:
    """Trailers are parsed like headers: the same budget bounds them."""
    client = Http1Client()
    async with RawServer(endless_trailer) as server:
        endpoint = client.endpoint(server.url, {})
        answer = await endpoint.post({}, b"{}", time_limit=LIMIT, cap=1024)
        assert (answer.status, answer.body) == (200, b"a")
        assert answer.error == f"response framing exceeds {MAX_HEAD_BYTES // 1024} KiB"
        await server.wait_for(lambda: server.peers[0].done)
    client.close()


async def test_a_long_but_bounded_head_is_still_an_answer() -> None:
    """Just under the limits (99 fields, ~60 KiB) is a normal answer, and only kept headers
    are returned."""
    fields = b"".join(b"X-%d: %s\r\n" % (i, b"v" * 580) for i in range(97))
    data = b"HTTP/1.1 503 Busy\r\n%sRetry-After: 7\r\nContent-Length: 2\r\n\r\nno" % fields
    assert len(data) < MAX_HEAD_BYTES

    async def script(peer: Peer) -> None:
        assert await peer.read_request() is not None
        peer.writer.write(data)
        while await peer.read_request() is not None:
            peer.writer.write(data)

    client = Http1Client()
    async with RawServer(script) as server:
        endpoint = client.endpoint(server.url, {})
        first = await endpoint.post({}, b"{}", time_limit=LIMIT, cap=1024)
        second = await endpoint.post({}, b"{}", time_limit=LIMIT, cap=1024)
    client.close()
    assert first == second
    assert (first.status, first.body, first.error) == (503, b"no", None)
    assert first.headers == {"retry-after": "7", "content-length": "2"}
    assert len(server.peers) == 1  # kept alive


# --- in the relay: a hostile subscriber occupies only its own workers ---------------------


def _hostile_then(blast: Script, healthy_done: asyncio.Event, seen: list[bool]) -> Script:
    """Hold the attempt open (a head that never ends), until the healthy subscriber has all its
    calls; note whether this attempt was still being served then; then answer with ``blast``."""

    async def script(peer: Peer) -> None:
        if peer.index > 0:
            await blast(peer)  # retries: hostile at once
            return
        request = await peer.read_request()
        assert request is not None
        peer.writer.write(b"HTTP/1.1 200 OK\r\nX-Wait: ")
        await healthy_done.wait()
        seen.append(not peer.hung_up)
        try:
            peer.writer.write(b"a" * (2 * MAX_HEAD_BYTES))
            await peer.writer.drain()
        except (ConnectionError, OSError):
            pass
        while await peer.read_request() is not None:
            pass

    return script


@pytest.mark.parametrize(
    ("blast", "error"),
    [
        pytest.param(many_headers(), FIELDS_ERROR, id="400k-headers"),
        pytest.param(endless_header, HEAD_ERROR, id="endless-header"),
    ],
)
async def test_other_subscribers_keep_flowing_while_a_hostile_one_is_served(
    sim: SimulatedWebFones,
    receiver_factory: Callable[..., Awaitable[tuple[Receiver, str]]],
    tmp_path: Path,
    blast: Script,
    error: str,
) -> None:
    healthy, healthy_url = await receiver_factory()
    healthy_done = asyncio.Event()
    served_meanwhile: list[bool] = []
    count = 20
    records = [sim.add_record(KEY_A, started_at=ago(60 - i)) for i in range(count)]
    hostile = _hostile_then(blast, healthy_done, served_meanwhile)
    async with RawServer(*[hostile] * 1000) as hostile_server:
        subs = [
            # One worker and a long timeout: the first attempt is held open until the healthy
            # subscriber has everything, which no time-out can cut short.
            Sub(
                "hostile",
                hostile_server.url,
                new_secret(),
                # The circuit never opens: every delivery runs out of schedule, so each
                # attempt's error is on record (the breaker has its own tests).
                {
                    "timeout": "10m",
                    "max_in_flight": 1,
                    "retry": ["10ms"] * 3,
                    "circuit": {"open_after": 1000},
                },
            ),
            Sub("healthy", healthy_url, new_secret()),
        ]
        async with running(make_settings(tmp_path, sim.url, subs)) as relay:
            assert relay.supervisor is not None
            await healthy.wait_count(count, timeout=120)
            healthy_done.set()
            store = relay.supervisor.store

            async def hostile_dead() -> bool:
                counts = (await store.stats()).subscribers.get("hostile", QueueCounts())
                return counts.dead == count

            await wait_until_async(hostile_dead, timeout=120)
    assert served_meanwhile == [True]
    delivered = {r.json()["data"]["rid"] for r in healthy.requests}
    assert delivered == {r["rid"] for r in records}
    errors = {
        e
        for (e,) in sqlite_rows(
            tmp_path / "state.db",
            "SELECT a.error FROM attempts a JOIN deliveries d ON d.id = a.delivery_id "
            "WHERE d.subscriber = 'hostile'",
        )
    }
    # The held-open first attempt ends on the head budget; every later one on ``blast``.
    assert errors == {HEAD_ERROR, error}
