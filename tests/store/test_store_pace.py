"""The store's part of a subscriber's pace: the head of the queue, start-up due times, the
requeue when a circuit closes, and saved circuits (every backend: ``store`` is parametrised)."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

from relay.core.breaker import Circuit
from relay.core.models import Outcome
from relay.store import Store
from relay.store.sqlite import pace
from relay.store.sqlite.held import Held
from relay.store.sqlite.store import SqliteStore
from tests.store.builders import LEASE, NOW, T0, batch, opened, result


async def test_claim_head_takes_only_the_oldest_even_when_a_later_one_is_due(store: Store) -> None:
    await store.ingest(batch([5, 3, 9], ("a",)))
    first = await store.claim_head("a", T0, LEASE)
    assert first is not None and first.rid == 5
    await store.finish([result(first.id, Outcome.RETRY, status=500, next_at=T0 + 60)])
    # rid 3 and 9 are due, but the head (rid 5) is not: nothing goes out before it.
    assert await store.claim_head("a", T0 + 59, LEASE) is None
    assert await store.head_due("a") == T0 + 60
    again = await store.claim_head("a", T0 + 60, LEASE)
    assert again is not None and (again.id, again.attempts) == (first.id, 1)
    await store.finish([result(again.id, Outcome.DELIVERED)])
    nxt = await store.claim_head("a", T0 + 60, LEASE)
    assert nxt is not None and nxt.rid == 3


async def test_claim_head_waits_while_another_delivery_is_leased(store: Store) -> None:
    await store.ingest(batch([1, 2], ("a",)))
    [d1] = await store.claim("a", 1, T0, LEASE)
    assert await store.claim_head("a", T0, LEASE) is None  # one in flight at most
    assert await store.claim_head("a", T0 + LEASE + 1, LEASE) is not None  # lease ran out
    assert d1.rid == 1


async def test_claim_head_skips_nothing_but_finished_and_respects_disable(store: Store) -> None:
    assert await store.claim_head("a", T0, LEASE) is None
    assert await store.head_due("a") is None
    await store.ingest(batch([1, 2], ("a",)))
    d1 = await store.claim_head("a", T0, LEASE)
    assert d1 is not None
    await store.finish([result(d1.id, Outcome.DEAD, status=400, error="HTTP 400")])
    await store.set_subscriber_disabled("a", "410 Gone", NOW)
    assert await store.claim_head("a", T0, LEASE) is None
    assert await store.head_due("a") is None
    await store.set_subscriber_disabled("a", None, NOW)
    d2 = await store.claim_head("a", T0, LEASE)
    assert d2 is not None and d2.rid == 2 and d2.body == b'{"rid":2}'


async def test_due_times_per_subscriber_without_disabled_ones(store: Store, backend: str) -> None:
    assert await store.due_times() == {}
    await store.ingest(batch([1, 2], ("a", "b", "c")))
    await store.ingest(batch([3], ("a",), at=T0 - 5))
    [d] = await store.claim("b", 1, T0, LEASE)
    [d2] = await store.claim("b", 1, T0, LEASE)
    await store.finish([result(d.id, Outcome.RETRY, status=500, next_at=T0 + 90)])
    await store.set_subscriber_disabled("c", "410 Gone", NOW)
    # b: one retry at T0 + 90, and one leased until T0 + LEASE. a: rid 3 was queued after rids 1
    # and 2 but stamped 5 s before them (the wall clock went back). PostgreSQL answers rid 3's
    # due time; SQLite keeps fresh deliveries in queue order (schema version 7) and answers the
    # first one's. Both are past: a claim now takes all three (next test).
    a_due = T0 - 5 if backend == "postgres" else T0
    assert await store.due_times() == {"a": a_due, "b": min(T0 + 90, T0 + LEASE)}
    assert d2.rid == 2


async def test_a_fresh_delivery_stamped_before_the_ones_queued_ahead_of_it_is_due(
    store: Store,
) -> None:
    """Queued behind deliveries that are not due yet (stamped before the wall clock went back),
    a due one is claimed, and the others only once they are due."""
    await store.ingest(batch([1, 2], ("a",), at=T0 + 60))
    await store.ingest(batch([3], ("a",), at=T0))
    [d3] = await store.claim("a", 10, T0 + 1, LEASE)
    assert d3.rid == 3
    await store.finish([result(d3.id, Outcome.DELIVERED, status=200)])
    assert await store.claim("a", 10, T0 + 30, LEASE) == []
    assert [d.rid for d in await store.claim("a", 10, T0 + 60, LEASE)] == [1, 2]


async def test_due_times_finds_every_queue_among_many_subscribers(store: Store) -> None:
    # The names sort in awkward ways (case, digits, a prefix of another), and the queues have
    # different depths and due times: every subscriber must be found, each with its earliest.
    names = ["A", "a", "a1", "a10", "a2", "b", "b-b", "zz", "Ω"]
    expected: dict[str, float] = {}
    for i, name in enumerate(names):
        rids = [100 * i + k for k in range(1 + i % 3)]
        await store.ingest(batch(rids, (name,), at=T0 - i))
        expected[name] = T0 - i
    done = await store.claim("b", 10, T0, LEASE)
    assert len(done) == 3
    await store.finish([result(d.id, Outcome.DELIVERED) for d in done])
    del expected["b"]  # all its deliveries are done
    await store.set_subscriber_disabled("a1", "410 Gone", NOW)
    del expected["a1"]
    assert await store.due_times() == expected


async def test_requeue_retries_restores_queue_order(store: Store) -> None:
    await store.ingest(batch([1, 2, 3, 4], ("a",)))
    d1, d2 = await store.claim("a", 2, T0, LEASE)
    await store.finish(
        [
            result(d1.id, Outcome.RETRY, status=500, next_at=T0 + 3600),
            result(d2.id, Outcome.RETRY, status=500, next_at=T0 + 5),
        ]
    )
    assert await store.next_due("a") == T0  # rids 3 and 4, then 2, then 1
    assert await store.requeue_retries("a") == 2
    order = await store.claim("a", 10, T0, LEASE)
    assert [(d.rid, d.attempts) for d in order] == [(1, 1), (2, 1), (3, 0), (4, 0)]
    assert await store.requeue_retries("nobody") == 0


async def test_circuits_are_saved_reset_on_enable_and_shown_in_stats(
    store_factory,
) -> None:
    s = store_factory()
    await s.open()
    try:
        assert await s.load_circuits() == {}
        opened = Circuit(failures=7, failing_since=T0, opened_at=T0 + 3, paused_until=None)
        paused = Circuit(paused_until=T0 + 30)
        await s.save_circuit("a", opened, NOW)
        await s.save_circuit("b", paused, NOW)
        await s.save_circuit("c", Circuit(failures=1, failing_since=T0), NOW)
        await s.save_circuit("c", Circuit(), NOW)  # closed again: nothing left to keep
    finally:
        await s.close()
    s = store_factory()  # survives a restart
    await s.open()
    try:
        assert await s.load_circuits() == {"a": opened, "b": paused}
        stats = (await s.stats()).subscribers
        assert (stats["a"].circuit, stats["a"].failures, stats["a"].circuit_opened_at) == (
            "open",
            7,
            T0 + 3,
        )
        assert (stats["b"].circuit, stats["b"].paused_until) == ("closed", T0 + 30)
        await s.set_subscriber_disabled("a", "failing since …", NOW)
        assert "a" in await s.load_circuits()  # disabling keeps the evidence
        await s.set_subscriber_disabled("a", None, NOW)
        assert await s.load_circuits() == {"b": paused}
    finally:
        await s.close()


async def test_sqlite_due_times_reads_no_more_with_a_deeper_queue(tmp_path: Path) -> None:
    """Start-up due times cost the same with 50 or 5,000 queued: counted in SQLite VM steps,
    which no machine speed changes. A GROUP BY over the queue read every pending row (0.2 s
    and a full page cache at 1,000,000 queued)."""
    steps: list[int] = []
    for depth in (50, 5_000):
        path = tmp_path / f"state-{depth}.db"
        async with opened(SqliteStore(str(path))) as s:
            await s.ingest(batch(list(range(1, depth + 1)), ("a", "b")))
            assert await s.due_times() == {"a": T0, "b": T0}
        steps.append(_due_times_steps(path))
    shallow, deep = steps
    assert deep <= shallow + 20, steps  # 100 x the rows; the old query took ~100 x the steps


def _due_times_steps(path: Path) -> int:
    """SQLite VM steps (in tens) that ``due_times`` takes on the file at ``path``."""
    ticks = 0

    def tick() -> int:
        nonlocal ticks
        ticks += 1
        return 0  # go on

    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.set_progress_handler(tick, 10)
        assert pace.due_times(conn, Held()) == {"a": T0, "b": T0}
    return ticks
