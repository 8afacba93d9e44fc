"""Micro-benchmark of the PostgreSQL store's delivery statements: CPU per delivery of the
claim and of the finish, in the PostgreSQL backends and in this process, by batch size.

    python -m bench.pgstore [--deliveries 20000] [--batches 16,128] [--reps 5]

Each rep queues ``--deliveries`` deliveries on a fresh schema (one subscriber, 5,000 records per
ingest), claims them all in batches (leases long enough to outlast the run), then finishes them
all as delivered in the same batches; the two phases are timed apart. Backend CPU is read with
psutil from every backend whose ``application_name`` names the schema, as (8) does. Prints the
median and range over the reps. Where (8) sees a change only through two noisy rates, this
sees the statements themselves: the figures quoted for PostgreSQL schema 4 and the pool without
a reset in docs/BENCHMARKS.md were measured with this harness, interleaved against the previous
tree (run it from each tree in turn).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid
from dataclasses import dataclass

import asyncpg

from bench.cluster import DSN
from bench.cluster import _backend_cpu as backend_cpu
from bench.worker import record_chunks
from relay.core.models import Attempt, Finished, IngestBatch, Outcome
from relay.store.postgres import PostgresStore

SUB = "s0"


@dataclass
class Phase:
    rate: float  # deliveries/s
    backend_us: float  # PostgreSQL backend CPU per delivery
    client_us: float  # this process's CPU per delivery


async def _backend_cpu(schema: str) -> float:
    return sum((await backend_cpu(schema)).values())


class _Timer:
    def __init__(self, schema: str, n: int) -> None:
        self.schema, self.n = schema, n

    async def __aenter__(self) -> _Timer:
        self.t0, self.c0 = time.perf_counter(), time.process_time()
        self.b0 = await _backend_cpu(self.schema)
        return self

    async def __aexit__(self, *exc: object) -> None:
        seconds = time.perf_counter() - self.t0
        client = time.process_time() - self.c0
        backend = await _backend_cpu(self.schema) - self.b0
        self.phase = Phase(self.n / seconds, 1e6 * backend / self.n, 1e6 * client / self.n)


async def one_rep(total: int, batch: int) -> tuple[Phase, Phase]:
    schema = f"relay_bench_{uuid.uuid4().hex[:10]}"
    store = PostgresStore(f"{DSN}{'&' if '?' in DSN else '?'}schema={schema}")
    await store.open()
    try:
        at = time.time() - 1.0
        for records in record_chunks(total, 5_000, at):
            await store.ingest(IngestBatch("bench", records, [SUB], at, None))
        claimed = []
        async with _Timer(schema, total) as claim:
            while ds := await store.claim(SUB, batch, time.time(), 3_600.0):
                claimed.append(ds)
        assert sum(map(len, claimed)) == total, "every queued delivery is claimed once"
        async with _Timer(schema, total) as finish:
            for ds in claimed:
                now = time.time()
                attempt = Attempt(now, 200, None, 1.0, "")
                await store.finish(
                    [Finished(d.id, attempt, Outcome.DELIVERED, None, d.token) for d in ds]
                )
        return claim.phase, finish.phase
    finally:
        await store.close()
        conn = await asyncpg.connect(DSN)
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        finally:
            await conn.close()


def _fmt(values: list[float], unit: str, digits: int = 1) -> str:
    lo, mid, hi = min(values), statistics.median(values), max(values)
    return f"{mid:,.{digits}f} {unit} ({lo:,.{digits}f}-{hi:,.{digits}f})"


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--deliveries", type=int, default=20_000)
    parser.add_argument("--batches", default="16,128", help="claim/finish sizes, comma-separated")
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    sizes = [int(b) for b in args.batches.split(",")]
    runs: dict[int, list[tuple[Phase, Phase]]] = {b: [] for b in sizes}
    for _ in range(args.reps):
        for b in sizes:  # interleaved, so machine noise hits every size
            runs[b].append(await one_rep(args.deliveries, b))
    for b in sizes:
        for i, name in enumerate(("claim", "finish")):
            phases = [r[i] for r in runs[b]]
            print(
                f"batch {b:>4} {name:<6}: "
                f"{_fmt([p.rate for p in phases], '/s', 0)}, "
                f"backend {_fmt([p.backend_us for p in phases], 'us')}, "
                f"client {_fmt([p.client_us for p in phases], 'us')} per delivery"
            )


if __name__ == "__main__":
    asyncio.run(main())
