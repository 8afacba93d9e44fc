"""(5b) Idle cost that does not grow with the subscriber count (issue 8 #12): a real
``relay run`` process with 10,000 subscribers and nothing to deliver, its CPU measured from
outside with psutil over a window after start-up."""

from __future__ import annotations

import asyncio
import os
import sys

import psutil
import yaml

from bench import procs
from bench.ctx import Ctx, Row, drop_state, fmt
from bench.plan import relay_settings
from bench.polling import idle_key
from bench.stats import summarize

WARMUP = 5.0  # after "relay running": start-up (10,000 dispatchers, one due-time query) is over


async def many_idle(ctx: Ctx, upstream: str, receiver: str) -> None:
    """Start ``relay run`` with ``ctx.sizes.idle_subscribers`` subscribers, wait until it runs,
    then measure its user+system CPU over ``idle_seconds``."""
    sz = ctx.sizes
    n = sz.idle_subscribers
    cpus: list[float] = []
    rsss: list[float] = []
    for rep in range(sz.reps):
        state = ctx.state("many-idle")
        subs = [(f"s{i}", f"{receiver}/s{i}") for i in range(n)]
        settings = relay_settings(
            state, upstream, idle_key(rep), subs, max_in_flight=4,
            upstream={"poll_interval": "1s"},
        )  # fmt: skip
        config = os.path.join(ctx.scratch, f"many-idle-{rep}.yaml")
        with open(config, "w") as f:
            yaml.safe_dump(settings, f)
        os.makedirs(ctx.logs, exist_ok=True)
        with open(os.path.join(ctx.logs, f"relay-many-idle-{rep}.log"), "ab") as log:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "relay", "run", "--config", config,
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
            try:
                assert proc.stderr is not None
                while True:  # the relay logs this line once every task is started
                    line = await asyncio.wait_for(proc.stderr.readline(), 300)
                    if not line:
                        raise RuntimeError("relay exited before it ran; see its log")
                    log.write(line)
                    if b"relay running" in line:
                        break
                drain = asyncio.ensure_future(procs.copy_stream(proc.stderr, log))
                ps = psutil.Process(proc.pid)
                await asyncio.sleep(WARMUP)
                t0 = ps.cpu_times()
                await asyncio.sleep(sz.idle_seconds)
                t1 = ps.cpu_times()
                used = (t1.user + t1.system) - (t0.user + t0.system)
                cpus.append(100 * used / sz.idle_seconds)
                rsss.append(ps.memory_info().rss / 2**20)
            finally:
                if proc.returncode is None:
                    proc.terminate()
                    try:
                        await asyncio.wait_for(proc.wait(), 60)
                    except TimeoutError:
                        proc.kill()
                        await proc.wait()
                drop_state(state)
        drain.cancel()
    cpu, rss = summarize(cpus), summarize(rsss)
    ctx.add(
        "idle",
        Row(
            f"{n:,} idle subscribers: CPU over {sz.idle_seconds:g} s",
            "≤ 2 % of one core",
            fmt(cpu, " %", 2),
            f"RSS {fmt(rss, ' MB', 1)}",
            ctx.check(cpu.median <= 2.0),
        ),
    )
    ctx.note(
        "idle",
        f"`relay run` with {n:,} subscribers and one account polled every second with nothing "
        "new, CPU measured from outside the process (psutil) after start-up. Before the "
        "event-driven scheduler this cost 19 s of CPU in 30 s (issue 8 #12).",
    )
