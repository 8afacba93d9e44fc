"""Catch-up responses too large to parse at once: streamed, validated and stored in batches.

The thresholds are shrunk so that a response of a hundred simulated records goes the streamed
way in several batches. Pure tests hold :class:`~relay.body.StreamedBody` to the whole-body
parser (same records or a clean fallback); the rest run the real
:class:`~relay.poller.AccountPoller` and SQLite store against the simulated WebFones and check
what a catch-up must guarantee: each record stored once, the cursor moved only by the last
batch, and nothing lost when a response breaks half-way.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import time
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relay.core.errors import MalformedResponse, StoreFull
from relay.core.models import IngestBatch, IngestResult
from relay.http1.client import Http1Client
from relay.ingest import body as parsing
from relay.ingest import intake
from relay.ingest.body import FetchResult, StreamAbandoned, StreamedBody, parse_body
from relay.ingest.budget import KeyBudget
from relay.ingest.poller import AccountPoller
from relay.ingest.upstream import WebFonesClient
from relay.sim.simulator import Fault, SimulatedWebFones
from relay.store.sqlite.store import SqliteStore
from tests.helpers import (
    GENEROUS,
    KEY_A,
    Sub,
    ago,
    make_settings,
    new_secret,
    rids,
    running,
    sqlite_rows,
    verify_all,
)

JSON = "application/json"
SUBSCRIBERS = ("crm", "chat")
SLICE, BATCH = 7, 21  # a batch is stored once three slices are in it
N = 95  # records in a catch-up (about 31 KB): four batches of 21, then the last of 11
EARLY = N // BATCH  # batches stored before the last one


@pytest.fixture(autouse=True)
def small_thresholds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(parsing, "STREAM_ABOVE", 4096)
    monkeypatch.setattr(intake, "SLICE_RECORDS", SLICE)
    monkeypatch.setattr(intake, "BATCH_RECORDS", BATCH)


# -- the streamed parse against the whole-body parse --------------------------------------------


def stream(body: bytes, size: int = 3) -> tuple[list[Any], FetchResult | StreamAbandoned]:
    """Every record a StreamedBody yields, then its result, or the StreamAbandoned it raised."""
    streamed = StreamedBody(JSON, body)
    got: list[Any] = []
    try:
        for batch in streamed.batches(size):
            assert 0 < len(batch) == size
            got.extend(batch)
    except StreamAbandoned as exc:
        return got, exc
    assert streamed.result is not None
    return got, streamed.result


def whole(body: bytes) -> FetchResult | str:
    try:
        return parse_body(JSON, body)
    except MalformedResponse as exc:
        return str(exc)


def same(a: Any, b: Any) -> bool:
    """Equal, and serialised alike (so 1 and 1.0, or key order, count as different)."""
    return a == b and json.dumps(a) == json.dumps(b)


def doc(records: list[Any], **members: Any) -> bytes:
    return orjson.dumps({"success": True, "count": len(records), "records": records, **members})


RECORDS = [
    {
        "rid": 211_000 + i,
        "call_timestamp": f"2025-07-01 20:{i // 60:02d}:{i % 60:02d}",
        "cidname_outside": ["B WHITTAKER", "Zoë 🎉 王芳", "", "a]}{[b"][i % 4],
        "duration": i * 7,
        "billsec": i / 3,
        "recording": None if i % 3 else f"{i}.wav",
        "x_extra": {"nested": [i, {"deeper": [True, False]}]} if i % 5 == 0 else [],
    }
    for i in range(20)
]

# (body, whether the top level takes a pass over the whole body before the records stream)
STREAMABLE = {
    "documented-order": (doc(RECORDS), False),
    "no-count": (orjson.dumps({"success": True, "records": RECORDS}), False),
    "count-after-records": (
        orjson.dumps({"success": True, "records": RECORDS, "count": 20}),
        True,
    ),
    "success-last": (orjson.dumps({"records": RECORDS, "count": 20, "success": True}), True),
    "extra-members-both-sides": (
        orjson.dumps(
            {"server": {"v": [1, 2]}, "success": True, "records": RECORDS, "page": None, "n": [3]}
        ),
        False,
    ),
    "pretty-printed": (
        json.dumps({"success": True, "count": 20, "records": RECORDS}, indent=2).encode(),
        False,
    ),
    "escapes-of-every-kind": (
        json.dumps(
            {"success": True, "records": [{**r, "note": 'a"b\\c\n\t/\u0001é😀\\'} for r in RECORDS]}
        ).encode(),
        False,
    ),
    "escaped-ascii": (doc(RECORDS).replace(b"WHITTAKER", b"WHI\\u0054TAKER"), True),
    "record-fields-named-like-members": (
        doc([{**r, "count": 1, "success": False, "records": []} for r in RECORDS]),
        True,
    ),
    "not-all-records-objects": (doc([*RECORDS[:5], "oops", 17, None, [1], *RECORDS[5:]]), False),
    "no-records": (doc([], padding="x" * 100), False),
    "duplicate-member-before-records": (
        b'{"success": false, "success": true, "records": [1, 2]}',
        True,
    ),
    "brackets-inside-strings": (
        doc([{**r, "s": "[" * 500 + "{" * 500 + '"]'} for r in RECORDS]),
        False,
    ),
    "integer-at-64-bits": (doc([{**RECORDS[0], "big": 2**63 - 1}]), False),
}


@pytest.mark.parametrize(("body", "full_pass"), STREAMABLE.values(), ids=STREAMABLE.keys())
def test_streamed_records_are_the_whole_body_records(
    monkeypatch: pytest.MonkeyPatch, body: bytes, full_pass: bool
) -> None:
    outline = parsing._outline
    passes: list[bool] = []

    def spy(body: bytes, *, stop_at_records: bool) -> Any:
        passes.append(stop_at_records)
        return outline(body, stop_at_records=stop_at_records)

    monkeypatch.setattr(parsing, "_outline", spy)
    got, result = stream(body)
    expected = whole(body)
    assert isinstance(expected, FetchResult)
    assert isinstance(result, FetchResult), f"abandoned: {result}"
    assert same(got + result.records, expected.records)
    assert result.count == expected.count
    # The documented order costs no pass over the whole body before the records.
    assert (False in passes) == full_pass


# (body, whether the problem is known before any record is yielded)
NOT_STREAMABLE = {
    "lone-high-surrogate": (json.dumps({"success": True, "records": [{"a": "x\ud83d"}]}), True),
    "lone-low-surrogate": (json.dumps({"success": True, "records": [{"a": "\ude00x"}]}), True),
    "integer-past-64-bits": (json.dumps({"success": True, "records": [1, 2**64]}), False),
    "number-past-float-range": ('{"success": true, "records": [1, 2, 1e400]}', False),
    "byte-order-mark": ("\ufeff" + json.dumps({"success": True, "records": [1]}), True),
    "top-level-list": (json.dumps([{"success": True, "records": [1]}]), True),
    "success-false": ('{"success": false, "records": [1, 2, 3]}', True),
    "success-missing": ('{"records": [1, 2, 3]}', True),
    "success-false-after-records": ('{"records": [1, 2, 3], "success": false}', True),
    "success-overruled-after-records": (
        '{"success": true, "records": [1, 2, 3], "success": false}',
        True,
    ),
    "records-null": ('{"success": true, "records": null}', True),
    "records-object": ('{"success": true, "records": {"item": 1}}', True),
    "records-twice": ('{"success": true, "records": [1, 2], "records": [3]}', True),
    "records-item-member": ('{"success": true, "records": [1, 2], "records.item": 3}', True),
    "escaped-duplicate-key": (
        '{"success": true, "records": [1, 2], "succ\\u0065ss": false}',
        True,
    ),
    "too-deep": ('{"success": true, "records": [' + "[" * 100 + "]" * 100 + "]}", True),
    "too-deep-with-escapes": (
        '{"success": true, "records": ["\\n", ' + "[" * 100 + "]" * 100 + "]}",
        True,
    ),
    "truncated": (json.dumps({"success": True, "records": [1, 2, 3, 4, 5]})[:-3], False),
    "trailing-garbage": (json.dumps({"success": True, "records": [1, 2, 3, 4]}) + " x", False),
    "invalid-utf8": ('{"success": true, "records": [1, 2, 3, 4, "\udcff"]}', False),
    "syntax-error-in-a-record": ('{"success": true, "records": [1, 2, 3, 4, {"a": }]}', False),
}


@pytest.mark.parametrize(("text", "before_any"), NOT_STREAMABLE.values(), ids=NOT_STREAMABLE.keys())
def test_what_the_stream_cannot_match_is_left_to_the_whole_body_parser(
    text: str, before_any: bool
) -> None:
    body = text.encode("utf-8", "surrogateescape")
    got, result = stream(body, size=1)
    assert isinstance(result, StreamAbandoned)
    expected = whole(body)
    if before_any:
        assert got == []
    else:
        assert isinstance(expected, str) or same(got, expected.records[: len(got)])
    # The fallback is the whole-body parse itself: same records, same error message.
    try:
        fallback: FetchResult | str = StreamedBody(JSON, body).whole()
    except MalformedResponse as exc:
        fallback = str(exc)
    if isinstance(expected, str):
        assert fallback == expected
    else:
        assert isinstance(fallback, FetchResult)
        assert same(fallback.records, expected.records)


@pytest.mark.parametrize("backslash", [False, True], ids=["plain", "with-escapes"])
def test_deep_nesting_is_refused_before_the_streaming_parser_sees_it(backslash: bool) -> None:
    # ijson keeps a path string per open level: 500,000 levels would take terabytes.
    body = b'{"success": true, "records": [' + (b'"\\n", ' if backslash else b"")
    body += b"[" * 500_000 + b"]" * 500_000 + b"]}"
    tracemalloc.start()
    try:
        got, result = stream(body)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert isinstance(result, StreamAbandoned) and got == []
    assert peak < 20 * len(body), f"peak {peak / 2**20:.0f} MiB"
    assert isinstance(whole(body), str)  # the whole-body parser refuses it too


def string_spans(body: bytes) -> list[tuple[int, int]]:
    """Where each JSON string of ``body`` starts and ends (its quotes), by a plain scan."""
    spans, start, escaped = [], -1, False
    for i, byte in enumerate(body):
        if start < 0:
            if byte == ord('"'):
                start = i
        elif escaped:
            escaped = False
        elif byte == ord("\\"):
            escaped = True
        elif byte == ord('"'):
            spans.append((start, i))
            start = -1
    return spans


LONG = 5 * parsing._PIECE  # a token spread over five pieces, were they cut every _PIECE bytes


@pytest.mark.parametrize(
    "padding",
    [
        b"x" * LONG,
        b'\\"' * (LONG // 2),  # every quote in it escaped
        b"\\\\" * (LONG // 2) + b'\\"',  # backslash runs longer than the look-back
        b"]}," * (LONG // 3),
        "é😀 & < >".encode() * (LONG // 14),
    ],
    ids=["plain", "escaped-quotes", "backslash-runs", "brackets", "unicode"],
)
def test_a_long_token_spans_at_most_two_pieces_of_the_parser_feed(padding: bytes) -> None:
    # yajl lexes an unfinished token again with every piece: a 50 MB string cut every 64 KiB
    # took 20 s. The cuts never change what is parsed, only how fast.
    records = [{"rid": i, "name": 'a"b'} for i in range(2000)]
    body = b'{"padding": "' + padding + b'", "n": 0.' + b"7" * LONG + b', "success": true, '
    body += b'"records": ' + orjson.dumps(records) + b"}"
    pieces = list(parsing._pieces(body))
    assert b"".join(pieces) == body
    assert all(len(p) >= parsing._PIECE for p in pieces[:-1])
    ends = [0]
    for piece in pieces:
        ends.append(ends[-1] + len(piece))
    for first, last in string_spans(body):
        spanned = sum(1 for a, b in itertools.pairwise(ends) if a <= last and b > first)
        assert spanned <= 2, f"string at {first}..{last} spans {spanned} pieces"
    got, result = stream(body, size=500)
    assert isinstance(result, FetchResult) and same(got + result.records, records)


json_text = st.text(
    st.characters(exclude_categories=())  # surrogates too
    | st.sampled_from(["\ud83d", "\ude00", "😀", "é", '"', "\\", "\n", "]", "{", "\u0000"]),
    max_size=6,
)
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | json_text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(json_text, inner, max_size=3),
    max_leaves=8,
)


@st.composite
def response_bodies(draw: st.DrawFn) -> bytes:
    """A valid JSON answer: ``success`` and ``records`` (with ``count`` or another member or
    neither) in any order, now and then a repeated member with an odd value (the last one wins
    in a whole parse), written ASCII-escaped, as UTF-8, indented, or by orjson."""
    records = draw(st.lists(json_values, max_size=12))
    usual = {"success": True, "records": records, "count": len(records), "other": records[:1]}
    names = ["success", "records"]
    names += draw(st.lists(st.sampled_from(["count", "other"]), max_size=2, unique=True))
    members = [(name, usual[name]) for name in draw(st.permutations(names))]
    for name in draw(st.lists(st.sampled_from(["success", "records", "count"]), max_size=2)):
        members.insert(draw(st.integers(0, len(members))), (name, draw(json_values)))
    style = draw(st.sampled_from(["ascii", "utf8", "pretty", "orjson"]))

    def write(ascii_only: bool) -> bytes:
        indent = 1 if style == "pretty" else None
        parts = [
            f"{json.dumps(name)}: {json.dumps(value, ensure_ascii=ascii_only, indent=indent)}"
            for name, value in members
        ]
        return ("{" + ", ".join(parts) + "}").encode()

    try:
        body = write(ascii_only=style == "ascii")
    except UnicodeEncodeError:  # a lone surrogate has no UTF-8 form, only an escape
        body = write(ascii_only=True)
    if style == "orjson":
        with contextlib.suppress(TypeError):  # beyond what orjson writes: keep json's
            body = orjson.dumps(json.loads(body))
    return body


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=response_bodies())
def test_anything_yielded_is_what_the_whole_body_parser_returns(body: bytes) -> None:
    expected = whole(body)
    got, result = stream(body)
    if isinstance(expected, str):
        # Generated bodies are valid JSON: any failure is in the top level, known up front.
        assert got == [] and isinstance(result, StreamAbandoned)
        return
    assert same(got, expected.records[: len(got)])
    if isinstance(result, FetchResult):
        assert same(got + result.records, expected.records)
        assert result.count == expected.count


# -- the real poller against the simulated WebFones ----------------------------------------------


@dataclass
class Rig:
    """One account's poller, its SQLite store, and every batch the store committed."""

    sim: SimulatedWebFones
    poller: AccountPoller
    store: SqliteStore
    path: Path
    batches: list[IngestBatch]
    notified: list[list[str]]

    async def cursor(self) -> str | None:
        return (await self.store.load_cursor("alpha")).newest

    def stored_rids(self) -> list[int]:
        return sorted(r for (r,) in sqlite_rows(self.path, "SELECT rid FROM records"))

    def queued(self) -> list[tuple[int, str]]:
        sql = "SELECT r.rid, d.subscriber FROM deliveries d JOIN records r ON r.id = d.record_id"
        return sorted(sqlite_rows(self.path, sql))

    def data(self) -> dict[int, bytes]:
        """Each stored record's webhook body from ``"data"`` on (the rest holds a timestamp)."""
        rows = sqlite_rows(self.path, "SELECT rid, body FROM records")
        return {rid: body[body.index(b',"data":') :] for rid, body in rows}

    def quarantined(self) -> list[tuple[bytes, str]]:
        return sorted(sqlite_rows(self.path, "SELECT raw, reason FROM quarantine"))

    def serve(self, body: bytes) -> None:
        """Answer the next poll with exactly ``body``."""
        self.sim.fail_next(Fault.raw(200, JSON, body), key=KEY_A)

    def cursor_moves(self, since: int = 0) -> list[str | None]:
        return [b.cursor for b in self.batches[since:]]


RigFactory = Callable[..., Awaitable[Rig]]


@pytest.fixture
async def make_rig(sim: SimulatedWebFones, tmp_path: Path) -> AsyncIterator[RigFactory]:
    async with Http1Client() as session, _rigs(sim, tmp_path, session) as make:
        yield make


@contextlib.asynccontextmanager
async def _rigs(
    sim: SimulatedWebFones, tmp_path: Path, session: Http1Client
) -> AsyncIterator[RigFactory]:
    stores: list[SqliteStore] = []

    async def make(name: str = "rig", **upstream_settings: Any) -> Rig:
        path = tmp_path / f"{name}.db"
        subs = [Sub(s, f"http://127.0.0.1:9/{s}", new_secret()) for s in SUBSCRIBERS]
        conf = make_settings(tmp_path, sim.url, subs, upstream=upstream_settings, state=str(path))
        store = SqliteStore(str(path))
        await store.open()
        stores.append(store)
        batches: list[IngestBatch] = []
        ingest = store.ingest

        async def spy(batch: IngestBatch) -> IngestResult:
            outcome = await ingest(batch)
            batches.append(batch)  # committed
            return outcome

        store.ingest = spy  # type: ignore[method-assign]
        client = WebFonesClient(session, sim.url, timeout=GENEROUS, max_response_bytes=64 << 20)
        notified: list[list[str]] = []
        account = conf.upstream.accounts[0]
        the_poller = AccountPoller(
            account, conf, store, client, KeyBudget(1000, 1), notified.append, time.time
        )
        return Rig(sim, the_poller, store, path, batches, notified)

    try:
        yield make
    finally:
        for store in stores:
            await store.close()


def add_records(sim: SimulatedWebFones, n: int = N) -> list[dict[str, Any]]:
    """``n`` records stamped over the last few minutes, oldest first."""
    return [sim.add_record(KEY_A, started_at=ago(600 - i)) for i in range(n)]


def newest(records: list[dict[str, Any]]) -> str:
    return max(r["call_timestamp"] for r in records)


def body_of(records: list[Any], **members: Any) -> bytes:
    return orjson.dumps({"success": True, "count": len(records), "records": records, **members})


async def test_a_large_response_is_stored_in_batches_and_the_cursor_moves_once(
    make_rig: RigFactory,
) -> None:
    rig = await make_rig()
    made = add_records(rig.sim)
    assert await rig.poller.poll_once() == N
    # Several transactions, each record in one of them, and only the last moves the cursor.
    assert [len(b.records) for b in rig.batches] == [BATCH] * EARLY + [N - EARLY * BATCH]
    assert rig.cursor_moves() == [None] * EARLY + [newest(made)]
    stored = [r.rid for b in rig.batches for r in b.records]
    assert sorted(stored) == sorted(r["rid"] for r in made)
    assert await rig.cursor() == newest(made)
    assert rig.stored_rids() == sorted(r["rid"] for r in made)
    assert rig.queued() == sorted((r["rid"], s) for r in made for s in SUBSCRIBERS)
    # Deliveries are announced batch by batch, not only at the end.
    assert len(rig.notified) == len(rig.batches)
    # Reading the same window again stores nothing twice.
    before = len(rig.batches)
    assert await rig.poller.poll_once() == 0
    assert rig.cursor_moves(before)[:-1] == [None] * (len(rig.batches) - before - 1)
    assert rig.queued() == sorted((r["rid"], s) for r in made for s in SUBSCRIBERS)


async def test_a_batch_is_stored_while_the_next_is_parsed_one_transaction_at_a_time(
    make_rig: RigFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    rig = await make_rig()
    made = add_records(rig.sim)
    slices = 0
    next_batch_parsed = asyncio.Event()
    prepare = intake.Intake._prepare

    def counting(self: intake.Intake, *args: Any, **kwargs: Any) -> None:
        nonlocal slices
        prepare(self, *args, **kwargs)
        slices += 1
        if slices > BATCH // SLICE:  # a slice of the second batch
            next_batch_parsed.set()

    monkeypatch.setattr(intake.Intake, "_prepare", counting)
    committed = rig.store.ingest
    storing = 0
    first_rids: list[int] = []

    async def held(batch: IngestBatch) -> IngestResult:
        nonlocal storing
        assert storing == 0, "two transactions of one catch-up at once"
        storing += 1
        try:
            if not first_rids:
                # The first batch is not done until the second is being parsed: with the
                # batches stored one after the other, this would time out.
                await asyncio.wait_for(next_batch_parsed.wait(), GENEROUS)
            first_rids.append(batch.records[0].rid)
            return await committed(batch)
        finally:
            storing -= 1

    rig.store.ingest = held  # type: ignore[method-assign]
    assert await rig.poller.poll_once() == N
    by_rid = [r["rid"] for r in made]
    assert first_rids == [by_rid[i * BATCH] for i in range(EARLY + 1)]  # in response order
    assert rig.cursor_moves() == [None] * EARLY + [newest(made)]
    assert rig.stored_rids() == sorted(by_rid)


async def test_a_store_failure_half_way_stores_nothing_after_it_and_keeps_the_cursor(
    make_rig: RigFactory,
) -> None:
    rig = await make_rig()
    made = add_records(rig.sim)
    committed = rig.store.ingest
    calls = 0

    async def failing_second(batch: IngestBatch) -> IngestResult:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise StoreFull("disk full")
        return await committed(batch)

    rig.store.ingest = failing_second  # type: ignore[method-assign]
    with pytest.raises(StoreFull):
        await rig.poller.poll_once()
    assert calls == 2, "no batch after the failed one was stored"
    assert rig.stored_rids() == sorted(r["rid"] for r in made[:BATCH])
    assert await rig.cursor() is None
    # The store recovers: the same window is read again and completes.
    assert await rig.poller.poll_once() == N - BATCH
    assert await rig.cursor() == newest(made)
    assert rig.queued() == sorted((r["rid"], s) for r in made for s in SUBSCRIBERS)


def truncated(records: list[dict[str, Any]]) -> bytes:
    return body_of(records)[:-2]  # the records' "]" and the object's "}" never came


def bad_tail(records: list[dict[str, Any]]) -> bytes:
    return body_of(records)[:-1] + b", }"  # found once every record has been read


def bad_record(records: list[dict[str, Any]]) -> bytes:
    head = b",".join(orjson.dumps(r) for r in records[:60])
    tail = b",".join(orjson.dumps(r) for r in records[60:])
    return b'{"success": true, "records": [' + head + b', {"rid": 1, "x": }, ' + tail + b"]}"


@pytest.mark.parametrize(
    ("breakage", "stored_early"),
    [(truncated, 0), (bad_tail, EARLY * BATCH), (bad_record, 60 // BATCH * BATCH)],
    ids=["truncated", "bad-tail", "bad-record"],
)
async def test_a_response_broken_half_way_keeps_the_cursor_and_loses_nothing(
    make_rig: RigFactory,
    caplog: pytest.LogCaptureFixture,
    breakage: Callable[[list[dict[str, Any]]], bytes],
    stored_early: int,
) -> None:
    caplog.set_level(logging.INFO, logger="relay")
    rig = await make_rig()
    made = add_records(rig.sim)
    rig.serve(breakage(made))
    with pytest.raises(MalformedResponse, match="body is not valid JSON"):
        await rig.poller.poll_once()
    # What came before the break may be stored (brackets that do not balance are seen up
    # front), but the cursor stays.
    assert len(rig.stored_rids()) == stored_early
    assert rig.cursor_moves() == [None] * len(rig.batches)
    assert await rig.cursor() is None
    assert "parsed whole" in caplog.text
    # The upstream recovers: the same window is read again and completes.
    assert await rig.poller.poll_once() == N - stored_early
    assert await rig.cursor() == newest(made)
    assert rig.stored_rids() == sorted(r["rid"] for r in made)
    assert rig.queued() == sorted((r["rid"], s) for r in made for s in SUBSCRIBERS)


async def test_invalid_records_in_a_large_response_are_quarantined_once(
    make_rig: RigFactory,
) -> None:
    rig = await make_rig()
    made = add_records(rig.sim, 40)
    no_rid = {**made[0], "rid": None, "call_timestamp": made[-1]["call_timestamp"]}
    bad_time = {**made[1], "rid": 5, "call_timestamp": "soon"}
    made += add_records(rig.sim, 40)
    records = [*made[:30], no_rid, *made[30:60], bad_time, *made[60:]]
    rig.serve(body_of(records))
    assert await rig.poller.poll_once() == len(made)
    rig.serve(body_of(records))
    assert await rig.poller.poll_once() == 0
    assert [reason for _, reason in rig.quarantined()] == [
        "call_timestamp malformed",
        "rid missing",
    ]
    assert rig.stored_rids() == sorted(r["rid"] for r in made)
    assert await rig.cursor() == newest(made)


BIG = b"123456789012345678901234567890"
# (changes to one record, how the body is written, batches stored before the last)
ODD_RECORDS = {
    # orjson cannot write it: spliced in; the streaming parser fails on it, 70 records in.
    "integer-past-64-bits": ({"uniqueid": "BIG"}, "orjson", 70 // BATCH),
    "lone-surrogate": ({"cidname_outside": "Caller \ud83d"}, "json", 0),
    "escapes": ({"cidname_outside": 'Zoë "Z" \\ 🎉\n', "did": "\u0000\u202e"}, "json", EARLY),
    "floats": (
        {"duration": 0.1, "billsec": 1e-7, "x": -0.0, "y": 1.7976931348623157e308},
        "orjson",
        EARLY,
    ),
}


@pytest.mark.parametrize(
    ("changes", "writer", "early"), ODD_RECORDS.values(), ids=ODD_RECORDS.keys()
)
async def test_odd_values_are_stored_exactly_as_from_a_small_response(
    make_rig: RigFactory,
    monkeypatch: pytest.MonkeyPatch,
    changes: dict[str, Any],
    writer: str,
    early: int,
) -> None:
    streamed, small = await make_rig("streamed"), await make_rig("small")
    made = add_records(streamed.sim)
    records = [*made[:70], {**made[70], **changes}, *made[71:]]
    if writer == "json":  # escapes everything past ASCII, and lone surrogates
        body = json.dumps({"success": True, "count": N, "records": records}).encode()
    else:
        body = body_of(records).replace(b'"BIG"', BIG)
    streamed.serve(body)
    assert await streamed.poller.poll_once() == N
    assert streamed.cursor_moves() == [None] * early + [newest(made)]
    monkeypatch.setattr(parsing, "STREAM_ABOVE", len(body))
    small.serve(body)
    assert await small.poller.poll_once() == N
    assert len(small.batches) == 1
    assert streamed.data() == small.data()  # byte for byte
    assert BIG not in body or BIG in streamed.data()[made[70]["rid"]]
    assert await small.cursor() == newest(made)


async def test_records_in_another_member_order_stream_too(
    make_rig: RigFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="relay")
    rig = await make_rig()
    made = add_records(rig.sim)
    rig.serve(orjson.dumps({"records": made, "count": N, "success": True}))
    assert await rig.poller.poll_once() == N
    assert rig.cursor_moves() == [None] * EARLY + [newest(made)]
    assert "parsed whole" not in caplog.text


async def test_a_count_above_the_records_keeps_the_cursor(
    make_rig: RigFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="relay")
    rig = await make_rig()
    made = add_records(rig.sim)
    # count after the records: known only once the whole body has been read
    rig.serve(orjson.dumps({"success": True, "records": made, "count": N + 3}))
    assert await rig.poller.poll_once() == N
    assert len(rig.batches) > 1 and rig.cursor_moves() == [None] * len(rig.batches)
    assert await rig.cursor() is None
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert warnings == [f"count says {N + 3} but {N} records came; using the records, cursor kept"]
    assert await rig.poller.poll_once() == 0  # the honest answer
    assert await rig.cursor() == newest(made)


async def test_start_from_now_remembers_a_large_response_without_delivering_it(
    make_rig: RigFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="relay")
    rig = await make_rig(start_from="now")
    made = add_records(rig.sim)
    assert await rig.poller.poll_once() == N
    assert len(rig.batches) > 1 and all(b.seed_only for b in rig.batches)
    assert rig.queued() == [] and rig.notified == []
    assert await rig.cursor() == newest(made)
    seeded = [r.getMessage() for r in caplog.records if "start_from=now" in r.getMessage()]
    assert seeded == [f"start_from=now: {N} existing records remembered, not delivered"]
    late = rig.sim.add_record(KEY_A, started_at=ago(1))
    assert await rig.poller.poll_once() == 1
    assert rig.queued() == [(late["rid"], s) for s in sorted(SUBSCRIBERS)]


@pytest.mark.parametrize("twin_differs", [False, True], ids=["identical-twin", "different-twin"])
async def test_a_rid_repeated_across_batches_is_treated_as_in_a_small_response(
    make_rig: RigFactory, monkeypatch: pytest.MonkeyPatch, twin_differs: bool
) -> None:
    streamed, small = await make_rig("streamed"), await make_rig("small")
    made = add_records(streamed.sim)
    twin = {**made[3], "cidname_outside": "SOMEONE ELSE"} if twin_differs else made[3]
    body = body_of([*made[:80], twin, *made[80:]])
    streamed.serve(body)
    assert await streamed.poller.poll_once() == N
    # Three batches were stored before the one with the repeat; then the whole-body path.
    assert streamed.cursor_moves() == [None] * (80 // BATCH) + [newest(made)]
    monkeypatch.setattr(parsing, "STREAM_ABOVE", len(body))
    small.serve(body)
    assert await small.poller.poll_once() == N
    assert streamed.quarantined() == small.quarantined()
    assert len(small.quarantined()) == twin_differs
    assert streamed.data() == small.data()
    assert await streamed.cursor() == await small.cursor() == newest(made)


async def test_a_catch_up_through_the_running_relay_delivers_each_record_once(
    sim: SimulatedWebFones, receiver_factory: Any, tmp_path: Path
) -> None:
    rx, url = await receiver_factory()
    secret = new_secret()
    made = add_records(sim, 150)
    conf = make_settings(tmp_path, sim.url, [Sub("crm", url, secret)])
    async with running(conf):
        await rx.wait_count(len(made), timeout=GENEROUS)
    assert sorted(rids(rx.requests)) == sorted(r["rid"] for r in made)
    by_rid = {r["rid"]: r for r in made}
    for sent in verify_all(rx.requests, secret):
        assert sent["data"] == by_rid[sent["data"]["rid"]]


# -- issue 8 #9: numbers beyond double range, whole-body and streamed -----------------------------


@pytest.mark.parametrize("padding", [0, 2 * 1024 * 1024], ids=["whole-body", "streamed"])
@pytest.mark.parametrize(
    "bad", [b"1e999", b"-1e999", b"1" + b"0" * 400 + b".5"], ids=["1e999", "-1e999", "long"]
)
def test_a_number_beyond_double_range_rejects_its_record_only(padding: int, bad: bytes) -> None:
    from relay.ingest.body import NON_FINITE, parse_200

    filler = b"x" * padding
    body = (
        b'{"success":true,"count":3,"records":['
        b'{"rid":1,"call_timestamp":"2025-07-01 14:53:43","big":12345678901234567890123},'
        b'{"rid":2,"call_timestamp":"2025-07-01 14:53:44","dur":' + bad + b"},"
        b'{"rid":3,"call_timestamp":"2025-07-01 14:53:45","pad":"' + filler + b'"}]}'
    )
    parsed = parse_200("application/json", body)
    if isinstance(parsed, StreamedBody):
        records: list[Any] = []
        try:
            for batch in parsed.batches(1000):
                records.extend(batch)
            assert parsed.result is not None
            result = parsed.result
        except StreamAbandoned:  # the streaming parser refuses it; the whole parse decides
            result = parsed.whole()
    else:
        result = parsed
    assert isinstance(result, FetchResult)
    assert [r["rid"] for r in result.records] == [1, 3]
    assert result.records[0]["big"] == 12345678901234567890123
    [(record, reason)] = result.rejected
    assert reason == NON_FINITE and record["rid"] == 2
    # Kept aside as it was sent: the literal number, not inf, null or Infinity.
    assert (
        orjson.dumps(record)
        == b'{"rid":2,"call_timestamp":"2025-07-01 14:53:44","dur":' + bad + b"}"
    )
