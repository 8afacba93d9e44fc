"""(9) What a payload format and a filter cost, each against the default in the same run.

- **Format.** The real relay (the ``relay`` job of (1)) delivering N calls to 1 subscriber, 16 in
  flight: ``format: envelope`` (the stored body, sent as it is) against ``format: slack``
  (rendered from the stored record on every attempt: JSON parse, call view, message, JSON), in
  interleaved pairs. The calls are *fresh* (:func:`bench.worker.record_chunks`): every one from
  a caller never seen before and one second after the last, so the call view's caches hold
  nothing a real stream would not give them; the time zone is one with DST.
- **Filter.** One upstream response of N records for 10 subscribers, timed as in (4) from the
  whole response's arrival to the last ingest commit: no filter against
  ``filter: {call.missed: true}`` on one subscriber (a missed-calls channel), in interleaved
  pairs. The filter runs in the poller before the ingest transaction, and a filtered-out record
  turns that record's fan-out into a per-record list, so both costs are inside the figure.

``python -m bench.formats`` runs just this phase (``python -m bench --only formats``).
"""

from __future__ import annotations

import sys
from typing import Any

from bench import procs
from bench.ctx import Ctx, Row, drop_state, fmt
from bench.delivery import UPSTREAM_KEY
from bench.plan import relay_settings
from bench.polling import upstream_ts
from bench.stats import summarize
from relay.sim.simulator import SimulatedWebFones

FILTER_KEY = "bench-filter-key-0001"
SUBSCRIBERS = 10
TIMEZONE = "America/New_York"
SLACK: dict[str, Any] = {"format": "slack"}
MISSED: dict[str, Any] = {"filter": {"call.missed": True}}


def upstream_keys() -> dict[str, str]:
    """The simulated accounts this phase needs beside the others."""
    return {FILTER_KEY: "filter"}


async def _delivery_rate(ctx: Ctx, upstream: str, url: str, extra: dict[str, Any]) -> float:
    sz = ctx.sizes
    state = ctx.state("fmt")
    settings = relay_settings(
        state,
        upstream,
        UPSTREAM_KEY,
        [("s0", f"{url}/s0")],
        max_in_flight=sz.concurrency,
        upstream={"timezone": TIMEZONE},
    )
    settings["subscribers"][0].update(extra)
    job = {
        "kind": "relay",
        "settings": settings,
        "fill": {"records": sz.deliveries, "subscribers": ["s0"], "fresh": True},
        "goal": {"delivered": sz.deliveries},
        "log_level": "WARNING",
        "max_seconds": 120,
    }
    try:
        result = await procs.run_job("relay-format", job, ctx.logs, 180)
    finally:
        drop_state(state)
    if result["t_done"] is None:
        raise RuntimeError(f"format run delivered {result['delivered']} of {sz.deliveries}")
    return float(sz.deliveries / (result["t_done"] - result["t_started"]))


async def _ingest_rate(ctx: Ctx, upstream: str, url: str, extra: dict[str, Any]) -> float:
    n = ctx.sizes.filter_records
    state = ctx.state("filter")
    subs = [(f"s{i}", f"{url}/s{i}") for i in range(SUBSCRIBERS)]
    settings = relay_settings(
        state, upstream, FILTER_KEY, subs, max_in_flight=4,
        upstream={"start_from": upstream_ts(86400), "timezone": TIMEZONE},
    )  # fmt: skip
    settings["subscribers"][0].update(extra)
    job = {"kind": "relay", "settings": settings, "goal": {"ingested": n}, "max_seconds": 120}
    try:
        res = await procs.run_job("relay-filter", job, ctx.logs, 180)
    finally:
        drop_state(state)
    if res["t_done"] is None:
        raise RuntimeError(f"filter run: {res['ingests']} in time")
    big = max(res["responses"], key=lambda r: r["bytes"])
    end = max(i["end"] for i in res["ingests"])
    return float(n / (end - big["at"]))


async def formats(ctx: Ctx, sim: SimulatedWebFones, upstream: str) -> None:
    """(9) The two pairs of measurements, and their rows."""
    sz = ctx.sizes
    for _ in range(sz.filter_records):
        sim.add_record(FILTER_KEY)
    runs: dict[str, list[float]] = {"envelope": [], "slack": [], "none": [], "missed": []}
    async with procs.fast_receiver(ctx.logs) as rx:
        for rep in range(sz.format_reps):
            # Alternate the order so that drift in the machine's load favours neither side.
            pair = [("envelope", {}), ("slack", SLACK)]
            for name, extra in pair if rep % 2 == 0 else reversed(pair):
                runs[name].append(await _delivery_rate(ctx, upstream, rx.url, extra))
    async with procs.bench_receiver("hang", 1, ctx.logs) as hole:
        for rep in range(sz.format_reps):
            pair = [("none", {}), ("missed", MISSED)]
            for name, extra in pair if rep % 2 == 0 else reversed(pair):
                runs[name].append(await _ingest_rate(ctx, upstream, hole[0], extra))
    ctx.data["formats"] = runs
    for measure, cost, base, unit in (
        (
            f"format slack vs envelope, 1 subscriber, {sz.deliveries:,} deliveries",
            "slack",
            "envelope",
            "/s",
        ),
        (
            f"filter on call.missed vs none, ingest of {sz.filter_records:,} records "
            f"for {SUBSCRIBERS} subscribers",
            "missed",
            "none",
            " records/s",
        ),
    ):
        ratios = summarize([x / y for x, y in zip(runs[cost], runs[base], strict=True)])
        ctx.add(
            "formats",
            Row(
                measure,
                "ratio ≥ 0.90",
                f"{fmt(summarize(runs[cost]), unit)}; ratio {fmt(ratios, digits=2)}",
                f"{base}: {fmt(summarize(runs[base]), unit)}",
                ctx.check(ratios.median >= 0.90),
            ),
        )
    ctx.note(
        "formats",
        f"{sz.format_reps} interleaved pairs each. Format runs: every call from a new caller "
        f"(nothing cached), time zone {TIMEZONE}; the body is rendered on every attempt from "
        "the stored record. Filter runs: one subscriber of "
        f"{SUBSCRIBERS} has the filter; the others take every call.",
    )


def main() -> int:
    from bench.__main__ import main as bench_main

    return bench_main(["--only", "formats", *sys.argv[1:]])


if __name__ == "__main__":
    raise SystemExit(main())
