"""Child processes for the benchmarks: receivers, relay workers and baseline clients.

Each child is started with this interpreter, speaks lines on stdout, and is always stopped (SIGTERM,
then SIGKILL after a bound) by the context manager that started it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson
import psutil


class Child:
    """A running child process; ``line``/``event`` read its stdout with a timeout."""

    def __init__(self, proc: asyncio.subprocess.Process, name: str) -> None:
        self.proc = proc
        self.name = name
        self.ps = psutil.Process(proc.pid)
        self.url = ""

    def cpu(self) -> float:
        """CPU seconds (user + system) used so far."""
        try:
            t = self.ps.cpu_times()
        except psutil.Error:
            return 0.0
        return float(t.user + t.system)

    async def line(self, timeout: float) -> str:
        assert self.proc.stdout is not None
        raw = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        if not raw:
            code = await asyncio.wait_for(self.proc.wait(), 5)
            raise RuntimeError(f"{self.name} exited ({code}) before answering; see its log")
        return raw.decode().strip()

    async def event(self, name: str, timeout: float) -> dict[str, Any]:
        """The next JSON line whose ``event`` is ``name`` (others are skipped)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            doc: dict[str, Any] = orjson.loads(await self.line(deadline - loop.time()))
            if doc.get("event") == name:
                return doc

    def send(self, text: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(text.encode() + b"\n")

    def rss_mb(self) -> float:
        try:
            return float(self.ps.memory_info().rss) / 2**20
        except psutil.Error:
            return 0.0

    async def exited(self, timeout: float) -> None:
        """Wait for the child to end by itself (e.g. a worker writing its profile)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.proc.wait(), timeout)

    async def stop(self, timeout: float = 10.0) -> None:
        if self.proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.proc.wait(), timeout)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            await self.proc.wait()


@contextlib.asynccontextmanager
async def child(name: str, args: list[str], log_dir: str) -> AsyncIterator[Child]:
    """Run ``python <args>`` with stderr to ``<log_dir>/<name>.log``; stop it on exit."""
    os.makedirs(log_dir, exist_ok=True)
    with open(os.path.join(log_dir, f"{name}.log"), "ab") as log:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            *args,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=log,
        )
    handle = Child(proc, name)
    try:
        yield handle
    finally:
        await handle.stop()


@contextlib.asynccontextmanager
async def fast_receiver(log_dir: str, name: str = "receiver") -> AsyncIterator[Child]:
    """The stock minimal receiver, ``python -m relay.sim.receiver --fast``; ``.url`` is its URL."""
    async with child(name, ["-m", "relay.sim.receiver", "--fast", "--print-url"], log_dir) as rx:
        rx.url = await rx.line(30)
        yield rx


@contextlib.asynccontextmanager
async def bench_receiver(
    mode: str, listeners: int, log_dir: str, name: str | None = None
) -> AsyncIterator[list[str]]:
    """A :mod:`bench.rx` receiver process; yields its URLs."""
    args = ["-m", "bench.rx", "--mode", mode, "--listeners", str(listeners)]
    async with child(name or f"rx-{mode}", args, log_dir) as rx:
        yield orjson.loads(await rx.line(30))["urls"]


async def http_json(method: str, url: str) -> Any:
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, url, timeout=aiohttp.ClientTimeout(total=30)) as resp,
    ):
        return orjson.loads(await resp.read())


def worker_args(job: dict[str, Any]) -> list[str]:
    return ["-m", "bench.worker", orjson.dumps(job).decode()]


async def run_job(name: str, job: dict[str, Any], log_dir: str, timeout: float) -> dict[str, Any]:
    """Run a worker job that needs no conversation; return its ``result`` event."""
    async with child(name, worker_args(job), log_dir) as proc:
        result = await proc.event("result", timeout)
        await proc.exited(30)
        return result
