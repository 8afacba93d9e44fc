"""(8) PostgreSQL and several instances: delivery throughput of 1 and 3 relay instances on one
PostgreSQL schema against one instance on SQLite, in the same run; end-to-end latency; ingest
rate; CPU per delivery in the relay processes and in the PostgreSQL backends serving them.

Every relay is a ``pgrelay`` job of :mod:`bench.worker` (the real ``run_relay``; the store is
chosen by the state URL, so the SQLite run goes through the very same code). Deliveries are
queued by direct ingest before the relays start, with the subscriber disabled; the clock starts
when it is enabled again (PostgreSQL: one NOTIFY wakes every instance's claimer) or, on SQLite,
when the one relay has started. It stops when the receiver has answered every delivery (counted
at the receiver, polled every 20 ms, so the figures carry up to 20 ms of that). CPU is read with
psutil: each relay process, and each PostgreSQL backend whose application_name names the
benchmark's schema (the server's background writers are shared with anything else on it and
not counted).

Without a reachable PostgreSQL (``RELAY_BENCH_POSTGRES_DSN``, else ``RELAY_TEST_POSTGRES_DSN``,
else the local trust-auth server) the section says so and measures nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import uuid
from dataclasses import dataclass
from typing import Any

import psutil

from bench import procs
from bench.ctx import Ctx, Row, drop_state, fmt
from bench.delivery import UPSTREAM_KEY
from bench.plan import ACCOUNT, relay_settings
from bench.polling import steady, upstream_ts, wait_for_poll
from bench.stats import percentile, summarize
from bench.worker import record_chunks
from relay.core.models import IngestBatch
from relay.sim.simulator import SimulatedWebFones, key_id
from relay.store.base import Store
from relay.store.sqlite.store import SqliteStore

SEC = "cluster"
DSN = os.environ.get("RELAY_BENCH_POSTGRES_DSN") or os.environ.get(
    "RELAY_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/postgres"
)
SUB = "s0"
CHUNK = 5_000  # records per ingest transaction when queueing
LATENCY_POLL = 1.0


def latency_key(label: str) -> str:
    return f"bench-cluster-{label}-key"


def upstream_keys() -> dict[str, str]:
    """Keys this section's latency runs poll (one quiet account each)."""
    return {latency_key(k): f"cluster-{k}" for k in ("sqlite", "pg1", "pg3")}


@dataclass
class Run:
    rate: float  # deliveries/s
    relay_us: float  # relay CPU per delivery, all instances
    pg_us: float  # PostgreSQL backend CPU per delivery
    ingest_rate: float  # records/s queued by direct ingest


async def _reachable() -> str | None:
    try:
        import asyncpg
    except ImportError:
        return "asyncpg is not installed"
    try:
        conn = await asyncpg.connect(DSN, timeout=10)
    except Exception as exc:  # any failure to connect: no PostgreSQL for this section
        return f"PostgreSQL unreachable ({type(exc).__name__})"
    await conn.close()
    return None


def _url(schema: str) -> str:
    return f"{DSN}{'&' if '?' in DSN else '?'}schema={schema}"


async def _sql(sql: str, *args: Any) -> list[Any]:
    import asyncpg

    conn = await asyncpg.connect(DSN)
    try:
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()


async def _backend_cpu(schema: str) -> dict[int, float]:
    """CPU seconds so far of every backend serving this schema's relays."""
    rows = await _sql(
        "SELECT pid FROM pg_stat_activity WHERE application_name = $1",
        f"webfones-relay:{schema}",
    )
    out: dict[int, float] = {}
    for row in rows:
        with contextlib.suppress(psutil.Error):
            t = psutil.Process(row[0]).cpu_times()
            out[row[0]] = float(t.user + t.system)
    return out


def _open(state: str) -> Store:
    if state.startswith("postgresql://"):
        from relay.store.postgres import PostgresStore

        return PostgresStore(state)
    return SqliteStore(state)


async def _queue(state: str, total: int) -> float:
    """Queue ``total`` deliveries for the (disabled) subscriber; returns records/s."""
    store = _open(state)
    await store.open()
    try:
        await store.set_subscriber_disabled(SUB, "bench: not yet", time.time())
        at = time.time() - 1.0
        t0 = time.perf_counter()
        for records in record_chunks(total, CHUNK, at):
            await store.ingest(IngestBatch(ACCOUNT, records, [SUB], at, None))
        seconds = time.perf_counter() - t0
        if not state.startswith("postgresql://"):
            # SQLite has one owner: enabled now, the relay starts delivering as it starts.
            await store.set_subscriber_disabled(SUB, None, time.time())
    finally:
        await store.close()
    return total / seconds


async def _ok(url: str) -> int:
    return int((await procs.http_json("GET", f"{url}/_stats"))["ok"])


async def _until(url: str, want: int, timeout: float) -> float:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while (got := await _ok(url)) < want:
        if loop.time() > deadline:
            raise RuntimeError(f"{got} of {want} delivered in {timeout:.0f}s")
        await asyncio.sleep(0.02)  # measurement resolution, see the module docstring
    return time.monotonic()


async def deliver_rate(ctx: Ctx, upstream: str, rx: procs.Child, n: int, pg: bool) -> Run:
    """One throughput run: ``n`` instances on a fresh schema (or one on a SQLite file)."""
    total, c = ctx.sizes.cluster_deliveries, ctx.sizes.concurrency
    schema = f"relay_bench_{uuid.uuid4().hex[:10]}"
    state = _url(schema) if pg else ctx.state("cluster")
    subs = [(SUB, f"{rx.url}/{SUB}")]
    job = {
        "kind": "pgrelay",
        "settings": relay_settings(state, upstream, UPSTREAM_KEY, subs, max_in_flight=c),
        "max_seconds": 300,
    }
    try:
        ingest = await _queue(state, total)
        base = await _ok(rx.url)
        async with contextlib.AsyncExitStack() as stack:
            workers = [
                await stack.enter_async_context(
                    procs.child(f"cluster-{i}", procs.worker_args(job), ctx.logs)
                )
                for i in range(n)
            ]
            started = [await w.event("started", 120) for w in workers]
            cpu0 = [w.cpu() for w in workers]
            if pg:
                store = _open(state)
                await store.open()
                pg0 = await _backend_cpu(schema)
                t0 = time.monotonic()
                await store.set_subscriber_disabled(SUB, None, time.time())  # wakes them all
                await store.close()
            else:
                t0, pg0 = float(started[0]["t"]), {}
            t1 = await _until(rx.url, base + total, 240)
            relay_cpu = sum(w.cpu() - c0 for w, c0 in zip(workers, cpu0, strict=True))
            pg1 = await _backend_cpu(schema) if pg else {}
            pg_cpu = sum(v - pg0.get(pid, 0.0) for pid, v in pg1.items())
            for w in workers:
                w.send("stop")
            for w in workers:
                await w.event("result", 60)
    finally:
        if pg:
            await _sql(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        else:
            drop_state(state)
    return Run(total / (t1 - t0), 1e6 * relay_cpu / total, 1e6 * pg_cpu / total, ingest)


@dataclass
class Latency:
    """One latency run, in ms: from a record becoming visible upstream to its first arrival
    (``p50``, ``p99``); the part of it after the upstream saw the next poll (``beyond50``: the
    relay's own work, the same for every phase of the producer against the polls); that wait
    alone (``wait50``: what a relay with zero processing would get)."""

    p50: float
    p99: float
    beyond50: float
    wait50: float


async def latency(ctx: Ctx, sim: SimulatedWebFones, upstream: str, label: str, n: int) -> Latency:
    """One latency run of ``n`` instances (``label`` sqlite: one on a SQLite file); adds its
    row."""
    schema = f"relay_bench_{uuid.uuid4().hex[:10]}"
    state = ctx.state("cluster-latency") if label == "sqlite" else _url(schema)
    key = latency_key(label)
    async with procs.bench_receiver("record", 1, ctx.logs, f"rx-cluster-{label}") as urls:
        settings = relay_settings(
            state,
            upstream,
            key,
            [(SUB, f"{urls[0]}/{SUB}")],
            max_in_flight=4,
            upstream={
                "poll_interval": f"{LATENCY_POLL}s",
                "recent_window": "5s",
                "start_from": upstream_ts(60),
            },
        )
        job = {"kind": "pgrelay", "settings": settings, "max_seconds": 300}
        try:
            async with contextlib.AsyncExitStack() as stack:
                workers = [
                    await stack.enter_async_context(
                        procs.child(f"cluster-lat-{i}", procs.worker_args(job), ctx.logs)
                    )
                    for i in range(n)
                ]
                for w in workers:
                    await w.event("started", 120)
                await asyncio.sleep(1.5)  # past the first poll, as in section 2
                rids = await steady(sim, key, ctx.sizes.latency_rate, ctx.sizes.latency_seconds)
                loop = asyncio.get_running_loop()
                deadline = loop.time() + 60
                while int((await procs.http_json("GET", f"{urls[0]}/_stats"))["requests"]) < len(
                    rids
                ):
                    if loop.time() > deadline:
                        break
                    await asyncio.sleep(0.1)
                for w in workers:
                    w.send("stop")
                for w in workers:
                    await w.event("result", 60)
        finally:
            if label == "sqlite":
                drop_state(state)
            else:
                await _sql(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        arrivals: dict[int, float] = {}
        for _, rid, t in await procs.http_json("GET", f"{urls[0]}/_dump"):
            arrivals.setdefault(rid, t)
    polls = sorted(e.at for e in sim.request_log if e.key == key_id(key))
    got = [r for r in rids if r in arrivals]
    lat = sorted((arrivals[r] - sim.visible_at[r]) * 1000 for r in got)
    waits = [wait_for_poll(polls, sim.visible_at[r]) * 1000 for r in got]
    # A record that arrived was seen by a poll at or after it became visible: no NaN here.
    beyond = sorted(
        (arrivals[r] - sim.visible_at[r]) * 1000 - w for r, w in zip(got, waits, strict=True)
    )
    if len(lat) < len(rids):
        ctx.note(SEC, f"latency {label}: {len(lat)} of {len(rids)} arrived")
    run = Latency(
        percentile(lat, 50), percentile(lat, 99), percentile(beyond, 50), percentile(waits, 50)
    )
    name = "SQLite, 1 instance" if label == "sqlite" else f"PostgreSQL, {n} instance(s)"
    ctx.add(
        SEC,
        Row(
            f"latency p50 / p99, {name}, poll every {LATENCY_POLL:g}s",
            "informational",
            f"{run.p50:,.0f} / {run.p99:,.0f} ms",
            f"{len(lat)} records; p50 after the next poll {run.beyond50:,.0f} ms, "
            f"of the wait for it {run.wait50:,.0f} ms",
            None,
        ),
    )
    return run


async def postgres(ctx: Ctx, sim: SimulatedWebFones, upstream: str) -> None:
    """(8) The PostgreSQL row(s)."""
    reason = await _reachable()
    if reason is not None:
        ctx.note(SEC, f"not measured: {reason} at RELAY_BENCH_POSTGRES_DSN")
        return
    runs: dict[str, list[Run]] = {"sqlite": [], "pg1": [], "pg3": []}
    async with procs.fast_receiver(ctx.logs, "rx-cluster") as rx:
        for rep in range(ctx.sizes.cluster_reps):
            order = [("sqlite", 1, False), ("pg1", 1, True), ("pg3", 3, True)]
            for key, n, pg in order if rep % 2 == 0 else reversed(order):
                runs[key].append(await deliver_rate(ctx, upstream, rx, n, pg))
    rate = {k: summarize([r.rate for r in v]) for k, v in runs.items()}
    vs_sqlite = summarize(
        [p.rate / s.rate for p, s in zip(runs["pg1"], runs["sqlite"], strict=True)]
    )
    three = summarize([t.rate / o.rate for t, o in zip(runs["pg3"], runs["pg1"], strict=True)])
    total, c = ctx.sizes.cluster_deliveries, ctx.sizes.concurrency
    what = f"{total:,} deliveries, 1 subscriber, {c} in flight per instance"
    ctx.add(
        SEC,
        Row(
            f"{what}: PostgreSQL, 1 instance",
            "≥ 0.70 × SQLite",
            f"{fmt(rate['pg1'], '/s')}; ratio {fmt(vs_sqlite, digits=2)}",
            f"SQLite: {fmt(rate['sqlite'], '/s')}",
            ctx.check(vs_sqlite.median >= 0.70),
        ),
    )
    ctx.add(
        SEC,
        Row(
            f"{what}: PostgreSQL, 3 instances",
            "≥ 0.95 × 1 instance (no slower, within noise)",
            f"{fmt(rate['pg3'], '/s')}; ratio {fmt(three, digits=2)}",
            f"1 instance: {fmt(rate['pg1'], '/s')}",
            ctx.check(three.median >= 0.95),
        ),
    )
    for key, label in (("sqlite", "SQLite"), ("pg1", "PostgreSQL ×1"), ("pg3", "PostgreSQL ×3")):
        relay_us = summarize([r.relay_us for r in runs[key]])
        pg_us = summarize([r.pg_us for r in runs[key]])
        ctx.add(
            SEC,
            Row(
                f"CPU per delivery, {label}: relay processes / PostgreSQL backends",
                "informational",
                f"{fmt(relay_us, ' µs')} / {fmt(pg_us, ' µs')}",
                "",
                None,
            ),
        )
    ingest = {k: summarize([r.ingest_rate for r in runs[k]]) for k in ("sqlite", "pg1")}
    ctx.add(
        SEC,
        Row(
            f"ingest (records stored and queued, {CHUNK:,} per transaction): PostgreSQL",
            "informational",
            fmt(ingest["pg1"], " records/s"),
            f"SQLite: {fmt(ingest['sqlite'], ' records/s')}",
            None,
        ),
    )
    base = await latency(ctx, sim, upstream, "sqlite", 1)
    await latency(ctx, sim, upstream, "pg1", 1)
    three_lat = await latency(ctx, sim, upstream, "pg3", 3)
    # The relay's own part of the latency, compared: the raw p50 of one run also carries where
    # the producer's grid fell against the polls (a 100 ms grid against 1 s polls locks, and
    # one record in ten lands on either side of a poll: ~405 or ~505 ms from run to run).
    added = three_lat.beyond50 - base.beyond50
    ctx.add(
        SEC,
        Row(
            "latency p50 after the next poll, PostgreSQL ×3 minus SQLite ×1",
            "≤ 100 ms",
            f"{added:,.0f} ms",
            f"after the next poll: SQLite {base.beyond50:,.0f} ms, ×3 {three_lat.beyond50:,.0f} "
            f"ms; whole p50 {base.p50:,.0f} and {three_lat.p50:,.0f} ms",
            ctx.check(added <= 100),
        ),
    )
    ctx.note(
        SEC,
        "Bounds: on this 2-core machine the relays, PostgreSQL and the receiver share two cores, "
        "so three instances cannot add CPU, only overlap their waits on the database; the CPU "
        "per delivery rows are what scale with cores.",
    )
