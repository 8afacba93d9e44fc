"""Shared test harness: settings for a relay pointed at local servers, a running relay, and
independent signature verification with the `standardwebhooks` package."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import resource
import secrets
import signal
import sqlite3
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from standardwebhooks.webhooks import Webhook

from relay.config.schema import Settings
from relay.runtime.runner import run_relay
from relay.runtime.supervisor import Supervisor

# The bound on every wait for work that finishes anyway (a delivery, a poll, a shutdown): minutes,
# so that only a broken relay reaches it, never a slow machine. pytest's per-test timeout
# (pyproject) stays above it.
GENEROUS = 300.0

KEY_A = "key-alpha-0123456789abcdef"
KEY_B = "key-bravo-0123456789abcdef"


def new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


@dataclass
class Sub:
    """A subscriber for a test: where it is, its secret, and any extra settings."""

    name: str
    url: str
    secret: str
    extra: dict[str, Any] | None = None


def make_settings(
    tmp_path: Path,
    upstream_url: str,
    subs: Iterable[Sub],
    *,
    accounts: Mapping[str, str] | None = None,
    upstream: Mapping[str, Any] | None = None,
    delivery: Mapping[str, Any] | None = None,
    state: str | None = None,
    cluster: Mapping[str, Any] | None = None,
) -> Settings:
    """Settings tuned for fast tests: 50 ms polls, frequent sweeps, a generous budget."""
    accounts = accounts or {"alpha": KEY_A}
    doc: dict[str, Any] = {
        "state": state or str(tmp_path / "state.db"),
        "upstream": {
            "base_url": upstream_url,
            "poll_interval": "50ms",
            "recent_window": "1m",
            "lookback": "2h",
            "sweep_interval": "300ms",
            "start_from": "2000-01-01 00:00:00",
            "timeout": "2s",
            "rate_limit": {"requests": 100000, "per": "10s"},
            "accounts": [{"name": n, "api_key": k} for n, k in accounts.items()],
            **(upstream or {}),
        },
        "subscribers": [
            {
                "name": s.name,
                "url": s.url,
                "secret": s.secret,
                "timeout": "1s",
                "retry": ["50ms", "100ms", "100ms", "100ms", "100ms"],
                **(s.extra or {}),
            }
            for s in subs
        ],
        "delivery": {"grace_period": "2s", **(delivery or {})},
        "cluster": dict(cluster or {}),
    }
    return Settings.model_validate(doc)


class RunningRelay:
    """A relay running in this event loop until ``stop()``."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.stop_event = asyncio.Event()
        self.supervisor: Supervisor | None = None
        self._started = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> RunningRelay:
        def on_started(sup: Supervisor) -> None:
            self.supervisor = sup
            self._started.set()

        self.task = asyncio.ensure_future(run_relay(self.settings, self.stop_event, on_started))
        waiter = asyncio.ensure_future(self._started.wait())
        done, _ = await asyncio.wait(
            {waiter, self.task}, timeout=GENEROUS, return_when="FIRST_COMPLETED"
        )
        if self.task in done:
            waiter.cancel()
            self.task.result()  # raises the startup error
        assert self.supervisor is not None
        await asyncio.wait_for(self.supervisor.started.wait(), GENEROUS)
        return self

    async def stop(self) -> None:
        self.stop_event.set()
        if self.task is not None:
            # Its own grace period (make_settings: 2 s) ends the shutdown long before this.
            await asyncio.wait_for(self.task, GENEROUS)


@contextlib.asynccontextmanager
async def running(settings: Settings) -> AsyncIterator[RunningRelay]:
    relay = await RunningRelay(settings).start()
    try:
        yield relay
    finally:
        await relay.stop()


def verify_all(requests: Iterable[Any], secret: str) -> list[dict[str, Any]]:
    """Verify every request with the independent `standardwebhooks` package; return bodies."""
    wh = Webhook(secret)
    docs = []
    for r in requests:
        wh.verify(r.body, dict(r.headers))
        docs.append(orjson.loads(r.body))
    return docs


def rids(requests: Iterable[Any]) -> list[int]:
    return [orjson.loads(r.body)["data"]["rid"] for r in requests]


async def wait_until_async(
    predicate: Callable[[], Awaitable[bool]], timeout: float = GENEROUS, interval: float = 0.02
) -> None:
    """Re-check state that has no event to wait on (the store) until true, with a deadline."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not await predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError("condition not reached in time")
        await asyncio.sleep(interval)


def ago(seconds: float) -> dt.datetime:
    """A naive UTC datetime ``seconds`` ago, whole seconds (what the simulator stamps)."""
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None, microsecond=0)
    return now - dt.timedelta(seconds=seconds)


# Every relay process a test started; conftest kills the ones still running when the test ends,
# so that a failing test does not leave a relay behind.
STARTED: list[asyncio.subprocess.Process] = []
# Where each process's lines begin in its log (the log is shared by successive processes).
_LOG_START: dict[int, tuple[Path, int]] = {}
READY_LINE = b"relay running:"  # logged once the signal handlers are in place and work began


async def start_relay_process(
    config: Path, env: Mapping[str, str], log: Path, *args: str, nofile: int | None = None
) -> asyncio.subprocess.Process:
    """``relay run --config CONFIG`` as a real process, its stderr appended to ``log``.

    ``nofile`` sets its soft and hard open-file limits (like ``ulimit -n`` in its shell).
    """

    def limit() -> None:
        if nofile is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

    offset = log.stat().st_size if log.exists() else 0
    with open(log, "ab") as stderr:  # the child keeps its own copy of the descriptor
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "relay",
            "run",
            "--config",
            str(config),
            *args,
            env=dict(env),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=stderr,
            preexec_fn=limit if nofile is not None else None,
        )
    STARTED.append(proc)
    _LOG_START[id(proc)] = (log, offset)
    return proc


async def wait_running(proc: asyncio.subprocess.Process) -> None:
    """Wait until a process from :func:`start_relay_process` is running: its signal handlers
    are installed, so a SIGTERM now means a graceful stop, not death by the default action
    (exit -15, which a test sending SIGTERM during a slow start used to see)."""
    log, offset = _LOG_START[id(proc)]

    async def ready() -> bool:
        if proc.returncode is not None:
            raise AssertionError(f"relay exited with {proc.returncode} before it was running")
        with open(log, "rb") as f:
            f.seek(offset)
            return READY_LINE in f.read()

    # A file has no event to wait on; the check is cheap and its bound generous.
    await wait_until_async(ready, interval=0.05)


async def stop_relay_process(proc: asyncio.subprocess.Process) -> int:
    """SIGTERM a running relay process once it is running and return its exit code.

    The relay's grace period (2 s in these tests) plus its hard deadline end the shutdown far
    inside :data:`GENEROUS`, so the two bounds never race.
    """
    await wait_running(proc)
    proc.send_signal(signal.SIGTERM)
    return await asyncio.wait_for(proc.wait(), GENEROUS)


def sqlite_rows(path: Path | str, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Read the state file directly (read-only), e.g. the attempts table the Store hides."""
    uri = f"{Path(path).absolute().as_uri()}?mode=ro"
    with contextlib.closing(sqlite3.connect(uri, uri=True)) as conn:
        return conn.execute(sql, params).fetchall()
