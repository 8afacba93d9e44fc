"""(12) Cost vs scale: N idle accounts (one API key each) and one subscriber per account, nothing
to deliver, measured from outside the relay with psutil: CPU (% of one core) and RSS, and CPU
per empty poll against a bare aiohttp poller sending the same polls in the same run.

The relay is ``python -m relay run`` with a YAML file; the simulated upstream runs in this
process and counts the polls it answered in the measured window. Lateness comes from the same
log: each key's polls are due one interval apart (relay.core.schedule), so poll ``k`` of a key
is ``at_k - k * interval - min_j(at_j - j * interval)`` late, against the key's least late poll.
"""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

from bench import procs
from bench.ctx import Ctx, Row, drop_state, fmt
from bench.plan import Sizes, relay_settings
from bench.polling import upstream_ts
from bench.stats import percentile, summarize
from relay.sim.simulator import SimulatedWebFones, key_id

STARTUP_BOUND = 180.0  # seconds for "relay running"; the largest size is skipped beyond it
# The targets (issue #13 section 4).
PER_POLL_MS = 0.3  # CPU per empty poll, every size
CPU_AT_1000 = 6.0  # % of a core at 1,000 accounts
RSS_AT_1000 = 150.0  # MB at 1,000 accounts + 1,000 subscribers
RSS_AT_10000 = 400.0  # MB at 10,000 + 10,000
LATE_AT_10000 = 1.0  # s: no poll starting later than this at 10,000 accounts, 30 s interval


def _prefix(n: int, who: str) -> str:
    return f"bench-tenant-{who}-{n}-"


def _keys(n: int, who: str) -> list[str]:
    """As :func:`bench.worker.bare_polls_job` spells them."""
    return [f"{_prefix(n, who)}{i:05d}" for i in range(n)]


def _settings(state: str, upstream: str, rx: str, keys: list[str], poll: float) -> dict[str, Any]:
    accounts = [{"name": f"a{i}", "api_key": k} for i, k in enumerate(keys)]
    doc = relay_settings(
        state, upstream, keys[0], [(f"s{i}", f"{rx}/s{i}") for i in range(len(keys))],
        accounts=accounts, upstream={"poll_interval": f"{poll:g}s", "start_from": "now"},
    )  # fmt: skip
    for i, sub in enumerate(doc["subscribers"]):
        sub["accounts"] = [f"a{i}"]  # one subscriber per account, as tenants are
    return doc


def lateness(times: dict[str, list[float]], interval: float, since: float) -> list[float]:
    """How late each poll at or after ``since`` started, against its key's schedule (sorted).

    ``times`` are each key's request times; a key's schedule is one poll every ``interval``
    from its least late poll, so a missed poll counts as late by whole intervals it is not (it
    is the next one's ``k`` that moves): a relay that fell behind shows in the count instead.
    """
    late: list[float] = []
    for ts in times.values():
        ts = sorted(ts)
        if not ts:
            continue
        slots = [round((t - ts[0]) / interval) for t in ts]
        base = min(t - k * interval for t, k in zip(ts, slots, strict=True))
        late += [t - k * interval - base for t, k in zip(ts, slots, strict=True) if t >= since]
    return sorted(late)


async def _relay(
    ctx: Ctx,
    sim: SimulatedWebFones,
    upstream: str,
    rx: str,
    keys: list[str],
    timing: tuple[float, float, float],
) -> dict[str, float]:
    poll, warmup, seconds = timing
    state = ctx.state("tenants")
    settings = _settings(state, upstream, rx, keys, poll)
    kids = {key_id(k) for k in keys}
    loop = asyncio.get_running_loop()
    try:
        started = time.monotonic()
        async with procs.relay_run(
            f"relay-tenants-{len(keys)}", settings, ctx.scratch, ctx.logs
        ) as relay:
            startup = time.monotonic() - started
            await asyncio.sleep(warmup)
            cpu0, t0 = relay.cpu(), loop.time()
            await asyncio.sleep(seconds)
            cpu1, t1 = relay.cpu(), loop.time()
            rss = relay.rss_mb()
    finally:
        drop_state(state)
    polls = sum(1 for e in sim.request_log if t0 <= e.at < t1 and e.key in kids)
    times: dict[str, list[float]] = {}
    for e in sim.request_log:
        if e.key in kids and e.at < t1 and e.key is not None:
            times.setdefault(e.key, []).append(e.at)
    late = lateness(times, poll, t0)
    return {
        "cpu": 100 * (cpu1 - cpu0) / (t1 - t0),
        "rss": rss,
        "polls": polls,
        "per_poll_ms": 1000 * (cpu1 - cpu0) / max(1, polls),
        "startup": startup,
        "late_p99": percentile(late, 99),
        "late_max": late[-1] if late else math.nan,
    }


async def _bare(
    ctx: Ctx, upstream: str, keys: list[str], timing: tuple[float, float, float]
) -> dict[str, float]:
    poll, warmup, seconds = timing
    job = {
        "kind": "bare_polls",
        "url": f"{upstream}/call_log/records_after_timestamp?timestamp={upstream_ts(600)}",
        "key_prefix": _prefix(len(keys), "bare"),
        "keys": len(keys),
        "interval": poll,
        "idle_window": {"warmup": warmup, "seconds": seconds},
        "max_seconds": warmup + seconds + 30,
    }
    res = await procs.run_job(f"bare-polls-{len(keys)}", job, ctx.logs, warmup + seconds + 90)
    w = res["window"]
    polls = len(keys) * w["seconds"] / poll
    return {
        "cpu": 100 * w["cpu"] / w["seconds"],
        "rss": w["rss_mb"],
        "per_poll_ms": 1000 * w["cpu"] / polls,
    }


def _timing(sz: Sizes, n: int) -> tuple[float, float, float]:
    """(poll interval, warm-up, window) for ``n`` accounts: the largest size at the issue's 30 s."""
    poll, seconds = sz.tenant_poll, sz.tenant_seconds
    if n == sz.tenants_full_only:
        poll, seconds = sz.tenant_poll_full, sz.tenant_seconds_full
    return poll, poll + 1.0, seconds  # warm-up: every account has polled once


def _row(n: int, poll: float, got: dict[str, list[float]]) -> Row:
    cpu, rss, per = (summarize(got[k]) for k in ("cpu", "rss", "per_poll_ms"))
    p99, worst = summarize(got["late_p99"]), summarize(got["late_max"])
    targets, ok = [f"≤ {PER_POLL_MS:g} ms per poll"], per.median <= PER_POLL_MS
    if n == 1_000:
        targets += [f"≤ {CPU_AT_1000:g} %", f"≤ {RSS_AT_1000:g} MB"]
        ok = ok and cpu.median <= CPU_AT_1000 and rss.median <= RSS_AT_1000
    if n >= 10_000:
        targets += [f"≤ {RSS_AT_10000:g} MB", f"no poll > {LATE_AT_10000:g} s late"]
        ok = ok and rss.median <= RSS_AT_10000 and worst.high <= LATE_AT_10000
    small = n < 1_000  # fixed idle work (timers, maintenance) shared by few polls
    return Row(
        f"{n:,} idle accounts + {n:,} subscribers, polled every {poll:g} s",
        "informational" if small else "; ".join(targets),
        f"CPU {fmt(cpu, ' %', 2)}; RSS {fmt(rss, ' MB')}; "
        f"{fmt(per, ' ms', 3)} CPU per empty poll; lateness p99 {fmt(p99, ' s', 2)}, "
        f"max {fmt(worst, ' s', 2)}",
        f"bare poller CPU {fmt(summarize(got['bare_cpu']), ' %', 2)}, "
        f"{fmt(summarize(got['bare_per_poll_ms']), ' ms', 3)} per poll",
        None if small else ok,
    )


async def cost_vs_scale(ctx: Ctx) -> None:
    """CPU and RSS of an idle relay with N accounts + N subscribers, beside a bare poller."""
    sz = ctx.sizes
    sizes = list(sz.tenants)
    if not ctx.smoke and sz.tenants_full_only:
        sizes.append(sz.tenants_full_only)
    data: dict[int, dict[str, list[float]]] = {}
    async with procs.counting_receiver("count", 1, ctx.logs, "rx-tenants") as rx:
        for n in sizes:
            timing = poll, warmup, seconds = _timing(sz, n)
            reps = 1 if n == sz.tenants_full_only else sz.reps
            relay_keys, bare_keys = _keys(n, "relay"), _keys(n, "bare")
            sim = SimulatedWebFones({k: k[-6:] for k in relay_keys + bare_keys}, seed=5)
            upstream = await sim.start()
            got: dict[str, list[float]] = {}
            try:
                for _ in range(reps):
                    # Side by side: each is measured by its own CPU time, the upstream's by none.
                    relay, bare = await asyncio.gather(
                        asyncio.wait_for(_relay(ctx, sim, upstream, rx.url, relay_keys, timing),
                                         STARTUP_BOUND + warmup + seconds + 60),
                        _bare(ctx, upstream, bare_keys, timing),
                    )  # fmt: skip
                    sim.request_log.clear()  # the next run's lateness is its own
                    for k, v in relay.items():
                        got.setdefault(k, []).append(v)
                    for k, v in bare.items():
                        got.setdefault(f"bare_{k}", []).append(v)
            except TimeoutError:
                ctx.note("tenants", f"{n:,} accounts: did not start within {STARTUP_BOUND:g} s.")
                continue
            finally:
                await sim.stop()
            data[n] = got
            ctx.add("tenants", _row(n, poll, got))
            ctx.note(
                "tenants",
                f"{n:,} accounts (every {poll:g} s): start-up to 'relay running' "
                f"{fmt(summarize(got['startup']), ' s', 1)}; "
                f"{fmt(summarize(got['polls']))} polls answered in the {seconds:g} s window "
                f"({n * seconds / poll:,.0f} due).",
            )
    ctx.data["tenants"] = data
    ctx.note(
        "tenants",
        "`relay run` with N accounts (one API key each) and N subscribers (one per account, "
        "`accounts: [aN]`), default log level (INFO: an empty poll logs nothing), no new "
        "calls; CPU is the process's user+system "
        f"time over {sz.tenant_seconds:g} s ({sz.tenant_seconds_full:g} s for the largest "
        "size) after every account had polled once, read with "
        "psutil from outside, RSS at the end of that window. Lateness: from the upstream's "
        "request log, each poll's start against its key's schedule (one poll per interval "
        "from the key's least late one), over the window. The bare poller (one aiohttp "
        "session, one task per key, polls spread over the interval) ran at the same time "
        "against the same simulated upstream with its own keys.",
    )
