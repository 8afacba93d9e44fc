"""(12) Cost vs scale: N idle accounts (one API key each) and one subscriber per account, nothing
to deliver, measured from outside the relay with psutil: CPU (% of one core) and RSS, and CPU
per empty poll against a bare aiohttp poller sending the same polls in the same run.

The relay is ``python -m relay run`` with a YAML file; the simulated upstream runs in this
process and counts the polls it answered in the measured window.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from bench import procs
from bench.ctx import Ctx, Row, drop_state, fmt
from bench.plan import relay_settings
from bench.polling import upstream_ts
from bench.stats import summarize
from relay.sim.simulator import SimulatedWebFones, key_id

STARTUP_BOUND = 180.0  # seconds for "relay running"; the largest size is skipped beyond it


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


async def _relay(
    ctx: Ctx, sim: SimulatedWebFones, upstream: str, rx: str, keys: list[str], warmup: float
) -> dict[str, float]:
    sz = ctx.sizes
    state = ctx.state("tenants")
    settings = _settings(state, upstream, rx, keys, sz.tenant_poll)
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
            await asyncio.sleep(sz.tenant_seconds)
            cpu1, t1 = relay.cpu(), loop.time()
            rss = relay.rss_mb()
    finally:
        drop_state(state)
    polls = sum(1 for e in sim.request_log if t0 <= e.at < t1 and e.key in kids)
    return {
        "cpu": 100 * (cpu1 - cpu0) / (t1 - t0),
        "rss": rss,
        "polls": polls,
        "per_poll_ms": 1000 * (cpu1 - cpu0) / max(1, polls),
        "startup": startup,
    }


async def _bare(ctx: Ctx, upstream: str, keys: list[str], warmup: float) -> dict[str, float]:
    sz = ctx.sizes
    job = {
        "kind": "bare_polls",
        "url": f"{upstream}/call_log/records_after_timestamp?timestamp={upstream_ts(600)}",
        "key_prefix": _prefix(len(keys), "bare"),
        "keys": len(keys),
        "interval": sz.tenant_poll,
        "idle_window": {"warmup": warmup, "seconds": sz.tenant_seconds},
        "max_seconds": warmup + sz.tenant_seconds + 30,
    }
    res = await procs.run_job(
        f"bare-polls-{len(keys)}", job, ctx.logs, warmup + sz.tenant_seconds + 90
    )
    w = res["window"]
    polls = len(keys) * w["seconds"] / sz.tenant_poll
    return {
        "cpu": 100 * w["cpu"] / w["seconds"],
        "rss": w["rss_mb"],
        "per_poll_ms": 1000 * w["cpu"] / polls,
    }


async def cost_vs_scale(ctx: Ctx) -> None:
    """CPU and RSS of an idle relay with N accounts + N subscribers, beside a bare poller."""
    sz = ctx.sizes
    sizes = list(sz.tenants)
    if not ctx.smoke and sz.tenants_full_only:
        sizes.append(sz.tenants_full_only)
    warmup = sz.tenant_poll + 1.0  # every account has polled once: start-up work is over
    data: dict[int, dict[str, list[float]]] = {}
    async with procs.counting_receiver("count", 1, ctx.logs, "rx-tenants") as rx:
        for n in sizes:
            reps = 1 if n == sz.tenants_full_only else sz.reps
            relay_keys, bare_keys = _keys(n, "relay"), _keys(n, "bare")
            sim = SimulatedWebFones({k: k[-6:] for k in relay_keys + bare_keys}, seed=5)
            upstream = await sim.start()
            got: dict[str, list[float]] = {}
            try:
                for _ in range(reps):
                    # Side by side: each is measured by its own CPU time, the upstream's by none.
                    relay, bare = await asyncio.gather(
                        asyncio.wait_for(_relay(ctx, sim, upstream, rx.url, relay_keys, warmup),
                                         STARTUP_BOUND + warmup + sz.tenant_seconds + 60),
                        _bare(ctx, upstream, bare_keys, warmup),
                    )  # fmt: skip
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
            cpu, rss, per = (summarize(got[k]) for k in ("cpu", "rss", "per_poll_ms"))
            ctx.add(
                "tenants",
                Row(
                    f"{n:,} idle accounts + {n:,} subscribers, polled every {sz.tenant_poll:g} s",
                    "informational",
                    f"CPU {fmt(cpu, ' %', 2)}; RSS {fmt(rss, ' MB')}; "
                    f"{fmt(per, ' ms', 3)} CPU per empty poll",
                    f"bare poller CPU {fmt(summarize(got['bare_cpu']), ' %', 2)}, "
                    f"{fmt(summarize(got['bare_per_poll_ms']), ' ms', 3)} per poll",
                    None,
                ),
            )
            ctx.note(
                "tenants",
                f"{n:,} accounts: start-up to 'relay running' "
                f"{fmt(summarize(got['startup']), ' s', 1)}; "
                f"{fmt(summarize(got['polls']))} polls answered in the "
                f"{sz.tenant_seconds:g} s window.",
            )
    ctx.data["tenants"] = data
    ctx.note(
        "tenants",
        "`relay run` with N accounts (one API key each) and N subscribers (one per account, "
        "`accounts: [aN]`), default log level (INFO: an empty poll logs nothing), no new "
        "calls; CPU is the process's user+system "
        f"time over {sz.tenant_seconds:g} s after every account had polled once, read with "
        "psutil from outside, RSS at the end of that window. The bare poller (one aiohttp "
        "session, one task per key, polls spread over the interval) ran at the same time "
        "against the same simulated upstream with its own keys.",
    )
