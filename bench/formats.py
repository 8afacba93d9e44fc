"""One-off measurement (issue 10): what a payload format and a filter cost.

    python -m bench.formats [--deliveries N] [--reps R]

1. Delivery throughput of the real relay, the bench's own ``relay`` job (as in measure (1)):
   the default envelope against ``format: slack`` (rendered from the stored record on every
   attempt), in alternating runs, 1 subscriber, 16 in flight.
2. Ingest preparation per record, in process: the envelope body alone (today's path), and with
   routing through a record-field filter and through a call-view filter (E.164 parsing).
3. The ingest transaction of the same records for 10 subscribers: all to everyone (the set-based
   fan-out) against per-record subscriber lists (about half the subscribers each).

Not part of ``python -m bench``: the filter runs in the poller, which the delivery runs bypass
(they fill the state by direct ingest), so (2) and (3) measure it on its own.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from typing import Any
from zoneinfo import ZoneInfo

from bench import procs
from bench.delivery import UPSTREAM_KEY
from bench.plan import relay_settings
from bench.worker import ACCOUNT, record_chunks, templates
from relay.config.schema import Settings
from relay.core.envelope import build_body
from relay.core.models import CallRecord, IngestBatch
from relay.ingest.routing import Router
from relay.sim.simulator import SimulatedWebFones
from relay.store.sqlite.store import SqliteStore

SLACK = {"format": "slack"}
MISSED_FIELDS = {"direction": "INCOMING", "disposition": {"$ne": "ANSWERED"}}
MISSED_VIEW = {"call.missed": True, "call.caller.number": {"$startsWith": "+1555"}}


async def relay_rate(
    upstream: str, url: str, total: int, extra: dict[str, Any], scratch: str, logs: str
) -> float:
    state = os.path.join(scratch, f"fmt-{time.monotonic_ns()}.db")
    settings = relay_settings(state, upstream, UPSTREAM_KEY, [("s0", f"{url}/s0")])
    for sub in settings["subscribers"]:
        sub.update(extra)
    job = {
        "kind": "relay",
        "settings": settings,
        "fill": {"records": total, "subscribers": ["s0"]},
        "goal": {"delivered": total},
        "log_level": "WARNING",
        "max_seconds": 120,
    }
    try:
        result = await procs.run_job("relay", job, logs, 180)
    finally:
        for suffix in ("", "-wal", "-shm", ".lock"):
            if os.path.exists(state + suffix):
                os.unlink(state + suffix)
    if result["t_done"] is None:
        raise RuntimeError(f"relay delivered {result['delivered']} of {total} in time")
    return float(total / (result["t_done"] - result["t_started"]))


async def throughput(deliveries: int, reps: int, scratch: str, logs: str) -> None:
    sim = SimulatedWebFones({UPSTREAM_KEY: "quiet"}, seed=3)
    upstream = await sim.start()
    runs: dict[str, list[float]] = {"envelope": [], "slack": []}
    try:
        async with procs.fast_receiver(logs) as rx:
            for rep in range(reps):
                order = [("envelope", {}), ("slack", SLACK)]
                for name, extra in order if rep % 2 == 0 else reversed(order):
                    rate = await relay_rate(upstream, rx.url, deliveries, extra, scratch, logs)
                    runs[name].append(rate)
    finally:
        await sim.stop()
    env, slack = statistics.median(runs["envelope"]), statistics.median(runs["slack"])
    print(f"(1) {deliveries:,} deliveries x {reps}: envelope {env:,.0f}/s, slack {slack:,.0f}/s,")
    print(f"    ratio {slack / env:.2f}  (runs: {runs})")


def _settings(filter_spec: dict[str, Any] | None) -> Settings:
    subs = [
        {"name": f"s{i}", "url": "http://127.0.0.1:9/x", "secret": "whsec_" + "QUFB" * 8}
        for i in range(10)
    ]
    if filter_spec is not None:
        subs[0]["filter"] = filter_spec
    doc = {"upstream": {"accounts": [{"name": ACCOUNT, "api_key": "k"}]}, "subscribers": subs}
    return Settings.model_validate(doc)


def preparation(n: int) -> None:
    base = templates()
    records = [dict(base[i % len(base)], rid=i) for i in range(n)]
    tz = ZoneInfo("UTC")
    results = {}
    for label, spec in (
        ("envelope only", None),
        ("+ field filter", MISSED_FIELDS),
        ("+ call-view filter", MISSED_VIEW),
    ):
        settings = _settings(spec)
        router = Router(ACCOUNT, settings.subscribers, tz, "US")
        started = time.perf_counter()
        for rec in records:
            build_body(ACCOUNT, 0.0, rec)
            if router.filtering:
                router.route(rec)
        results[label] = (time.perf_counter() - started) / n * 1e6
    base_us = results["envelope only"]
    print(f"(2) per record, {n:,} records:")
    for label, us in results.items():
        print(f"    {label:<20} {us:6.1f} µs  ({us / base_us:.2f}x)")


async def ingest_cost(n: int, scratch: str) -> None:
    names = [f"s{i}" for i in range(10)]
    [plain] = list(record_chunks(n, n, 0.0))
    routed = [
        CallRecord(
            r.rid, r.call_ts, r.body, tuple(s for j, s in enumerate(names) if (r.rid + j) % 2)
        )
        for r in plain
    ]
    out = {}
    for label, records in (("every subscriber", plain), ("per-record lists", routed)):
        store = SqliteStore(os.path.join(scratch, f"ingest-{label[:5]}.db"))
        await store.open()
        try:
            started = time.perf_counter()
            await store.ingest(IngestBatch(ACCOUNT, records, names, time.time(), None))
            out[label] = time.perf_counter() - started
        finally:
            await store.close()
    print(f"(3) ingest of {n:,} records x 10 subscribers (one transaction):")
    for label, seconds in out.items():
        print(f"    {label:<18} {seconds * 1000:7.0f} ms  ({n / seconds:,.0f} records/s)")


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.formats")
    parser.add_argument("--deliveries", type=int, default=20_000)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    logs = os.path.join(root, "bench", "out", "logs")
    os.makedirs(logs, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="relay-bench-fmt-") as scratch:
        preparation(20_000)
        asyncio.run(ingest_cost(20_000, scratch))
        asyncio.run(throughput(args.deliveries, args.reps, scratch, logs))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
