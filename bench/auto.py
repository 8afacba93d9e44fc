"""(13) ``poll_interval: auto``: latency against the floor the budget allows, and the budget kept.

For 1, 2 and 5 accounts on one API key, with a scaled budget (30 requests per 30 s: about one
poll a second for the key), a relay polls with ``auto`` while calls are written steadily; each
account's records go to a receiver listener of their own. Measured per accounts-count: p50/p99
from a record becoming visible upstream to its arrival, beside the floor the formula of
:mod:`relay.core.cadence` gives (``q * interval``: a relay with zero processing), and, from the
simulated upstream's own log (it enforces the budget per key with a closed sliding window), the
429 answers and the busiest window. The baseline in the same run is also the old default, one
account polled every 5 s. All relays of a repetition run at the same time, each its own process
with its own key.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from bench import procs
from bench.ctx import Ctx, Row, drop_state, fmt
from bench.plan import relay_settings
from bench.polling import steady, upstream_ts
from bench.stats import percentile, summarize
from relay.core.cadence import auto_interval
from relay.sim.simulator import SimulatedWebFones, key_id

DEFAULT_POLL = 5.0  # the default before auto: the baseline run
BASELINE = 0  # the accounts-count that marks the 5 s run


def _key(rep: int, accounts: int) -> str:
    return f"bench-auto-key-{rep:02d}-{accounts:02d}"


async def auto(ctx: Ctx) -> None:
    """(13) Latency and budget with ``poll_interval: auto``, 1/2/5 accounts on one key."""
    sz = ctx.sizes
    per = sz.auto_budget[1]
    counts = (*sz.auto_accounts, BASELINE)
    keys = {_key(r, n): f"auto{r}-{n}" for r in range(sz.reps) for n in counts}
    sim = SimulatedWebFones(keys, rate_limit=sz.auto_budget, seed=5)
    upstream = await sim.start()
    lat: dict[int, list[list[float]]] = {n: [] for n in counts}
    worst: dict[int, list[int]] = {n: [] for n in counts}
    limited: dict[int, int] = dict.fromkeys(counts, 0)
    sent: dict[int, int] = dict.fromkeys(counts, 0)
    listeners = sum(max(1, n) for n in counts)
    try:
        async with procs.bench_receiver("record", listeners, ctx.logs, "rx-auto") as urls:
            for rep in range(sz.reps):
                got = await _repetition(ctx, sim, upstream, urls, rep, counts)
                for n, samples in got.items():
                    lat[n].append(samples)
                    key = key_id(_key(rep, n))
                    worst[n].append(sim.max_window_count(per, key=_key(rep, n)))
                    limited[n] += sum(
                        1 for e in sim.request_log if e.key == key and e.status == 429
                    )
                    sent[n] += sum(1 for e in sim.request_log if e.key == key)
    finally:
        await sim.stop()
    _report(ctx, lat, worst, limited, sent)


async def _repetition(
    ctx: Ctx,
    sim: SimulatedWebFones,
    upstream: str,
    urls: list[str],
    rep: int,
    counts: tuple[int, ...],
) -> dict[int, list[float]]:
    """One repetition: a relay per accounts-count at once; latencies (ms) per count."""
    sz = ctx.sizes
    requests, per = sz.auto_budget
    jobs: dict[int, dict[str, Any]] = {}
    listener_of: dict[int, list[int]] = {}
    next_listener = 0
    for n in counts:
        key = _key(rep, n)
        names = [f"a{i}" for i in range(max(1, n))]
        listener_of[n] = list(range(next_listener, next_listener + len(names)))
        next_listener += len(names)
        subs = [(f"r{i}", f"{urls[j]}/r{i}") for i, j in zip(names, listener_of[n], strict=True)]
        settings = relay_settings(
            ctx.state("auto"),
            upstream,
            key,
            subs,
            max_in_flight=4,
            accounts=[{"name": name, "api_key": key} for name in names],
            upstream={
                "poll_interval": "auto" if n else f"{DEFAULT_POLL:g}s",
                "recent_window": "1m",
                "start_from": upstream_ts(60),
                "rate_limit": {"requests": requests, "per": f"{per:g}s"},
            },
        )
        # Each account's records go to its own listener only.
        for sub, name in zip(settings["subscribers"], names, strict=True):
            sub["accounts"] = [name]
        jobs[n] = {"kind": "relay", "settings": settings, "max_seconds": sz.auto_seconds + 120}
    produced: dict[int, list[int]] = {}
    try:
        async with contextlib.AsyncExitStack() as stack:
            workers = {
                n: await stack.enter_async_context(
                    procs.child(f"relay-auto-{rep}-{n}", procs.worker_args(job), ctx.logs)
                )
                for n, job in jobs.items()
            }
            await asyncio.gather(*(w.event("started", 60) for w in workers.values()))
            before = int((await procs.http_json("GET", f"{urls[0]}/_stats"))["requests"])
            runs = await asyncio.gather(
                *(steady(sim, _key(rep, n), sz.auto_rate, sz.auto_seconds) for n in counts)
            )
            produced = dict(zip(counts, runs, strict=True))
            want = before + sum(len(produced[n]) * max(1, n) for n in counts)
            await _wait_count(urls[0], want, 2 * DEFAULT_POLL + 5 * max(counts) + 30)
            for w in workers.values():
                w.send("stop")
            for w in workers.values():
                await w.event("result", 60)
                await w.exited(30)
    finally:
        for job in jobs.values():
            drop_state(job["settings"]["state"])
    arrivals: dict[tuple[int, int], float] = {}
    for listener, rid, t in await procs.http_json("GET", f"{urls[0]}/_dump"):
        arrivals.setdefault((listener, rid), t)  # first arrival (at-least-once)
    out: dict[int, list[float]] = {}
    for n in counts:
        samples = [
            (arrivals[(j, rid)] - sim.visible_at[rid]) * 1000
            for rid in produced[n]
            for j in listener_of[n]
            if (j, rid) in arrivals
        ]
        missing = len(produced[n]) * len(listener_of[n]) - len(samples)
        if missing:
            ctx.note("auto", f"run {rep + 1}, {_label(n)}: {missing} deliveries did not arrive")
        out[n] = sorted(samples)
    return out


async def _wait_count(url: str, want: int, timeout: float) -> int:
    """Poll a receiver's request count until it reaches ``want`` or ``timeout`` passes."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        got = int((await procs.http_json("GET", f"{url}/_stats"))["requests"])
        if got >= want or loop.time() > deadline:
            return got
        await asyncio.sleep(0.2)


def _label(n: int) -> str:
    return "poll_interval 5 s, 1 account" if n == BASELINE else f"auto, {n} account(s) on 1 key"


def _report(
    ctx: Ctx,
    lat: dict[int, list[list[float]]],
    worst: dict[int, list[int]],
    limited: dict[int, int],
    sent: dict[int, int],
) -> None:
    sz = ctx.sizes
    requests, per = sz.auto_budget
    plot: dict[str, Any] = {"accounts": [], "p50": [], "p99": [], "floor50": [], "floor99": []}
    for n in (*sz.auto_accounts, BASELINE):
        interval = auto_interval(requests, per, n) if n else DEFAULT_POLL
        p50 = summarize([percentile(s, 50) for s in lat[n]])
        p99 = summarize([percentile(s, 99) for s in lat[n]])
        floor50, floor99 = 500 * interval, 990 * interval
        ratio = summarize([percentile(s, 50) / floor50 for s in lat[n]])
        label = _label(n)
        ctx.add(
            "auto",
            Row(
                f"p50, {label} (every {interval:.2f} s)",
                "≤ 1.10 × floor" if n else "informational",
                f"{fmt(p50, ' ms')}; ratio {fmt(ratio, '', 2)}",
                f"floor interval/2: {floor50:.0f} ms"
                + (f"; whole budget, no reserve: {500 * n * per / requests:.0f} ms" if n else ""),
                ctx.check(ratio.median <= 1.10) if n else None,
            ),
        )
        ctx.add(
            "auto",
            Row(
                f"p99, {label}",
                "informational",
                fmt(p99, " ms"),
                f"floor 0.99 × interval: {floor99:.0f} ms",
                None,
            ),
        )
        ctx.add(
            "auto",
            Row(
                f"429 answers / busiest {per:g} s window, {label}",
                f"0 / ≤ {requests}",
                f"{limited[n]} / {fmt(summarize([float(w) for w in worst[n]]))} "
                f"(max {max(worst[n])})",
                f"{sent[n]} requests in {sz.reps} runs",
                ctx.check(limited[n] == 0 and max(worst[n]) <= requests),
            ),
        )
        if n:
            plot["accounts"].append(n)
            plot["p50"].append([percentile(s, 50) for s in lat[n]])
            plot["p99"].append([percentile(s, 99) for s in lat[n]])
            plot["floor50"].append(floor50)
            plot["floor99"].append(floor99)
    ctx.data["auto"] = plot
    ctx.note(
        "auto",
        f"Budget {requests} requests per {per:g} s per key ({requests / per:g} a second on "
        f"average, as the default 900 per 15 min); calls written at {sz.auto_rate:g}/s per key for "
        f"{sz.auto_seconds:g} s per run, every account's records to its own subscriber. The "
        "floor is q × interval: the wait for the next poll alone, with interval from "
        "relay.core.cadence (the bucket's steady rate less a 10 % reserve, divided by the "
        "accounts on the key). The 429s and windows come from the simulated upstream's own log "
        "of each key.",
    )
