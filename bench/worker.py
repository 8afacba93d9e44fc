"""One benchmark job in its own process, so its CPU time and RSS are its own.

``python -m bench.worker '<json job>'`` runs one job and talks JSON lines on stdout (one object
per line with an ``event`` key: ``ready``, ``started``, ``result``). It reads ``stop`` lines on
stdin. Jobs:

* ``build``: fill a state file with pending deliveries by direct ingest into the store (no HTTP).
* ``relay``: the real relay pipeline (:func:`relay.runner.run_relay`: store, pollers, dispatchers,
  signing, aiohttp, result writer, uvloop) against a prepared state, until a goal is reached, a
  time bound passes or the parent says stop. The store is :class:`MeteredStore`, which only
  timestamps what the real store did.
* ``bare``: the baseline for throughput, a plain aiohttp client POSTing the same bodies to the
  same URLs at the same concurrency, with no storage and no signing.
* ``bare_poll``: the baseline for idle cost, a plain aiohttp client polling once per interval.
* ``bare_polls``: the same for N keys at once (the baseline of the cost-vs-scale rows).

Every loop here is bounded by a count and by ``max_seconds``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta
from typing import Any

import orjson

from relay.config.schema import Settings
from relay.core.envelope import build_body
from relay.core.models import CallRecord, Finished, IngestBatch, IngestResult
from relay.store.sqlite.store import SqliteStore

ACCOUNT = "bench"
RID0 = 10_000_000
TEMPLATES = 512  # distinct simulated records, cycled with fresh rids
FRESH_T0 = datetime(2026, 3, 8, 0, 0, 0)  # fresh records cross a DST change (America/New_York)


def emit(event: str, **fields: Any) -> None:
    sys.stdout.write(orjson.dumps({"event": event, **fields}).decode() + "\n")
    sys.stdout.flush()


def rusage() -> dict[str, float]:
    """CPU seconds so far, and the peak RSS of this process.

    The peak is VmHWM, not ``ru_maxrss``: Linux carries the parent's peak into ``ru_maxrss``
    across fork and exec, so a small child of a big parent would report the parent's peak.
    """
    ru = resource.getrusage(resource.RUSAGE_SELF)
    peak = 0.0
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                peak = int(line.split()[1]) / 1024
    return {"cpu": ru.ru_utime + ru.ru_stime, "maxrss_mb": peak}


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


# -- data --------------------------------------------------------------------------------------


def templates(seed: int = 1) -> list[dict[str, Any]]:
    """Realistic call records from the simulator, to be cycled with fresh rids."""
    from relay.sim.simulator import SimulatedWebFones

    sim = SimulatedWebFones({"k": ACCOUNT}, seed=seed)
    return [sim.add_record("k") for _ in range(TEMPLATES)]


def record_chunks(
    n: int, chunk: int, received_at: float, rid0: int = RID0, fresh: bool = False
) -> Iterator[list[CallRecord]]:
    """``n`` call records with envelope bodies as the poller builds them, ``chunk`` at a time.

    Deterministic: the same ``n`` always gives the same bodies (the bare baseline sends the very
    bodies the relay delivers). ``fresh``: every call from a caller never seen before, one
    second after the previous call, so no cache of the call view is warm for a format to lean on.
    """
    base = templates()
    for start in range(0, n, chunk):
        out = []
        for i in range(start, min(n, start + chunk)):
            rec = dict(base[i % TEMPLATES])
            rec["rid"] = rid0 + i
            if fresh:
                rec["call_timestamp"] = (FRESH_T0 + timedelta(seconds=i)).isoformat(" ")
                if rec.get("cidnumber_outside", "").startswith("("):  # not an extension
                    area = 200 + i * 7919 % 800
                    rec["cidnumber_outside"] = f"({area}) {i // 10000 % 1000:03d}-{i % 10000:04d}"
            out.append(CallRecord(rid0 + i, rec["call_timestamp"], build_body(ACCOUNT, 0.0, rec)))
        yield out


def bodies(n: int) -> list[bytes]:
    return [r.body for chunk in record_chunks(n, 10_000, 0.0) for r in chunk]


async def fill(
    store: SqliteStore, n: int, subscribers: Sequence[str], chunk: int, fresh: bool = False
) -> float:
    """Queue ``n`` records for every one of ``subscribers``; returns seconds taken."""
    started = time.perf_counter()
    at = time.time() - 1.0  # due already
    for records in record_chunks(n, chunk, at, fresh=fresh):
        await store.ingest(IngestBatch(ACCOUNT, records, list(subscribers), at, None))
    return time.perf_counter() - started


async def build_job(job: dict[str, Any]) -> None:
    store = SqliteStore(job["path"])
    await store.open()
    try:
        seconds = await fill(store, job["records"], job["subscribers"], job.get("chunk", 20_000))
    finally:
        await store.close()
    emit("result", seconds=seconds, bytes=os.path.getsize(job["path"]))


# -- the relay, metered ------------------------------------------------------------------------


class Tracker:
    """Timestamps (monotonic, comparable across processes on Linux) of what the store did."""

    def __init__(self, goal: dict[str, Any]) -> None:
        self.goal = goal
        self.done = asyncio.Event()
        self.delivered = 0
        self.outcomes: Counter[str] = Counter()
        self.first_finish: float | None = None
        self.t_done: float | None = None
        self.owner: dict[int, str] = {}  # delivery id -> subscriber, only for per-sub goals
        self.per_sub: Counter[str] = Counter()
        self.sub_done: dict[str, float] = {}
        self.ingested = 0
        self.ingests: list[dict[str, float]] = []
        self.responses: list[dict[str, float]] = []

    def claimed(self, subscriber: str, ids: Sequence[int]) -> None:
        if "per_sub" in self.goal:
            for i in ids:
                self.owner[i] = subscriber

    def finished(self, results: Sequence[Finished]) -> None:
        now = time.monotonic()
        if self.first_finish is None:
            self.first_finish = now
        for f in results:
            self.outcomes[f.outcome.value] += 1
        self.delivered = self.outcomes["delivered"]
        per_sub = self.goal.get("per_sub")
        if per_sub:
            for f in results:
                sub = self.owner.pop(f.delivery_id, "?")
                if f.outcome.value == "delivered":
                    self.per_sub[sub] += 1
                    if sub not in self.sub_done and self.per_sub[sub] >= per_sub.get(sub, 1 << 60):
                        self.sub_done[sub] = now
            if all(s in self.sub_done for s in per_sub):
                self._finish(now)
        if self.delivered >= self.goal.get("delivered", 1 << 60):
            self._finish(now)

    def ingested_now(self, t0: float, result: IngestResult) -> None:
        now = time.monotonic()
        self.ingests.append({"start": t0, "end": now, "new": len(result.new_rids)})
        self.ingested += len(result.new_rids)
        if self.ingested >= self.goal.get("ingested", 1 << 60):
            self._finish(now)

    def _finish(self, now: float) -> None:
        if self.t_done is None:
            self.t_done = now
            self.done.set()


class MeteredStore(SqliteStore):
    """The real SQLite store; only records when its operations completed."""

    def __init__(self, path: str, tracker: Tracker) -> None:
        super().__init__(path)
        self.tracker = tracker

    async def claim(self, subscriber: str, limit: int, now: float, lease: float) -> Any:
        got = await super().claim(subscriber, limit, now, lease)
        self.tracker.claimed(subscriber, [d.id for d in got])
        return got

    async def finish(self, results: Sequence[Finished]) -> None:
        await super().finish(results)
        self.tracker.finished(results)

    async def ingest(self, batch: IngestBatch) -> IngestResult:
        t0 = time.monotonic()
        result = await super().ingest(batch)
        self.tracker.ingested_now(t0, result)
        return result


def _time_responses(tracker: Tracker) -> None:
    """Note when each upstream response had fully arrived (before it is parsed)."""
    import relay.ingest.upstream as upstream

    parse_200 = upstream.parse_200

    def timed(content_type: str, body: bytes) -> Any:
        tracker.responses.append({"at": time.monotonic(), "bytes": len(body)})
        return parse_200(content_type, body)

    upstream.parse_200 = timed  # type: ignore[assignment]


async def stdin_lines() -> asyncio.StreamReader:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return reader


async def relay_job(job: dict[str, Any]) -> None:
    import relay.runtime.runner as runner
    from relay.ops.logs import setup_logging
    from relay.runtime.supervisor import Supervisor

    settings = Settings.model_validate(job["settings"])
    setup_logging(job.get("log_level", "WARNING"), "text", settings.secret_values())
    tracker = Tracker(job.get("goal", {}))
    fill_spec = job.get("fill")
    if fill_spec:
        plain = SqliteStore(settings.state)
        await plain.open()
        try:
            subs, fresh = fill_spec["subscribers"], fill_spec.get("fresh", False)
            await fill(plain, fill_spec["records"], subs, 20_000, fresh)
        finally:
            await plain.close()
    _time_responses(tracker)
    runner.open_store = lambda url: MeteredStore(settings.state, tracker)  # type: ignore[assignment]
    before = rusage()
    emit("ready", rss_mb=rss_mb(), **before)

    started = asyncio.Event()
    supervisors: list[Supervisor] = []

    def on_started(sup: Supervisor) -> None:
        supervisors.append(sup)
        started.set()

    stop = asyncio.Event()
    task = asyncio.ensure_future(runner.run_relay(settings, stop, on_started))
    commands = await stdin_lines()
    deadline = time.monotonic() + job.get("max_seconds", 60.0)
    await _first([started.wait(), task], deadline - time.monotonic(), "relay did not start in time")
    if task.done():
        task.result()
    await supervisors[0].started.wait()
    t_started = time.monotonic()
    cpu_started = rusage()["cpu"]
    emit("started", t=t_started, rss_mb=rss_mb())
    window: dict[str, float] = {}
    idle = job.get("idle_window")
    waits: list[Any] = [tracker.done.wait(), commands.readline(), task]
    if idle:
        waits.append(_idle_window(idle, window))
    timed_out = not await _first(waits, deadline - time.monotonic(), None)
    stop.set()
    t_stop = time.monotonic()
    await asyncio.wait_for(task, 30)
    after = rusage()
    emit(
        "result",
        t_started=t_started,
        t_done=tracker.t_done,
        t_stop=t_stop,
        timed_out=timed_out,
        delivered=tracker.delivered,
        outcomes=dict(tracker.outcomes),
        first_finish=tracker.first_finish,
        sub_done=tracker.sub_done,
        per_sub=dict(tracker.per_sub),
        ingests=tracker.ingests,
        responses=tracker.responses,
        window=window,
        cpu=after["cpu"],
        cpu_run=after["cpu"] - cpu_started,
        maxrss_mb=after["maxrss_mb"],
        rss_mb=rss_mb(),
        polls={p.name: p.polls for p in supervisors[0].pollers},
    )


async def _idle_window(spec: dict[str, float], out: dict[str, float]) -> None:
    await asyncio.sleep(spec["warmup"])
    r0, t0 = rusage(), time.monotonic()
    await asyncio.sleep(spec["seconds"])
    r1, t1 = rusage(), time.monotonic()
    out.update(cpu=r1["cpu"] - r0["cpu"], seconds=t1 - t0, rss_mb=rss_mb(), maxrss=r1["maxrss_mb"])


async def _first(aws: list[Any], timeout: float, error: str | None) -> bool:
    """Wait for the first of ``aws``; cancel the waiters we made. False (or raise) on timeout."""
    futures = [asyncio.ensure_future(a) for a in aws]
    try:
        done, _ = await asyncio.wait(
            futures, timeout=max(0.0, timeout), return_when=asyncio.FIRST_COMPLETED
        )
    finally:
        for made, given in zip(futures, aws, strict=True):
            if made is not given:  # a coroutine we wrapped; the caller's futures are its own
                made.cancel()
    if not done and error is not None:
        raise TimeoutError(error)
    return bool(done)


# -- baselines ---------------------------------------------------------------------------------


async def bare_job(job: dict[str, Any]) -> None:
    """POST ``per_url`` bodies to each URL with ``concurrency`` clients per URL; time it all."""
    import aiohttp

    urls: list[str] = job["urls"]
    per_url: int = job["per_url"]
    body_list = bodies(per_url)
    headers = {"Content-Type": "application/json"}
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    emit("ready", rss_mb=rss_mb())
    failures = 0

    async def client(url: str, items: list[bytes]) -> None:
        nonlocal failures
        for body in items:
            async with session.post(url, data=body, headers=headers) as resp:
                await resp.read()
                failures += resp.status != 200

    try:
        conc = job["concurrency"]
        cpu0 = rusage()["cpu"]
        t0 = time.monotonic()
        async with asyncio.timeout(job.get("max_seconds", 60.0)):
            await asyncio.gather(
                *(client(url, body_list[i::conc]) for url in urls for i in range(conc))
            )
        t1 = time.monotonic()
    finally:
        await session.close()
    emit(
        "result",
        t_started=t0,
        t_done=t1,
        sent=per_url * len(urls),
        failures=failures,
        cpu_run=rusage()["cpu"] - cpu0,
    )


async def bare_poll_job(job: dict[str, Any]) -> None:
    """GET ``url`` every ``interval`` seconds: the least any poller can cost."""
    import aiohttp

    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=16))
    emit("ready", rss_mb=rss_mb())
    window: dict[str, float] = {}

    async def poll() -> None:
        for _ in range(int(job["max_seconds"] / job["interval"]) + 1):
            async with session.get(job["url"], headers=job["headers"]) as resp:
                await resp.read()
            await asyncio.sleep(job["interval"])

    try:
        poller = asyncio.ensure_future(poll())
        await _idle_window(job["idle_window"], window)
        poller.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await poller
    finally:
        await session.close()
    emit("result", window=window, maxrss_mb=rusage()["maxrss_mb"])


async def pg_relay(job: dict[str, Any]) -> None:
    from bench.pgworker import pg_relay_job

    await pg_relay_job(job)


async def bare_polls_job(job: dict[str, Any]) -> None:
    """GET ``url`` once per ``interval`` for each of ``keys``, spread evenly over the interval:
    the least N idle accounts can cost (one aiohttp session, one task per key)."""
    import aiohttp

    # The keys are ``prefix`` + 00000, 00001, ... (10,000 of them would not fit in argv).
    keys = [f"{job['key_prefix']}{i:05d}" for i in range(job["keys"])]
    interval: float = job["interval"]
    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=64))
    emit("ready", rss_mb=rss_mb())
    window: dict[str, float] = {}
    rounds = int(job["max_seconds"] / interval) + 1

    async def poll(i: int, key: str) -> None:
        await asyncio.sleep(i * interval / len(keys))
        for _ in range(rounds):
            async with session.get(job["url"], headers={"x-api-key": key}) as resp:
                await resp.read()
            await asyncio.sleep(interval)

    try:
        pollers = [asyncio.ensure_future(poll(i, k)) for i, k in enumerate(keys)]
        await _idle_window(job["idle_window"], window)
        for p in pollers:
            p.cancel()
        await asyncio.gather(*pollers, return_exceptions=True)
    finally:
        await session.close()
    emit("result", window=window, maxrss_mb=rusage()["maxrss_mb"])


JOBS = {
    "build": build_job,
    "relay": relay_job,
    "bare": bare_job,
    "bare_poll": bare_poll_job,
    "pgrelay": pg_relay,
    "bare_polls": bare_polls_job,
}


def main() -> int:
    job = orjson.loads(sys.argv[1])
    from relay.runtime.runner import loop_factory, tune_interpreter

    tune_interpreter()  # what `relay run` does, for the relay and its baselines alike

    profile = job.get("profile")
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        if not profile:
            runner.run(JOBS[job["kind"]](job))
            return 0
        import cProfile

        # Only the event-loop thread is profiled (the store's thread shows up as waits).
        with cProfile.Profile() as prof:
            runner.run(JOBS[job["kind"]](job))
        prof.dump_stats(profile)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
