"""The store contract: every backend (``store`` is parametrised sqlite|postgres) must pass
every test here, so the pipeline never needs to know which one it runs on.

All times are explicit numbers passed to the store, so nothing here sleeps or reads a clock.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable

import pytest

from relay.core.budget import Charge
from relay.core.errors import StoreError
from relay.core.models import AccountCursor, CallRecord, Finished, IngestBatch, Outcome, Quarantined
from relay.core.window import RID_MAX
from relay.store import Store
from tests.helpers import GENEROUS
from tests.store.builders import LEASE, NOW, T0, batch, opened, rec, result, ts

NO_CIRCUIT = {  # a subscriber's status when its circuit is closed, with no failures or pause
    "circuit": "closed",
    "failures": 0,
    "failing_since": None,
    "circuit_opened_at": None,
    "paused_until": None,
}

# -- ingest ---------------------------------------------------------------------------------------


async def test_ingest_skips_known_and_repeated_rids(store: Store) -> None:
    first = await store.ingest(batch([1, 2, 2, 3]))
    assert first.new_rids == [1, 2, 3]
    assert first.duplicates == 1

    second = await store.ingest(batch([3, 4, 1]))
    assert second.new_rids == [4]
    assert second.duplicates == 2

    # De-dup is per account.
    other = await store.ingest(batch([1], account="other"))
    assert other.new_rids == [1]


async def test_known_rids_are_found_in_a_batch_of_any_size_and_rid(store: Store) -> None:
    # More rids than one statement's parameters once held, known ones spread through the
    # batch, and rids at the edges of what JSON numbers and 64 bits carry.
    edges = [RID_MAX, RID_MAX - 1, 2**53 + 1, 2**53, 2**31, 0]
    known = [*edges[::2], *range(10, 2_510, 2)]
    await store.ingest(IngestBatch("acct", [rec(r, ts(0)) for r in known], ["a"], T0, None))
    everyone = [*edges, *range(10, 2_510)]
    again = await store.ingest(
        IngestBatch("acct", [rec(r, ts(0)) for r in everyone], ["a"], T0, None)
    )
    assert again.new_rids == [r for r in everyone if r not in set(known)]
    assert again.duplicates == len(known)


async def test_first_occurrence_in_a_batch_wins(store: Store) -> None:
    records = [rec(7, body=b"first"), rec(7, body=b"second")]
    await store.ingest(IngestBatch("acct", records, ["a"], T0, None))
    [delivery] = await store.claim("a", 10, T0, LEASE)
    assert delivery.body == b"first"


async def test_seed_only_marks_seen_but_enqueues_nothing(store: Store) -> None:
    seeded = await store.ingest(batch([1, 2], seed_only=True, cursor=ts(2)))
    assert seeded.new_rids == [1, 2]
    assert await store.claim("a", 10, T0, LEASE) == []
    assert await store.next_due("a") is None
    assert (await store.load_cursor("acct")).newest == ts(2)

    again = await store.ingest(batch([1, 2, 3]))
    assert again.new_rids == [3]
    assert [d.rid for d in await store.claim("a", 10, T0, LEASE)] == [3]


async def test_cursor_only_moves_forward(store: Store) -> None:
    assert await store.load_cursor("acct") == AccountCursor(None, None)
    await store.ingest(batch([1], cursor="2024-05-01 10:00:00"))
    await store.ingest(batch([2], cursor="2024-05-01 09:00:00"))
    assert (await store.load_cursor("acct")).newest == "2024-05-01 10:00:00"
    await store.ingest(batch([3], cursor=None))
    assert (await store.load_cursor("acct")).newest == "2024-05-01 10:00:00"
    await store.ingest(batch([], cursor="2024-05-01 11:00:00"))
    assert (await store.load_cursor("acct")).newest == "2024-05-01 11:00:00"

    await store.mark_swept("acct", 5_000.0, "2024-05-01 11:00:00")
    assert await store.load_cursor("acct") == AccountCursor(
        "2024-05-01 11:00:00", 5_000.0, "2024-05-01 11:00:00"
    )
    # The cursor moves on between sweeps; the anchor stays where the last sweep left it.
    await store.ingest(batch([4], cursor="2024-05-01 12:00:00"))
    assert await store.load_cursor("acct") == AccountCursor(
        "2024-05-01 12:00:00", 5_000.0, "2024-05-01 11:00:00"
    )
    await store.mark_swept("fresh", 6_000.0, None)
    assert await store.load_cursor("fresh") == AccountCursor(None, 6_000.0, None)


async def test_load_cursors_answers_what_load_cursor_answers_per_account(store: Store) -> None:
    await store.ingest(batch([1], cursor=ts(1)))  # a cursor, never swept
    await store.ingest(batch([2], account="swept", cursor=ts(2)))
    await store.mark_swept("swept", 5_000.0, ts(2))  # a cursor, a sweep and its anchor
    await store.mark_swept("quiet", 6_000.0, None)  # swept, but no record yet
    await store.ingest(batch([3], account="swept", cursor=ts(3)))  # moved on since the sweep
    accounts = ["acct", "swept", "quiet", "never", "acct"]  # one without a row; one asked twice
    loaded = await store.load_cursors(accounts)
    assert loaded == {
        "acct": AccountCursor(ts(1), None, None),
        "swept": AccountCursor(ts(3), 5_000.0, ts(2)),
        "quiet": AccountCursor(None, 6_000.0, None),
        "never": AccountCursor(None, None),
    }
    assert loaded == {a: await store.load_cursor(a) for a in accounts}
    assert await store.load_cursors([]) == {}


async def test_load_cursors_of_more_accounts_than_one_statement_may_bind(store: Store) -> None:
    # SQLite binds at most 32,766 parameters (999 before 3.32): one query whatever the count.
    accounts = [f"tenant-{i:05d}" for i in range(40_000)]
    for i in range(0, len(accounts), 4_000):
        await store.mark_swept(accounts[i], float(i), ts(i % 86_400))
    loaded = await store.load_cursors(accounts)
    assert list(loaded) == accounts
    swept = {a: c for a, c in loaded.items() if c != AccountCursor(None, None)}
    assert swept == {
        accounts[i]: AccountCursor(None, float(i), ts(i % 86_400))
        for i in range(0, len(accounts), 4_000)
    }
    for i in (0, 1, 39_999):
        assert loaded[accounts[i]] == await store.load_cursor(accounts[i])


async def test_one_delivery_per_subscriber_with_identical_bytes(store: Store) -> None:
    body = bytes(range(256)) + b"\x00\xff not utf-8 \xc3\x28"
    records = [CallRecord(1, ts(1), body), rec(2)]
    await store.ingest(IngestBatch("acct", records, ["a", "b", "a"], T0, None))

    for name in ("a", "b"):
        claimed = await store.claim(name, 10, T0, LEASE)
        assert [(d.subscriber, d.account, d.rid, d.attempts) for d in claimed] == [
            (name, "acct", 1, 0),
            (name, "acct", 2, 0),
        ]
        assert claimed[0].body == body
    stats = await store.stats()
    assert {name: s.inflight for name, s in stats.subscribers.items()} == {"a": 2, "b": 2}


async def test_quarantined_records_are_kept(store: Store) -> None:
    bad = [Quarantined(b'{"rid": null}', "no rid"), Quarantined(b"\xff", "not json")]
    await store.ingest(IngestBatch("acct", [], ["a"], T0, None, quarantined=bad))
    assert (await store.stats()).quarantined == 2


async def test_ingest_100k_records(store: Store) -> None:
    subscribers = ("a", "b", "c")
    total = 0
    for start in range(0, 100_000, 10_000):
        outcome = await store.ingest(batch(list(range(start, start + 10_000)), subscribers))
        total += len(outcome.new_rids)
    assert total == 100_000
    again = await store.ingest(batch(list(range(99_000, 101_000)), subscribers))
    assert (len(again.new_rids), again.duplicates) == (1_000, 1_000)

    stats = await store.stats()
    assert stats.seen == 101_000
    assert {s.pending for s in stats.subscribers.values()} == {101_000}
    claimed = await store.claim("b", 500, T0, LEASE)
    assert [d.rid for d in claimed] == list(range(500))


# -- claim ----------------------------------------------------------------------------------------


async def test_claim_respects_limit_and_queue_order(store: Store) -> None:
    await store.ingest(batch([5, 3, 9, 1, 7]))
    await store.ingest(batch([2], at=T0 + 1))
    first = await store.claim("a", 2, T0 + 1, LEASE)
    second = await store.claim("a", 10, T0 + 1, LEASE)
    assert [d.rid for d in first] == [5, 3]  # arrival order, not rid order
    assert [d.rid for d in second] == [9, 1, 7, 2]
    assert await store.claim("a", 10, T0 + 1, LEASE) == []
    assert await store.claim("a", 0, T0 + 1, LEASE) == []


async def test_claim_waits_until_due(store: Store) -> None:
    await store.ingest(batch([1], at=T0))
    assert await store.claim("a", 10, T0 - 1, LEASE) == []
    assert await store.next_due("a") == T0

    [d] = await store.claim("a", 10, T0, LEASE)
    await store.finish([result(d.id, Outcome.RETRY, at=T0 + 1, status=500, next_at=T0 + 60)])
    assert await store.next_due("a") == T0 + 60
    assert await store.claim("a", 10, T0 + 59, LEASE) == []
    [again] = await store.claim("a", 10, T0 + 60, LEASE)
    assert (again.id, again.attempts) == (d.id, 1)


async def test_live_lease_blocks_and_expired_lease_is_reclaimable(store: Store) -> None:
    await store.ingest(batch([1, 2]))
    claimed = await store.claim("a", 1, T0, LEASE)
    assert await store.next_due("a") == T0  # rid 2 is still pending
    [other] = await store.claim("a", 10, T0 + 1, LEASE)
    assert other.rid == 2
    assert await store.next_due("a") == T0 + LEASE  # the earliest lease to run out

    assert await store.claim("a", 10, T0 + LEASE, LEASE) == []  # still leased at expiry
    reclaimed = await store.claim("a", 10, T0 + LEASE + 0.5, LEASE)
    assert [(d.id, d.attempts) for d in reclaimed] == [(claimed[0].id, 0)]
    # The fresh lease holds again.
    assert await store.claim("a", 10, T0 + LEASE + 1, LEASE) == []


async def test_disabled_subscriber_is_not_claimed_for(store: Store) -> None:
    await store.ingest(batch([1]))
    await store.set_subscriber_disabled("a", "disabled by operator", NOW)
    assert await store.disabled_subscribers() == {"a": "disabled by operator"}
    assert await store.claim("a", 10, T0, LEASE) == []
    assert await store.next_due("a") is None
    assert len(await store.claim("b", 10, T0, LEASE)) == 1

    await store.set_subscriber_disabled("a", None, NOW)
    assert await store.disabled_subscribers() == {}
    assert [d.rid for d in await store.claim("a", 10, T0, LEASE)] == [1]


async def test_next_due_is_none_for_an_empty_queue(store: Store) -> None:
    assert await store.next_due("nobody") is None
    await store.ingest(batch([1], ("a",)))
    [d] = await store.claim("a", 10, T0, LEASE)
    await store.finish([result(d.id, Outcome.DELIVERED)])
    assert await store.next_due("a") is None


# -- finish and release ----------------------------------------------------------------------------


async def test_finish_applies_each_outcome(store: Store) -> None:
    await store.ingest(batch([1, 2, 3, 4], ("a",)))
    d1, d2, d3, d4 = await store.claim("a", 10, T0, LEASE)
    await store.finish(
        [
            result(d1.id, Outcome.DELIVERED),
            result(d2.id, Outcome.RETRY, status=503, error="HTTP 503", next_at=3_000.0),
            result(d3.id, Outcome.DEAD, at=2_500.0, status=400, error="HTTP 400"),
        ]
    )
    stats = (await store.stats()).subscribers["a"]
    assert (stats.delivered, stats.pending, stats.inflight, stats.dead) == (1, 1, 1, 1)
    assert stats.oldest_pending_at == 3_000.0

    [dead] = await store.dead_letters("a", 10)
    assert (dead.id, dead.rid, dead.account, dead.subscriber) == (d3.id, 3, "acct", "a")
    assert (dead.attempts, dead.last_error, dead.dead_at) == (1, "HTTP 400", 2_500.0)

    await store.finish([result(d4.id, Outcome.GONE, at=2_600.0, status=410, error="HTTP 410")])
    assert await store.disabled_subscribers() == {"a": "410 Gone"}
    assert await store.claim("a", 10, 9_999.0, LEASE) == []
    # The delivery is kept, due as soon as the subscriber is re-enabled.
    await store.set_subscriber_disabled("a", None, NOW)
    claimed = await store.claim("a", 10, 2_600.0, 3_600.0)
    assert [(d.id, d.attempts) for d in claimed] == [(d4.id, 1)]
    assert [(d.id, d.attempts) for d in await store.claim("a", 10, 3_000.0, LEASE)] == [(d2.id, 1)]


async def test_delivered_is_final(store: Store) -> None:
    await store.ingest(batch([1], ("a",)))
    [d] = await store.claim("a", 10, T0, LEASE)
    await store.finish([result(d.id, Outcome.DELIVERED)])
    await store.finish([result(d.id, Outcome.RETRY, status=500, next_at=T0)])  # a late echo
    assert await store.claim("a", 10, 9_999.0, LEASE) == []
    assert (await store.stats()).subscribers["a"].delivered == 1


async def test_finish_handles_large_batches(store: Store) -> None:
    await store.ingest(batch(list(range(3_000)), ("a",)))
    claimed = await store.claim("a", 3_000, T0, LEASE)
    assert len(claimed) == 3_000
    await store.finish([result(d.id, Outcome.DELIVERED) for d in claimed])
    assert (await store.stats()).subscribers["a"].delivered == 3_000
    await store.finish([])


async def test_release_makes_claims_due_again_untouched(store: Store) -> None:
    await store.ingest(batch([1, 2, 3], ("a",)))
    claimed = await store.claim("a", 10, T0 + 5, LEASE)
    await store.release([d.id for d in claimed[:2]])
    again = await store.claim("a", 10, T0 + 5, LEASE)
    assert [(d.id, d.attempts) for d in again] == [(d.id, 0) for d in claimed[:2]]
    await store.release([])


# -- durability -----------------------------------------------------------------------------------


async def test_reopen_keeps_everything_and_recovers_a_dead_owners_claims(
    store_factory: Callable[[], Store],
) -> None:
    async with opened(store_factory()) as first:
        await first.register_instance("first", T0, 10.0)
        await first.ingest(batch([1, 2, 3], ("a", "b"), cursor=ts(3)))
        await first.mark_swept("acct", 4_000.0, ts(2))
        await first.set_account_status("acct", "ok", None, NOW)
        inflight = await first.claim("a", 2, T0, 3_600.0)
        [dead] = await first.claim("b", 1, T0, LEASE)
        await first.finish([result(dead.id, Outcome.DEAD, status=400, error="HTTP 400")])
        await first.set_subscriber_disabled("c", "410 Gone", NOW)

    async with opened(store_factory()) as second:
        assert await second.load_cursor("acct") == AccountCursor(ts(3), 4_000.0, ts(2))
        # The lease was live for another hour, but its holder is gone: due again once its
        # heartbeat runs out (SQLite, the only owner, made them due when it reopened the file).
        await second.register_instance("second", T0 + 11, 10.0)
        await second.recover_dead_instances(T0 + 11)
        assert await second.live_instances(T0 + 11) == ["second"]
        claimed = await second.claim("a", 10, T0, LEASE)
        assert [d.id for d in claimed[:2]] == [d.id for d in inflight]
        assert [d.rid for d in claimed] == [1, 2, 3]
        assert [d.id for d in await second.dead_letters(None, 10)] == [dead.id]
        assert await second.disabled_subscribers() == {"c": "410 Gone"}
        assert (await second.ingest(batch([1, 2, 3]))).duplicates == 3
        assert (await second.stats()).accounts["acct"].status == "ok"


async def test_close_is_idempotent_and_closed_store_refuses(
    store_factory: Callable[[], Store],
) -> None:
    s = store_factory()
    await s.open()
    await s.close()
    await s.close()
    with pytest.raises(StoreError):
        await s.claim("a", 1, T0, LEASE)


# -- maintenance ----------------------------------------------------------------------------------


async def test_prune_seen_needs_both_old_timestamp_and_old_sighting(store: Store) -> None:
    await store.ingest(batch([1, 2], at=100.0))  # call_ts ts(1), ts(2)
    await store.ingest(batch([3], at=200.0))
    await store.ingest(batch([50], at=100.0))
    # Older than ts(10) by timestamp: 1, 2, 3. First seen before 150: 1, 2 (and 50, too new).
    assert await store.prune_seen("acct", ts(10), 150.0) == 2
    assert await store.prune_seen("other", ts(10), 9_999.0) == 0
    again = await store.ingest(batch([1, 2, 3, 50]))
    assert again.new_rids == [1, 2]


async def test_claims_of_one_record_share_one_body_object(store: Store) -> None:
    """A large record to many subscribers exists once in memory, not once per claim."""
    body = b'{"data":"%s"}' % (b"x" * 1_000_000)
    await store.ingest(IngestBatch("acct", [rec(1, body=body)], ["a", "b", "c"], T0, None))
    claimed = [d for sub in "abc" for d in await store.claim(sub, 10, T0, LEASE)]
    assert [d.body for d in claimed] == [body] * 3
    assert claimed[0].body is claimed[1].body is claimed[2].body
    # A retry claims the same record again: still the one object.
    await store.finish([result(claimed[0].id, Outcome.RETRY, next_at=T0)])
    [again] = await store.claim("a", 10, T0 + 1, LEASE)
    assert again.body is claimed[1].body


async def test_a_record_stored_after_a_pruned_one_gets_its_own_body(store: Store) -> None:
    """Shared bodies are keyed by what was stored, not only a row id a backend may reuse."""
    await store.ingest(IngestBatch("acct", [rec(1, body=b"old")], ["a"], 100.0, None))
    [first] = await store.claim("a", 10, T0, LEASE)
    await store.finish([result(first.id, Outcome.DELIVERED)])
    assert await store.prune_delivered(500.0) == 1
    await store.ingest(IngestBatch("acct", [rec(2, body=b"new")], ["a"], 600.0, None))
    [second] = await store.claim("a", 10, T0, LEASE)
    assert (second.rid, second.body) == (2, b"new")


async def test_prune_delivered_keeps_anything_unfinished(store: Store) -> None:
    await store.ingest(batch([1, 2, 3, 4], ("a", "b"), at=100.0))
    await store.ingest(batch([5], ("a", "b"), at=900.0))
    claimed = await store.claim("a", 10, T0, LEASE) + await store.claim("b", 10, T0, LEASE)
    by = {(d.subscriber, d.rid): d.id for d in claimed}

    def ok(sub: str, rid: int) -> Finished:
        return result(by[sub, rid], Outcome.DELIVERED)

    await store.finish(
        [
            ok("a", 1), ok("b", 1),  # fully delivered: pruned
            ok("a", 2),  # b still in flight: kept
            ok("a", 3), result(by["b", 3], Outcome.DEAD, status=400),  # dead: kept
            ok("a", 4), result(by["b", 4], Outcome.RETRY, next_at=5_000.0),  # pending: kept
            ok("a", 5), ok("b", 5),  # received after the cutoff: kept
        ]
    )  # fmt: skip
    assert await store.prune_delivered(500.0) == 1
    assert await store.prune_delivered(500.0) == 0
    stats = (await store.stats()).subscribers
    assert (stats["a"].delivered, stats["b"].delivered) == (4, 1)
    assert [d.rid for d in await store.dead_letters("b", 10)] == [3]
    # Pruned records stay de-duplicated: that is the seen table's job.
    assert (await store.ingest(batch([1]))).duplicates == 1


async def test_replay_by_subscriber_by_id_and_all(store: Store) -> None:
    await store.ingest(batch([1, 2, 3], ("a", "b")))
    claimed = await store.claim("a", 10, T0, LEASE) + await store.claim("b", 10, T0, LEASE)
    await store.finish(
        [result(d.id, Outcome.DEAD, at=2_000.0 + d.rid, status=400) for d in claimed]
    )
    letters = await store.dead_letters(None, 10)
    assert len(letters) == 6
    assert [d.dead_at for d in letters] == sorted((d.dead_at for d in letters), reverse=True)
    assert len(await store.dead_letters(None, 2)) == 2

    b_ids = [d.id for d in await store.dead_letters("b", 10)]
    assert await store.replay(None, b_ids[:1], 3_000.0) == 1
    assert await store.replay("a", None, 3_000.0) == 3
    assert await store.replay("a", None, 3_000.0) == 0
    assert await store.replay("a", b_ids, 3_000.0) == 0  # ids of another subscriber
    assert await store.replay(None, [], 3_000.0) == 0

    assert await store.claim("a", 10, 2_999.0, LEASE) == []
    replayed = await store.claim("a", 10, 3_000.0, LEASE)
    assert sorted(d.rid for d in replayed) == [1, 2, 3]
    assert {d.attempts for d in replayed} == {0}
    assert await store.replay(None, None, 3_000.0) == 2
    assert await store.dead_letters(None, 10) == []


async def test_stats_reports_accounts_subscribers_and_counts(store: Store) -> None:
    bad = [Quarantined(b"?", "no rid")]
    await store.ingest(IngestBatch("acct", [rec(1), rec(2)], ["a"], T0, ts(2), quarantined=bad))
    await store.mark_swept("acct", 1_500.0, ts(2))
    await store.set_account_status("acct", "backing_off", "HTTP 503", NOW)
    await store.set_account_status("idle", "auth_failed", "HTTP 401", NOW)
    await store.set_subscriber_disabled("z", "410 Gone", NOW)
    await store.claim("a", 1, T0, LEASE)

    stats = await store.stats()
    assert {k: dataclasses.asdict(v) for k, v in stats.accounts.items()} == {
        "acct": {"cursor": ts(2), "last_sweep": 1_500.0, "status": "backing_off",
                 "error": "HTTP 503"},
        "idle": {"cursor": None, "last_sweep": None, "status": "auth_failed", "error": "HTTP 401"},
    }  # fmt: skip
    assert {k: dataclasses.asdict(v) for k, v in stats.subscribers.items()} == {
        "a": {"pending": 1, "inflight": 1, "delivered": 0, "dead": 0, "disabled": None,
              "oldest_pending_at": T0, **NO_CIRCUIT,
              "orphaned_since": None},
        "z": {"pending": 0, "inflight": 0, "delivered": 0, "dead": 0, "disabled": "410 Gone",
              "oldest_pending_at": None, **NO_CIRCUIT,
              "orphaned_since": None},
    }  # fmt: skip
    assert (stats.quarantined, stats.seen) == (1, 2)


# -- several instances: the same contract on every backend ----------------------------------------


async def test_instances_register_heartbeat_and_die(store: Store) -> None:
    await store.register_instance("one", T0, 10.0)
    await store.register_instance("two", T0, 30.0)
    assert await store.live_instances(T0 + 5) == ["one", "two"]
    assert await store.heartbeat("one", T0 + 9, 10.0)
    assert await store.live_instances(T0 + 15) == ["one", "two"]
    assert await store.live_instances(T0 + 19) == ["two"]  # alive until 19, not at 19
    await store.recover_dead_instances(T0 + 19)
    assert not await store.heartbeat("one", T0 + 20, 10.0)  # declared dead: register again
    await store.register_instance("one", T0 + 20, 10.0)
    assert await store.live_instances(T0 + 20) == ["one", "two"]
    assert not await store.heartbeat("never", T0, 10.0)


async def test_account_lease_is_exclusive_renewable_and_taken_over_after_ttl(store: Store) -> None:
    assert await store.acquire_account_lease("acct", "one", 15.0, T0)
    assert not await store.acquire_account_lease("acct", "two", 15.0, T0 + 14.9)
    assert await store.acquire_account_lease("other", "two", 60.0, T0)  # per account
    assert await store.acquire_account_lease("acct", "one", 15.0, T0 + 10)  # renews
    assert await store.renew_account_lease("acct", "one", 15.0, T0 + 20)  # until T0 + 35
    assert not await store.renew_account_lease("acct", "two", 15.0, T0 + 20)
    assert await store.account_lease_holders(T0 + 30) == {"acct": "one", "other": "two"}

    assert not await store.acquire_account_lease("acct", "two", 15.0, T0 + 34.9)
    assert await store.acquire_account_lease("acct", "two", 15.0, T0 + 35)  # expired: taken
    assert not await store.renew_account_lease("acct", "one", 15.0, T0 + 36)  # one lost it
    await store.release_account_lease("acct", "one")  # not the holder: changes nothing
    assert await store.account_lease_holders(T0 + 36) == {"acct": "two", "other": "two"}
    await store.release_account_lease("acct", "two")
    assert await store.acquire_account_lease("acct", "one", 15.0, T0 + 37)  # free at once


async def test_dead_instances_leases_are_freed(store: Store) -> None:
    await store.register_instance("one", T0, 10.0)
    assert await store.acquire_account_lease("acct", "one", 60.0, T0)
    await store.recover_dead_instances(T0 + 10)
    assert await store.account_lease_holders(T0 + 10) == {}
    assert await store.acquire_account_lease("acct", "two", 60.0, T0 + 10)


@pytest.mark.parametrize(("requests", "per"), [(1, 10.0), (20, 60.0), (200, 900.0)])
async def test_budget_admits_at_most_requests_in_any_window(
    store: Store, requests: int, per: float
) -> None:
    now, admitted = T0, []
    while now < T0 + 3 * per:
        wait = await store.spend_budget("key-1", now, requests, per)
        if wait == 0:
            admitted.append(now)
        else:
            assert wait > 0
            now += wait
    # At most `requests` in every closed window of `per` seconds ...
    for i, start in enumerate(admitted):
        assert sum(1 for t in admitted[i:] if t <= start + per) <= requests
    # ... and the budget is really used (the bucket's safety margin costs about 1%).
    assert len(admitted) >= 3 * requests * 0.95
    assert await store.spend_budget("key-2", now, requests, per) == 0  # per key


async def test_budget_pause_blocks_every_spend_until_it_ends(store: Store) -> None:
    assert await store.spend_budget("key", T0, 100, 60.0) == 0
    await store.pause_budget("key", T0 + 30)
    await store.pause_budget("key", T0 + 10)  # shorter: changes nothing
    assert await store.spend_budget("key", T0 + 5, 100, 60.0) == pytest.approx(25.0)
    assert await store.spend_budget("key", T0 + 30, 100, 60.0) == 0


async def test_budget_charges_together_answer_as_one_after_the_other(store: Store) -> None:
    # Several keys, one of them charged until it refuses, one paused: the batch (one
    # transaction on SQLite) answers each charge as the same spends one by one would.
    def charges(prefix: str) -> list[Charge]:
        return [
            *(Charge(f"{prefix}-busy", T0 + i * 0.1, 3, 10.0) for i in range(5)),
            Charge(f"{prefix}-paused", T0, 100, 60.0),
            *(Charge(f"{prefix}-k{i}", T0 + 1, 6, 10.0, 2) for i in range(3)),
            Charge(f"{prefix}-busy", T0 + 5, 3, 10.0),
        ]

    for prefix in ("one", "all"):
        await store.pause_budget(f"{prefix}-paused", T0 + 30)
    one_by_one = [
        await store.spend_budget(c.key_id, c.now, c.requests, c.per, c.burst)
        for c in charges("one")
    ]
    together = await store.spend_budgets(charges("all"))
    assert together == pytest.approx(one_by_one)
    assert together[0] == 0.0 and all(w > 0 for w in together[1:5])  # burst 1, then full
    assert together[5] == pytest.approx(30.0)  # the pause
    assert together[6:] == [0.0] * 4  # fresh keys, and the busy one drained by T0 + 5
    # What the batch charged is durable as one by one: the next spends agree too.
    after = [await store.spend_budget(f"{p}-busy", T0 + 6, 3, 10.0) for p in ("one", "all")]
    assert after[0] == pytest.approx(after[1]) and after[0] > 0
    assert await store.spend_budgets([]) == []


async def test_renew_claims_extends_only_what_is_still_claimed(store: Store) -> None:
    await store.ingest(batch([1, 2, 3], ("a",)))
    d1, d2, d3 = await store.claim("a", 10, T0, LEASE)
    await store.finish([result(d3.id, Outcome.DELIVERED, token=d3.token)])
    assert await store.renew_claims([d1, d2, d3], T0 + 20, LEASE) == sorted([d1.id, d2.id])
    assert await store.claim("a", 10, T0 + LEASE + 1, LEASE) == []  # renewed: still held
    assert await store.next_due("a") == T0 + 20 + LEASE
    await store.release_claims([d1])
    assert [d.id for d in await store.claim("a", 10, T0 + LEASE + 1, LEASE)] == [d1.id]
    assert await store.renew_claims([], T0, LEASE) == []
    await store.release_claims([])


async def test_finish_with_the_claims_token_applies(store: Store) -> None:
    await store.ingest(batch([1], ("a",)))
    [d] = await store.claim("a", 10, T0, LEASE)
    await store.finish([result(d.id, Outcome.RETRY, status=500, next_at=T0 + 60, token=d.token)])
    [again] = await store.claim("a", 10, T0 + 60, LEASE)
    assert (again.id, again.attempts) == (d.id, 1)
    await store.finish([result(again.id, Outcome.DELIVERED, token=again.token)])
    assert (await store.stats()).subscribers["a"].delivered == 1


async def test_listen_reports_listening_first(store: Store) -> None:
    heard: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
    task = asyncio.create_task(
        store.listen(lambda kind, subject: heard.put_nowait((kind, subject)))
    )
    try:
        assert await asyncio.wait_for(heard.get(), GENEROUS) == ("listening", "")
        await store.notify("config", "reloaded")  # a no-op where nobody else can listen
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
