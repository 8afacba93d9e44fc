"""Upstream-side measurements: (2) end-to-end latency, (4) catch-up ingest, (5) idle cost and
(6) the upstream request budget.

The simulated WebFones API runs in this (parent) process on the default asyncio loop, so its
``visible_at`` and request-log times are ``time.monotonic()``, the clock the receivers and
workers use too (on Linux it is one clock for every process).
"""

from __future__ import annotations

import asyncio
import bisect
from datetime import UTC, datetime, timedelta
from typing import Any

from bench import procs
from bench.ctx import Ctx, Row, drop_state, fmt
from bench.plan import relay_settings
from bench.stats import percentile, summarize
from relay.sim.simulator import SimulatedWebFones, key_id

LATENCY_SUBSCRIBERS = 5
INGEST_SUBSCRIBERS = 10
IDLE_SUBSCRIBERS = 10


def latency_key(rep: int) -> str:
    return f"bench-latency-key-{rep:04d}"


def idle_key(rep: int) -> str:
    return f"bench-idle-key-{rep:04d}"


INGEST_KEY = "bench-ingest-key-0001"
EMPTY_KEY = "bench-empty-key-0001"


def upstream_keys(reps: int) -> dict[str, str]:
    keys = {INGEST_KEY: "ingest", EMPTY_KEY: "empty"}
    keys.update({latency_key(r): f"latency{r}" for r in range(reps)})
    keys.update({idle_key(r): f"idle{r}" for r in range(reps)})
    return keys


def upstream_ts(seconds_ago: float) -> str:
    return (datetime.now(UTC) - timedelta(seconds=seconds_ago)).strftime("%Y-%m-%d %H:%M:%S")


async def steady(sim: SimulatedWebFones, key: str, rate: float, seconds: float) -> list[int]:
    """Add a record every ``1/rate`` s for ``seconds`` (absolute schedule, no drift)."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    rids = []
    for i in range(int(rate * seconds)):
        await asyncio.sleep(max(0.0, start + i / rate - loop.time()))
        rids.append(sim.add_record(key)["rid"])
    return rids


async def _wait_count(url: str, want: int, timeout: float) -> int:
    """Poll a receiver's request count until it reaches ``want`` or ``timeout`` passes."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        got = int((await procs.http_json("GET", f"{url}/_stats"))["requests"])
        if got >= want or loop.time() > deadline:
            return got
        await asyncio.sleep(0.1)


async def latency(ctx: Ctx, sim: SimulatedWebFones, upstream: str) -> None:
    """(2) From a record becoming visible upstream to its arrival at each of 5 receivers."""
    sz = ctx.sizes
    poll = 1.0
    p50s: list[float] = []
    p99s: list[float] = []
    floor50: list[float] = []
    floor99: list[float] = []
    curves: list[list[float]] = []
    async with procs.bench_receiver("record", LATENCY_SUBSCRIBERS, ctx.logs) as urls:
        received = 0
        for rep in range(sz.reps):
            key = latency_key(rep)
            state = ctx.state("latency")
            subs = [(f"r{i}", f"{u}/r{i}") for i, u in enumerate(urls)]
            settings = relay_settings(
                state,
                upstream,
                key,
                subs,
                max_in_flight=4,
                upstream={
                    "poll_interval": f"{poll}s",
                    "recent_window": "5s",
                    "start_from": upstream_ts(60),
                },
            )
            job = {"kind": "relay", "settings": settings, "max_seconds": sz.latency_seconds + 60}
            try:
                async with procs.child("relay-latency", procs.worker_args(job), ctx.logs) as w:
                    await w.event("started", 60)
                    await asyncio.sleep(1.5)  # past the first poll
                    rids = await steady(sim, key, sz.latency_rate, sz.latency_seconds)
                    received += len(rids) * len(urls)
                    await _wait_count(urls[0], received, 15.0)
                    w.send("stop")
                    await w.event("result", 60)
                    await w.exited(30)
            finally:
                drop_state(state)
            arrivals: dict[tuple[int, int], float] = {}
            # One process serves every listener: one dump has them all.
            for listener, rid, t in await procs.http_json("GET", f"{urls[0]}/_dump"):
                arrivals.setdefault((listener, rid), t)  # first arrival (at-least-once)
            wanted = set(rids)
            lat = sorted(
                (t - sim.visible_at[rid]) * 1000
                for (_, rid), t in arrivals.items()
                if rid in wanted
            )
            if len(lat) < len(rids) * len(urls):
                ctx.note("latency", f"run {rep + 1}: {len(lat)} of {len(rids) * len(urls)} arrived")
            polls = sorted(e.at for e in sim.request_log if e.key == key_id(key))
            floor = sorted(wait_for_poll(polls, sim.visible_at[r]) * 1000 for r in rids)
            p50s.append(percentile(lat, 50))
            p99s.append(percentile(lat, 99))
            floor50.append(percentile(floor, 50))
            floor99.append(percentile(floor, 99))
            curves.append(lat)
    ctx.data["latency"] = {"curves": curves, "poll": poll}
    p50, p99 = summarize(p50s), summarize(p99s)
    ctx.add(
        "latency",
        Row(
            "p50, visible upstream → received",
            f"≤ {poll * 500 + 20:.0f} ms",
            fmt(p50, " ms"),
            f"next poll: {fmt(summarize(floor50), ' ms')}",
            ctx.check(p50.median <= poll * 500 + 20),
        ),
    )
    ctx.add(
        "latency",
        Row(
            "p99, visible upstream → received",
            f"≤ {poll * 1000 + 100:.0f} ms",
            fmt(p99, " ms"),
            f"next poll: {fmt(summarize(floor99), ' ms')}",
            ctx.check(p99.median <= poll * 1000 + 100),
        ),
    )
    ctx.note(
        "latency",
        f"{sz.latency_rate:g} records/s, produced steadily for {sz.latency_seconds:g} s per run, "
        f"to {LATENCY_SUBSCRIBERS} subscribers; poll interval {poll:g} s. The baseline is the "
        "wait until the upstream saw the next poll: what a relay with zero processing would get.",
    )


def wait_for_poll(polls: list[float], visible: float) -> float:
    """From ``visible`` to the first of the (sorted) ``polls`` at or after it."""
    i = bisect.bisect_left(polls, visible)
    return polls[i] - visible if i < len(polls) else float("nan")


async def ingest(ctx: Ctx, sim: SimulatedWebFones, upstream: str) -> None:
    """(4) One upstream response with N records for 10 subscribers: records/s until every
    delivery is durably queued, and peak RSS against the response size."""
    sz = ctx.sizes
    n = sz.ingest_records
    for _ in range(n):
        sim.add_record(INGEST_KEY)
    rates: list[float] = []
    peaks: list[float] = []
    bases: list[float] = []
    sizes: list[float] = []
    async with procs.bench_receiver("hang", 1, ctx.logs) as hole:
        subs = [(f"s{i}", f"{hole[0]}/s{i}") for i in range(INGEST_SUBSCRIBERS)]
        for rep in range(sz.reps):
            for key in (EMPTY_KEY, INGEST_KEY) if rep % 2 == 0 else (INGEST_KEY, EMPTY_KEY):
                state = ctx.state("ingest")
                settings = relay_settings(
                    state, upstream, key, subs, max_in_flight=4,
                    upstream={"start_from": upstream_ts(86400)},
                )  # fmt: skip
                job: dict[str, Any] = {"kind": "relay", "settings": settings}
                if key == INGEST_KEY:
                    job.update(goal={"ingested": n}, max_seconds=120)
                else:
                    job.update(max_seconds=3)  # idle relay, same subscribers: the baseline
                try:
                    res = await procs.run_job("relay-ingest", job, ctx.logs, 180)
                finally:
                    drop_state(state)
                if key == EMPTY_KEY:
                    bases.append(res["maxrss_mb"])
                    continue
                if res["t_done"] is None:
                    raise RuntimeError(f"ingest: {res['ingests']} in time")
                big = max(res["responses"], key=lambda r: r["bytes"])
                end = max(i["end"] for i in res["ingests"])
                rates.append(n / (end - big["at"]))
                peaks.append(res["maxrss_mb"])
                sizes.append(big["bytes"] / 2**20)
    size = summarize(sizes).median
    base = summarize(bases)
    rate, peak = summarize(rates), summarize(peaks)
    limit = 3 * size + base.median
    ctx.add(
        "ingest",
        Row(
            f"{n:,} records in one response, {INGEST_SUBSCRIBERS} subscribers",
            "≥ 20,000 records/s",
            fmt(rate, " records/s"),
            f"{n * INGEST_SUBSCRIBERS:,} deliveries queued",
            ctx.check(rate.median >= 20_000),
        ),
    )
    ctx.add(
        "ingest",
        Row(
            "peak RSS of the relay",
            f"≤ 3 × {size:.1f} MB + baseline = {limit:.0f} MB",
            fmt(peak, " MB", 1),
            f"baseline (idle relay) {fmt(base, ' MB', 1)}",
            ctx.check(peak.median <= limit),
        ),
    )
    ctx.note(
        "ingest",
        "Timed from the moment the whole response had arrived (before parsing) to the commit of "
        "the last ingest. The subscribers accept connections and never answer, so delivery does "
        "not compete with the ingest being measured.",
    )


async def idle(ctx: Ctx, sim: SimulatedWebFones, upstream: str, receiver: str) -> None:
    """(5) One account polled every second, 10 subscribers, no new calls."""
    sz = ctx.sizes
    window = {"warmup": 3.0, "seconds": sz.idle_seconds}
    jobs = []
    for rep in range(sz.reps):
        key = idle_key(rep)
        hour_ago = datetime.now(UTC) - timedelta(hours=1)
        for _ in range(20):
            sim.add_record(key, started_at=hour_ago)
        subs = [(f"s{i}", f"{receiver}/s{i}") for i in range(IDLE_SUBSCRIBERS)]
        settings = relay_settings(
            ctx.state("idle"), upstream, key, subs, max_in_flight=4,
            upstream={"poll_interval": "1s"},
        )  # fmt: skip
        jobs.append(
            {
                "kind": "relay",
                "settings": settings,
                "idle_window": window,
                "max_seconds": sz.idle_seconds + 30,
            }
        )
    bare = {
        "kind": "bare_poll",
        "url": f"{upstream}/call_log/records_after_timestamp?timestamp={upstream_ts(600)}",
        "headers": {"x-api-key": idle_key(0)},
        "interval": 1.0,
        "idle_window": window,
        "max_seconds": sz.idle_seconds + 30,
    }
    timeout = sz.idle_seconds + 90
    results = await asyncio.gather(
        *(procs.run_job(f"relay-idle-{i}", j, ctx.logs, timeout) for i, j in enumerate(jobs)),
        procs.run_job("bare-poll", bare, ctx.logs, timeout),
    )
    for job in jobs:
        drop_state(job["settings"]["state"])
    relays, base = results[:-1], results[-1]
    cpu = summarize([100 * r["window"]["cpu"] / r["window"]["seconds"] for r in relays])
    rss = summarize([r["maxrss_mb"] for r in relays])
    polls = summarize([float(sum(r["polls"].values())) for r in relays])
    base_cpu = 100 * base["window"]["cpu"] / base["window"]["seconds"]
    ctx.add(
        "idle",
        Row(
            f"CPU over {sz.idle_seconds:g} s, 1 account polled every 1 s, "
            f"{IDLE_SUBSCRIBERS} subscribers",
            "≤ 2 % of one core",
            fmt(cpu, " %", 2),
            f"bare poller {base_cpu:.2f} %",
            ctx.check(cpu.median <= 2.0),
        ),
    )
    ctx.add(
        "idle",
        Row(
            "peak RSS",
            "≤ 80 MB",
            fmt(rss, " MB", 1),
            f"bare poller {base['maxrss_mb']:.1f} MB",
            ctx.check(rss.median <= 80.0),
        ),
    )
    ctx.note(
        "idle",
        f"The {sz.reps} idle relays ran at the same time, each its own process with its own "
        f"account (polls per run: {fmt(polls)}); CPU is each process's own user+system time.",
    )


async def budget(ctx: Ctx) -> None:
    """(6) A scaled budget with two accounts on one key polling far faster than it allows,
    against the simulated API's own sliding-window enforcement."""
    sz = ctx.sizes
    requests, per = sz.budget
    poll = 0.05
    keys = [f"bench-budget-key-{i:04d}" for i in range(sz.reps)]
    sim = SimulatedWebFones({k: f"budget{i}" for i, k in enumerate(keys)}, rate_limit=sz.budget)
    upstream = await sim.start()
    try:
        jobs = []
        for key in keys:
            settings = relay_settings(
                ctx.state("budget"),
                upstream,
                key,
                [],
                accounts=[{"name": "one", "api_key": key}, {"name": "two", "api_key": key}],
                upstream={
                    "poll_interval": f"{poll}s",
                    "start_from": "now",
                    "rate_limit": {"requests": requests, "per": f"{per}s"},
                },
            )
            jobs.append({"kind": "relay", "settings": settings, "max_seconds": sz.budget_seconds})
        await asyncio.gather(
            *(
                procs.run_job(f"relay-budget-{i}", j, ctx.logs, sz.budget_seconds + 60)
                for i, j in enumerate(jobs)
            )
        )
        for job in jobs:
            drop_state(job["settings"]["state"])
    finally:
        await sim.stop()
    worst = [sim.max_window_count(per, key=k) for k in keys]
    limited = [
        sum(1 for e in sim.request_log if e.key == key_id(k) and e.status == 429) for k in keys
    ]
    sent = [sum(1 for e in sim.request_log if e.key == key_id(k)) for k in keys]
    demand = 2 * per / poll
    ctx.add(
        "budget",
        Row(
            f"busiest {per:g} s window, budget {requests} per {per:g} s",
            f"≤ {requests}",
            fmt(summarize([float(w) for w in worst])) + f" (max {max(worst)})",
            f"settings alone would send ~{demand:,.0f}",
            ctx.check(max(worst) <= requests),
        ),
    )
    ctx.add(
        "budget",
        Row(
            "429 answers",
            "0",
            str(sum(limited)),
            f"{sum(sent)} requests in {sz.budget_seconds:g} s × {sz.reps} runs",
            ctx.check(sum(limited) == 0),
        ),
    )
    ctx.note(
        "budget",
        f"Two accounts share one API key and poll every {poll * 1000:g} ms; the simulated API "
        f"enforces {requests} requests per {per:g} s per key with a closed sliding window. "
        f"The {sz.reps} runs ran at the same time, each with its own key.",
    )
