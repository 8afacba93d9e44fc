"""The ``pgrelay`` job of :mod:`bench.worker`: the real relay (``run_relay``, the PostgreSQL
store chosen by its URL, uvloop) until the parent says stop.

Unlike the SQLite ``relay`` job it counts nothing itself: several of these run at once on one
database, so the parent counts at the receiver. It reports its start, and its CPU time and
peak RSS when it stops.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from relay.config.schema import Settings


async def pg_relay_job(job: dict[str, Any]) -> None:
    """Run one relay instance on ``job["settings"]`` (a postgresql:// state) until stopped."""
    from bench.worker import _first, emit, rusage, stdin_lines
    from relay.ops.logs import setup_logging
    from relay.runtime.runner import run_relay
    from relay.runtime.supervisor import Supervisor

    settings = Settings.model_validate(job["settings"])
    setup_logging(job.get("log_level", "WARNING"), "text", settings.secret_values())
    started = asyncio.Event()
    supervisors: list[Supervisor] = []

    def on_started(sup: Supervisor) -> None:
        supervisors.append(sup)
        started.set()

    stop = asyncio.Event()
    task = asyncio.ensure_future(run_relay(settings, stop, on_started))
    commands = await stdin_lines()
    deadline = time.monotonic() + job.get("max_seconds", 60.0)
    await _first([started.wait(), task], deadline - time.monotonic(), "relay did not start in time")
    if task.done():
        task.result()
    await supervisors[0].started.wait()
    cpu0 = rusage()["cpu"]
    emit("started", t=time.monotonic())
    await _first([commands.readline(), task], deadline - time.monotonic(), None)
    stop.set()
    await asyncio.wait_for(task, 30)
    after = rusage()
    emit("result", cpu_run=after["cpu"] - cpu0, maxrss_mb=after["maxrss_mb"])
