"""Interleaved A/B of (10), end to end, for changes smaller than the machine's run-to-run noise.

    python -m bench.ab --reps 12 base=/path/to/old/tree new=.

Each name=tree[@interval] is a checkout of the relay and its ``poll_interval`` (5s, as (10), by
default); every round runs ``relay run`` from each tree in turn (started in the tree, which is
also its ``PYTHONPATH``: until 2026-12-04 only ``PYTHONPATH`` named it, which ``python -m`` puts
after the working directory, so every tree ran the relay of the directory bench.ab ran in)
and then the bare aiohttp client, reversed every other round, all against one counting receiver
and one simulated upstream in this process. Each run is (10)'s: one upstream answer of 20,000
records, one subscriber, 32 in flight, the rate counted by the receiver from its first to its
last request. Prints each round as it ends, then the medians of the rates, of the relay's CPU
per record, and of each tree's ratio to the bare client of its own round; ``--out`` keeps every
run as JSON.

A separate full ``python -m bench --only e2e`` per tree compares runs minutes apart, on a host
whose bare-client rate moved by a factor of two within an hour (see docs/BENCHMARKS.md, (10));
here the trees and the baseline alternate within seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from typing import Any

from bench import outside, procs
from bench.ctx import Ctx
from bench.outside import Stats
from bench.plan import FULL
from relay.sim.simulator import SimulatedWebFones


async def _relay(
    ctx: Ctx, rx: procs.Receiver, upstream: str, n: int, tree: str, poll: str
) -> Stats:
    await rx.reset()
    state = ctx.state("e2e")
    settings = outside.relay_settings(
        state,
        upstream,
        outside.E2E_KEY,
        [("s0", f"{rx.url}/s0")],
        max_in_flight=outside.E2E_IN_FLIGHT,
        upstream={"poll_interval": poll, "start_from": outside.upstream_ts(3600)},
    )
    try:
        async with procs.relay_run("relay-ab", settings, ctx.scratch, ctx.logs, tree=tree) as relay:
            cpu0 = relay.cpu()
            stats = await rx.wait_count(n, 120)
            stats["cpu"] = relay.cpu() - cpu0
    finally:
        outside.drop_state(state)
    if stats["requests"] < n:
        raise RuntimeError(f"{tree}: {stats['requests']} of {n} delivered in time")
    return stats


async def run(
    trees: list[tuple[str, str, str]], reps: int, out: str | None
) -> dict[str, list[Any]]:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    scratch = tempfile.mkdtemp(prefix="relay-ab-")
    ctx = Ctx(
        sizes=FULL, smoke=False, scratch=scratch, logs=os.path.join(root, "bench", "out", "logs")
    )
    n = FULL.e2e_records
    sim = SimulatedWebFones({outside.E2E_KEY: "e2e"}, seed=3)
    outside.add_e2e_records(sim, n)
    upstream = await sim.start()
    runs: dict[str, list[Any]] = {name: [] for name, _, _ in trees}
    runs["bare"] = []
    try:
        async with procs.counting_receiver("count", 1, ctx.logs, "rx-ab") as rx:
            url = f"{rx.url}/s0"
            for rep in range(reps):
                steps: list[tuple[str, str | None, str]] = [*trees, ("bare", None, "")]
                for name, tree, poll in steps if rep % 2 == 0 else reversed(steps):
                    if tree is None:
                        stats = await outside._bare(ctx, rx, [url], n, outside.E2E_IN_FLIGHT, {})
                    else:
                        stats = await _relay(ctx, rx, upstream, n, tree, poll)
                    cpu = 1e6 * stats["cpu"] / stats["requests"]
                    runs[name].append({"rate": outside._rate(stats), "cpu_us": cpu})
                line = " ".join(
                    f"{k} {v[-1]['rate']:,.0f}/s {v[-1]['cpu_us']:.0f} µs" for k, v in runs.items()
                )
                print(f"{time.strftime('%H:%M:%S')} round {rep + 1}/{reps}: {line}", flush=True)
                if out:
                    with open(out, "w") as f:
                        json.dump(runs, f)
    finally:
        await sim.stop()
        shutil.rmtree(scratch, ignore_errors=True)
    return runs


def summary(runs: dict[str, list[Any]]) -> list[str]:
    bare = [r["rate"] for r in runs["bare"]]
    lines = []
    for name, got in runs.items():
        rate = statistics.median(r["rate"] for r in got)
        cpu = statistics.median(r["cpu_us"] for r in got)
        line = f"{name}: {rate:,.0f}/s, {cpu:.0f} µs CPU per record"
        if name != "bare":
            ratios = [r["rate"] / b for r, b in zip(got, bare, strict=True)]
            line += f", ratio {statistics.median(ratios):.3f} ({min(ratios):.2f}–{max(ratios):.2f})"
        lines.append(line)
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ab", description=__doc__.split("\n")[0])
    parser.add_argument(
        "trees",
        nargs="+",
        metavar="name=tree[@interval]",
        help="a relay checkout to run, and its poll_interval (default 5s, as (10): each later "
        "poll re-reads every record, all inside the 10-minute recent window)",
    )
    parser.add_argument("--reps", type=int, default=10, help="rounds (default 10)")
    parser.add_argument("--out", help="write every run here as JSON")
    args = parser.parse_args(argv)
    trees: list[tuple[str, str, str]] = []
    for spec in args.trees:
        name, sep, rest = spec.partition("=")
        tree, _, poll = rest.partition("@")
        if not sep or not name or name == "bare" or not os.path.isdir(os.path.join(tree, "relay")):
            parser.error(f"{spec!r}: expected name=tree[@interval], tree a checkout with relay/")
        source = procs.relay_source(tree)
        if source != os.path.abspath(tree):
            parser.error(f"{spec!r}: a relay started there imports relay/ from {source}")
        trees.append((name, tree, poll or "5s"))
    if not 1 <= args.reps <= 100:
        parser.error("--reps must be 1 to 100")
    runs = asyncio.run(run(trees, args.reps, args.out))
    for line in summary(runs):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
