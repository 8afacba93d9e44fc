"""Child processes for the benchmarks: receivers, relay workers and baseline clients.

Each child is started with this interpreter, speaks lines on stdout, and is always stopped (SIGTERM,
then SIGKILL after a bound) by the context manager that started it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator, Sequence
from typing import Any, BinaryIO, TypeVar

import aiohttp
import orjson
import psutil
import yaml

C = TypeVar("C", bound="Child")


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
async def child(
    name: str,
    args: list[str],
    log_dir: str,
    env: dict[str, str] | None = None,
    cls: type[C] = Child,  # type: ignore[assignment]
) -> AsyncIterator[C]:
    """Run ``python <args>`` with stderr to ``<log_dir>/<name>.log``; stop it on exit.

    ``env`` adds to this process's environment (e.g. ``SSL_CERT_FILE`` for a throwaway CA)."""
    os.makedirs(log_dir, exist_ok=True)
    with open(os.path.join(log_dir, f"{name}.log"), "ab") as log:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            *args,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=log,
            env={**os.environ, **env} if env else None,
        )
    handle = cls(proc, name)
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
    async with counting_receiver(mode, listeners, log_dir, name) as rx:
        yield rx.urls


class Receiver(Child):
    """A :mod:`bench.rx` process: its URLs, and its counters read from outside."""

    def __init__(self, proc: asyncio.subprocess.Process, name: str) -> None:
        super().__init__(proc, name)
        self.urls: list[str] = []
        self.tls: ssl.SSLContext | None = None  # trusts its certificate when it serves HTTPS

    async def stats(self) -> dict[str, Any]:
        doc: dict[str, Any] = await http_json("GET", f"{self.urls[0]}/_stats", self.tls)
        return doc

    async def reset(self) -> None:
        await http_json("GET", f"{self.urls[0]}/_reset", self.tls)

    async def wait_count(self, want: int, timeout: float) -> dict[str, Any]:
        """Poll ``/_stats`` (every 100 ms) until ``want`` requests arrived or ``timeout``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            doc = await self.stats()
            if doc["requests"] >= want or loop.time() > deadline:
                return doc
            await asyncio.sleep(0.1)


@contextlib.asynccontextmanager
async def counting_receiver(
    mode: str,
    listeners: int,
    log_dir: str,
    name: str | None = None,
    extra: Sequence[str] = (),
    cafile: str | None = None,
) -> AsyncIterator[Receiver]:
    """A :mod:`bench.rx` receiver process (``extra``: ``--tls CERT KEY``, ``--close``;
    ``cafile``: the CA this process trusts to read its counters over HTTPS)."""
    args = ["-m", "bench.rx", "--mode", mode, "--listeners", str(listeners), *extra]
    async with child(name or f"rx-{mode}", args, log_dir, cls=Receiver) as rx:
        if cafile is not None:
            rx.tls = ssl.create_default_context(cafile=cafile)
        rx.urls = orjson.loads(await rx.line(30))["urls"]
        rx.url = rx.urls[0]
        yield rx


@contextlib.asynccontextmanager
async def relay_run(
    name: str,
    settings: dict[str, Any],
    scratch: str,
    log_dir: str,
    env: dict[str, str] | None = None,
    tree: str | None = None,
) -> AsyncIterator[Child]:
    """``python -m relay run --config <settings as YAML>``, as a user starts it; yields once it
    logged "relay running" (every task started), so the log level must be INFO or DEBUG. Its
    stderr goes to ``<log_dir>/<name>.log``. ``tree``: run the relay of that checkout instead
    (``-m`` puts the working directory first on ``sys.path``, before ``PYTHONPATH``, so the
    process starts in the tree, with the tree on ``PYTHONPATH`` for what it starts itself)."""
    config = os.path.join(scratch, f"{name}.yaml")
    with open(config, "w") as f:
        yaml.safe_dump(settings, f)
    os.makedirs(log_dir, exist_ok=True)
    with open(os.path.join(log_dir, f"{name}.log"), "ab") as log:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "relay", "run", "--config", config,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE, env=_env(env, tree), cwd=tree,
        )  # fmt: skip
        handle = Child(proc, name)
        copy: asyncio.Future[None] | None = None
        spy: asyncio.subprocess.Process | None = None
        try:
            assert proc.stderr is not None
            while True:  # the relay logs this line once every task is started
                line = await asyncio.wait_for(proc.stderr.readline(), 300)
                if not line:
                    raise RuntimeError(f"{name} exited before it ran; see its log")
                log.write(line)
                if b"relay running" in line:
                    break
            copy = asyncio.ensure_future(copy_stream(proc.stderr, log))
            spy = await _profile(name, proc.pid, log_dir)
            yield handle
        finally:
            await handle.stop(60)
            if copy is not None:
                await copy
            if spy is not None:
                await asyncio.wait_for(spy.wait(), 60)


def _env(env: dict[str, str] | None, tree: str | None) -> dict[str, str] | None:
    if tree is not None:
        env = {**(env or {}), "PYTHONPATH": os.path.abspath(tree)}
    return {**os.environ, **env} if env else None


def relay_source(tree: str) -> str:
    """Where ``python -m relay`` started in ``tree`` imports the relay from."""
    out = subprocess.run(
        [sys.executable, "-c", "import relay; print(relay.__file__)"],
        cwd=tree, env=_env(None, tree), capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    return os.path.dirname(os.path.dirname(os.path.abspath(out.stdout.strip())))


async def _profile(name: str, pid: int, log_dir: str) -> asyncio.subprocess.Process | None:
    """With ``BENCH_PYSPY=1``, py-spy samples the relay (all threads, 200 Hz, idle frames out)
    from now until it exits, into ``<log_dir>/<name>-<pid>.txt`` as collapsed stacks."""
    if os.environ.get("BENCH_PYSPY") != "1":
        return None
    out = os.path.join(log_dir, f"{name}-{pid}.txt")
    args = ["record", "--pid", str(pid), "--rate", "200", "--threads", "--nonblocking"]
    return await asyncio.create_subprocess_exec(
        os.path.join(os.path.dirname(sys.executable), "py-spy"), *args, "--format", "raw",
        "-o", out, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip


async def copy_stream(stream: asyncio.StreamReader, log: BinaryIO) -> None:
    """The rest of a relay's log, copied as it comes, a pipe's worth at a time.

    Line by line the copy cost the harness ~1.6 µs of CPU per log line against ~0.16 in blocks
    (20,000 lines through a pipe), on the two cores the relay and its receiver share: with a
    line per delivery, about 1 % of what a delivery costs them, taken by the harness."""
    while chunk := await stream.read(1 << 16):
        log.write(chunk)


async def http_json(method: str, url: str, tls: ssl.SSLContext | None = None) -> Any:
    async with (
        aiohttp.ClientSession() as session,
        session.request(
            method, url, timeout=aiohttp.ClientTimeout(total=30), ssl=tls or True
        ) as resp,
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
