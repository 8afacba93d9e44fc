"""Delivery-side measurements: (1) throughput, (3) backlog memory and drain, (7) isolation.

Every relay run is a :mod:`bench.worker` process over a state file filled by direct ingest
(no HTTP), delivering to receivers in their own processes. Its rate is the number of deliveries
whose result was committed to the store, over the time from the supervisor's start to that commit.
"""

from __future__ import annotations

import asyncio
import shutil
import time

from bench import procs
from bench.ctx import Ctx, Row, drop_state, fmt
from bench.plan import relay_settings
from bench.stats import summarize

UPSTREAM_KEY = "bench-quiet-key-0001"  # an account with no calls: the poller stays out of the way


def _subs(url: str, n: int, prefix: str = "s") -> list[tuple[str, str]]:
    return [(f"{prefix}{i}", f"{url}/{prefix}{i}") for i in range(n)]


CpuLog = dict[str, list[float]]


async def relay_rate(
    ctx: Ctx,
    upstream: str,
    subs: list[tuple[str, str]],
    total: int,
    concurrency: int,
    log_level: str = "WARNING",
    cpu: CpuLog | None = None,
    rx: procs.Child | None = None,
) -> float:
    """Deliveries/s of the real relay for ``total`` deliveries spread evenly over ``subs``."""
    state = ctx.state("tp")
    job = {
        "kind": "relay",
        "settings": relay_settings(state, upstream, UPSTREAM_KEY, subs, max_in_flight=concurrency),
        "fill": {"records": total // len(subs), "subscribers": [s for s, _ in subs]},
        "goal": {"delivered": total},
        "log_level": log_level,
        "max_seconds": 120,
    }
    rx_cpu = rx.cpu() if rx else 0.0
    try:
        result = await procs.run_job("relay", job, ctx.logs, 180)
    finally:
        drop_state(state)
    if result["t_done"] is None:
        raise RuntimeError(f"relay delivered {result['delivered']} of {total} in time")
    if cpu is not None and rx is not None:
        cpu.setdefault("relay", []).append(1e6 * result["cpu_run"] / total)
        cpu.setdefault("relay rx", []).append(1e6 * (rx.cpu() - rx_cpu) / total)
    return float(total / (result["t_done"] - result["t_started"]))


async def bare_rate(
    ctx: Ctx,
    subs: list[tuple[str, str]],
    total: int,
    concurrency: int,
    cpu: CpuLog | None = None,
    rx: procs.Child | None = None,
) -> float:
    """POST/s of a plain aiohttp client: same bodies, URLs and concurrency, nothing else."""
    job = {
        "kind": "bare",
        "urls": [u for _, u in subs],
        "per_url": total // len(subs),
        "concurrency": concurrency,
        "max_seconds": 120,
    }
    rx_cpu = rx.cpu() if rx else 0.0
    result = await procs.run_job("bare", job, ctx.logs, 180)
    if result["failures"]:
        raise RuntimeError(f"bare client saw {result['failures']} non-200 answers")
    if cpu is not None and rx is not None:
        cpu.setdefault("bare", []).append(1e6 * result["cpu_run"] / total)
        cpu.setdefault("bare rx", []).append(1e6 * (rx.cpu() - rx_cpu) / total)
    return float(total / (result["t_done"] - result["t_started"]))


async def throughput(ctx: Ctx, upstream: str) -> None:
    """(1) The relay against the bare aiohttp ceiling, 1 and 10 subscribers, plus a sweep."""
    sz = ctx.sizes
    c = sz.concurrency
    runs: dict[str, list[float]] = {k: [] for k in ("r1", "b1", "i1", "r10", "b10")}
    sweep: dict[int, dict[str, list[float]]] = {k: {"relay": [], "bare": []} for k in sz.sweep}
    cpu: CpuLog = {}
    async with procs.fast_receiver(ctx.logs) as rx:
        one, ten = _subs(rx.url, 1), _subs(rx.url, 10)
        for rep in range(sz.throughput_reps):
            # Alternate the order so that drift in the machine's load favours neither side.
            pairs = [
                ("r1", lambda: relay_rate(ctx, upstream, one, sz.deliveries, c, cpu=cpu, rx=rx)),
                ("b1", lambda: bare_rate(ctx, one, sz.deliveries, c, cpu=cpu, rx=rx)),
                ("i1", lambda: relay_rate(ctx, upstream, one, sz.deliveries, c, "INFO")),
                ("r10", lambda: relay_rate(ctx, upstream, ten, sz.deliveries, c)),
                ("b10", lambda: bare_rate(ctx, ten, sz.deliveries, c)),
            ]
            for key, run in pairs if rep % 2 == 0 else reversed(pairs):
                runs[key].append(await run())
            if rep >= sz.reps:
                continue  # the sweep's points are informational: `reps` runs each
            for k in sz.sweep:
                n = sz.sweep_deliveries
                if rep % 2:
                    sweep[k]["bare"].append(await bare_rate(ctx, one, n, k))
                sweep[k]["relay"].append(await relay_rate(ctx, upstream, one, n, k))
                if not rep % 2:
                    sweep[k]["bare"].append(await bare_rate(ctx, one, n, k))
    # The headline runs are the sweep's point at their concurrency (same subscriber, more calls).
    sweep[c] = {"relay": runs["r1"], "bare": runs["b1"]}
    ctx.data["throughput"] = runs
    ctx.data["cpu"] = cpu
    ctx.data["sweep"] = dict(sorted(sweep.items()))
    sec = "throughput"
    for label, r, b in (("1 subscriber", "r1", "b1"), ("10 subscribers", "r10", "b10")):
        ratios = summarize([x / y for x, y in zip(runs[r], runs[b], strict=True)])
        ctx.add(
            sec,
            Row(
                f"{sz.deliveries:,} deliveries, {label}, {c} in flight per subscriber",
                "ratio ≥ 0.90",
                f"{fmt(summarize(runs[r]), '/s')}; ratio {fmt(ratios, digits=2)}",
                fmt(summarize(runs[b]), "/s"),
                ctx.check(ratios.median >= 0.90),
            ),
        )
    info = summarize([x / y for x, y in zip(runs["i1"], runs["b1"], strict=True)])
    ctx.add(
        sec,
        Row(
            "same, 1 subscriber, log level INFO (one line per delivery, to a file)",
            "informational",
            f"{fmt(summarize(runs['i1']), '/s')}; ratio {fmt(info, digits=2)}",
            fmt(summarize(runs["b1"]), "/s"),
            None,
        ),
    )
    ctx.add(
        sec,
        Row(
            "CPU per delivery, 1 subscriber: relay process / its receiver",
            "informational",
            f"{fmt(summarize(cpu['relay']), ' µs')} / {fmt(summarize(cpu['relay rx']), ' µs')}",
            f"bare client {fmt(summarize(cpu['bare']), ' µs')} / "
            f"its receiver {fmt(summarize(cpu['bare rx']), ' µs')}",
            None,
        ),
    )
    for k in sorted(sweep):
        rel, bare = summarize(sweep[k]["relay"]), summarize(sweep[k]["bare"])
        n = sz.deliveries if k == c else sz.sweep_deliveries
        ctx.add(
            "sweep",
            Row(
                f"{k} in flight, 1 subscriber, {n:,} deliveries",
                "informational",
                f"{fmt(rel, '/s')}; ratio {rel.median / bare.median:.2f}",
                fmt(bare, "/s"),
                None,
            ),
        )


async def isolation(ctx: Ctx, upstream: str) -> None:
    """(7) A healthy subscriber's rate alone, and beside one that accepts and never answers."""
    sz = ctx.sizes
    n = sz.isolation
    alone: list[float] = []
    beside: list[float] = []
    async with procs.fast_receiver(ctx.logs) as rx, procs.bench_receiver("hang", 1, ctx.logs) as bh:
        healthy = ("healthy", f"{rx.url}/healthy")
        hole = ("blackhole", f"{bh[0]}/blackhole")
        for rep in range(sz.isolation_reps):
            for subs in (
                ([healthy], [healthy, hole]) if rep % 2 == 0 else ([healthy, hole], [healthy])
            ):
                state = ctx.state("iso")
                job = {
                    "kind": "relay",
                    "settings": relay_settings(
                        state, upstream, UPSTREAM_KEY, subs, max_in_flight=sz.concurrency
                    ),
                    "fill": {"records": n, "subscribers": [s for s, _ in subs]},
                    "goal": {"per_sub": {"healthy": n}},
                    "max_seconds": 120,
                }
                try:
                    res = await procs.run_job("relay-iso", job, ctx.logs, 180)
                finally:
                    drop_state(state)
                rate = n / (res["sub_done"]["healthy"] - res["t_started"])
                (beside if len(subs) == 2 else alone).append(rate)
    ratios = summarize([b / a for a, b in zip(alone, beside, strict=True)])
    ctx.add(
        "isolation",
        Row(
            f"healthy subscriber, {n:,} deliveries, beside a black hole",
            "≥ 0.9 × alone",
            f"{fmt(summarize(beside), '/s')}; ratio {fmt(ratios, digits=2)}",
            f"alone {fmt(summarize(alone), '/s')}",
            ctx.check(ratios.median >= 0.9),
        ),
    )


async def build_backlogs(ctx: Ctx) -> dict[int, str]:
    """Template state files with N deliveries pending for one subscriber, by direct ingest."""
    out: dict[int, str] = {}
    for n in ctx.sizes.backlogs:
        path = ctx.state(f"backlog-{n}")
        job = {"kind": "build", "path": path, "records": n, "subscribers": ["down"]}
        res = await procs.run_job(f"build-{n}", job, ctx.logs, 600)
        ctx.note(
            "backlog",
            f"{n:,} pending deliveries built by direct ingest in {res['seconds']:.1f} s "
            f"({res['bytes'] / 2**20:,.0f} MiB state file).",
        )
        out[n] = path
    return out


async def backlog(ctx: Ctx, upstream: str, templates: dict[int, str]) -> None:
    """(3) Peak RSS with N deliveries queued for a subscriber that is down, then the drain."""
    sz = ctx.sizes
    peaks: dict[int, list[float]] = {n: [] for n in templates}
    down: dict[int, list[float]] = {n: [] for n in templates}
    drains: dict[int, list[float]] = {n: [] for n in templates}
    # Each drain's baseline is (1)'s shape run right after it, on the same receiver: a fresh
    # queue of as many deliveries, 1 subscriber, the same concurrency. Against (1)'s own runs,
    # minutes earlier, the ratio measured how the machine's speed had moved in between.
    fresh: dict[int, list[float]] = {n: [] for n in templates}
    for _ in range(sz.reps):
        for n, template in templates.items():
            state = ctx.state(f"backlog-run-{n}")
            shutil.copyfile(template, state)
            target = min(n, sz.drain)
            try:
                async with procs.bench_receiver("gate", 1, ctx.logs) as gate:
                    job = {
                        "kind": "relay",
                        "settings": relay_settings(
                            state,
                            upstream,
                            UPSTREAM_KEY,
                            [("down", f"{gate[0]}/down")],
                            max_in_flight=sz.concurrency,
                        ),
                        "goal": {"delivered": target},
                        "max_seconds": 120,
                    }
                    async with procs.child("relay-backlog", procs.worker_args(job), ctx.logs) as w:
                        await w.event("started", 60)
                        rss = await _sample_rss(w, sz.down_seconds)
                        opened = time.monotonic()
                        await procs.http_json("GET", f"{gate[0]}/_open")
                        res = await w.event("result", 150)
                        await w.exited(30)
                    gate_sub = [("down", f"{gate[0]}/down")]
                    fresh[n].append(
                        await relay_rate(ctx, upstream, gate_sub, target, sz.concurrency)
                    )
            finally:
                drop_state(state)
            if res["t_done"] is None:
                raise RuntimeError(f"backlog {n}: drained {res['delivered']} of {target}")
            peaks[n].append(res["maxrss_mb"])
            down[n].append(rss)
            drains[n].append(target / (res["t_done"] - opened))
    ctx.data["backlog"] = {"peaks": peaks, "down": down, "drains": drains, "fresh": fresh}
    small, big = min(templates), max(templates)
    growth = summarize([b - s for s, b in zip(peaks[small], peaks[big], strict=True)])
    for n in templates:
        ctx.add(
            "backlog",
            Row(
                f"{n:,} queued: peak RSS",
                f"≤ RSS at {small:,} + 20 MB" if n == big else "—",
                fmt(summarize(peaks[n]), " MB", 1),
                f"while down: {fmt(summarize(down[n]), ' MB', 1)}",
                ctx.check(growth.median <= 20.0) if n == big else None,
            ),
        )
    for n in templates:
        ratios = summarize([x / y for x, y in zip(drains[n], fresh[n], strict=True)])
        ctx.add(
            "backlog",
            Row(
                f"{n:,} queued: drain of the first {min(n, sz.drain):,}",
                "≥ 0.8 × rate of (1)",
                f"{fmt(summarize(drains[n]), '/s')}; ratio {fmt(ratios, digits=2)}",
                f"(1)'s shape beside it: {fmt(summarize(fresh[n]), '/s')}",
                ctx.check(ratios.median >= 0.8),
            ),
        )
    ctx.note(
        "backlog",
        f"Growth of peak RSS from {small:,} to {big:,} queued: {fmt(growth, ' MB', 1)}.",
    )


async def _sample_rss(w: procs.Child, seconds: float) -> float:
    """The largest RSS of ``w`` seen over ``seconds`` (sampled every 50 ms)."""
    peak = 0.0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        peak = max(peak, w.rss_mb())
        await asyncio.sleep(0.05)
    return peak
