"""``python -m bench``: run the benchmark suite and write the report.

Full run: about five minutes on two cores; writes ``docs/BENCHMARKS.md``, ``docs/PERF_SUMMARY.md``
and the plots. ``--smoke``: tiny sizes, one run each, no thresholds, well under a minute; writes
to ``bench/out/``. Exits 0 whenever the suite ran, whether or not the targets held; only a broken
benchmark exits non-zero.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from bench import (
    auto,
    cluster,
    delivery,
    formats,
    many_idle,
    outside,
    plots,
    polling,
    procs,
    report,
    tenants,
)
from bench.ctx import Ctx
from bench.plan import FULL, SMOKE
from relay.sim.simulator import SimulatedWebFones

PHASES = (
    "throughput",
    "isolation",
    "idle",
    "backlog",
    "ingest",
    "latency",
    "cluster",
    "formats",
    "e2e",
    "https",
    "tenants",
    "auto",
)
ANALYSIS = os.path.join(os.path.dirname(__file__), "analysis.md")


@contextlib.asynccontextmanager
async def timed(timings: dict[str, float], name: str) -> AsyncIterator[None]:
    start = time.monotonic()
    print(f"[bench] {name} …", file=sys.stderr, flush=True)
    try:
        yield
    finally:
        timings[name] = time.monotonic() - start
        print(f"[bench] {name}: {timings[name]:.1f} s", file=sys.stderr, flush=True)


async def run(ctx: Ctx, only: set[str]) -> dict[str, float]:
    timings: dict[str, float] = {}
    keys = polling.upstream_keys(ctx.sizes.reps)
    keys[delivery.UPSTREAM_KEY] = "quiet"
    keys.update(cluster.upstream_keys())
    keys.update(formats.upstream_keys())
    keys[outside.E2E_KEY] = "e2e"
    sim = SimulatedWebFones(keys, seed=3)
    if "e2e" in only:
        outside.add_e2e_records(sim, ctx.sizes.e2e_records)
    upstream = await sim.start()
    try:
        if "throughput" in only:
            async with timed(timings, "throughput"):
                await delivery.throughput(ctx, upstream)
        if "isolation" in only:
            async with timed(timings, "isolation"):
                await delivery.isolation(ctx, upstream)
        builds: asyncio.Task[dict[int, str]] | None = None
        if "backlog" in only:
            # Built while the idle relays run: they are measured by their own CPU time.
            builds = asyncio.ensure_future(delivery.build_backlogs(ctx))
        if "idle" in only:
            async with timed(timings, "idle + budget"), procs.fast_receiver(ctx.logs) as rx:
                await asyncio.gather(polling.idle(ctx, sim, upstream, rx.url), polling.budget(ctx))
                await many_idle.many_idle(ctx, upstream, rx.url)
        if builds is not None:
            async with timed(timings, "backlog"):
                await delivery.backlog(ctx, upstream, await builds)
        if "ingest" in only:
            async with timed(timings, "ingest"):
                await polling.ingest(ctx, sim, upstream)
        if "latency" in only:
            async with timed(timings, "latency"):
                await polling.latency(ctx, sim, upstream)
        if "cluster" in only:
            async with timed(timings, "cluster"):
                await cluster.postgres(ctx, sim, upstream)
        if "formats" in only:
            async with timed(timings, "formats"):
                await formats.formats(ctx, sim, upstream)
        if "e2e" in only:
            async with timed(timings, "e2e"):
                await outside.endtoend(ctx, upstream)
        if "https" in only:
            async with timed(timings, "https"):
                await outside.https(ctx, upstream)
        if "tenants" in only:
            async with timed(timings, "tenants"):
                await tenants.cost_vs_scale(ctx)
        if "auto" in only:
            async with timed(timings, "auto"):
                await auto.auto(ctx)
    finally:
        await sim.stop()
    return timings


def write(ctx: Ctx, out: str, timings: dict[str, float], info: dict[str, str]) -> None:
    os.makedirs(out, exist_ok=True)
    made: dict[str, str] = {}
    makers: list[tuple[str, str, Callable[[Any, str], str]]] = [
        ("sweep", "sweep", plots.throughput_vs_concurrency),
        ("latency", "latency", plots.latency_cdf),
        ("backlog", "backlog", plots.rss_vs_backlog),
        ("tenants", "tenants", plots.cost_vs_scale),
        ("auto", "auto", plots.auto_latency),
    ]
    for key, section, make in makers:
        if key in ctx.data:
            made[section] = make(ctx.data[key], out)
    ctx.data["plots"] = made
    analysis = ""
    if not ctx.smoke and os.path.exists(ANALYSIS):
        with open(ANALYSIS) as f:
            analysis = f.read()
    with open(os.path.join(out, "BENCHMARKS.md"), "w") as f:
        f.write(report.benchmarks_md(ctx, info, timings, analysis))
    with open(os.path.join(out, "PERF_SUMMARY.md"), "w") as f:
        f.write(report.summary_md(ctx, info))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, no thresholds (CI)")
    parser.add_argument("--out", help="where to write the report (default docs/ or bench/out/)")
    parser.add_argument("--only", nargs="+", choices=PHASES, help="run only these phases")
    args = parser.parse_args(argv)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = args.out or os.path.join(root, "bench", "out" if args.smoke else "docs")
    if not args.smoke and not args.out:
        out = os.path.join(root, "docs")
    scratch = tempfile.mkdtemp(prefix="relay-bench-")
    ctx = Ctx(
        sizes=SMOKE if args.smoke else FULL,
        smoke=args.smoke,
        scratch=scratch,
        logs=os.path.join(root, "bench", "out", "logs"),
    )
    info = report.machine()
    try:
        timings = asyncio.run(run(ctx, set(args.only or PHASES)))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    write(ctx, out, timings, info)
    failed = [r.measure for rows in ctx.rows.values() for r in rows if r.passed is False]
    print(f"[bench] report in {out}; targets missed: {len(failed)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
