"""A local, scriptable stand-in for the WebFones call-log API 3.0.

``SimulatedWebFones`` serves ``GET /call_log/records_after_timestamp`` exactly as the spec
describes (auth by ``x-api-key`` or ``Authorization: Bearer``, 400/401/403/429 bodies, records
strictly after the timestamp ordered by ``(call_timestamp, rid)``), with realistic, seeded records.
It is what ``relay demo`` polls, what the integration and fault suites script, and what the
benchmarks load, so it stays cheap: records are kept sorted and each poll is one binary search.

Faults (:class:`Fault`) are queued with :meth:`SimulatedWebFones.fail_next` or drawn at random
with :meth:`SimulatedWebFones.set_fault_rate`. Every request, faulted or not, is appended to
``request_log`` with a short hash of its key (never the key itself).

Order of checks per request: the rate limiter first (every request that reaches the server
counts, as with a limiter in front of the app), then a fault if one is due, then auth and the
timestamp. A ``slow`` fault computes its answer on arrival and sends it late, so the response can
be older than records added meanwhile -- the case a poller must not get wrong.
"""

from __future__ import annotations

import asyncio
import bisect
import hashlib
import logging
import random
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http import HTTPStatus
from typing import Any
from zoneinfo import ZoneInfo

import orjson
from aiohttp import web

from relay.sim.calls import make_call
from relay.sim.faults import (
    MALFORMED,
    Fault,
    HugeFault,
    RawFault,
    RedirectFault,
    ResetFault,
    SlowFault,
    StatusFault,
    huge_answer,
    reset_answer,
)
from relay.sim.localserver import LocalServer

__all__ = ["MALFORMED", "PATH", "Fault", "RequestLogEntry", "SimulatedWebFones", "key_id"]

logger = logging.getLogger(__name__)

PATH = "/call_log/records_after_timestamp"
TS_FORMAT = "%Y-%m-%d %H:%M:%S"
_JSON = "application/json; charset=utf-8"
_KEY_LIMITED = "Too many requests for this API key, please try again later."
_IP_LIMITED = "Too many requests from this IP, please try again later."


def key_id(key: str) -> str:
    """A short, stable, non-reversible id for an API key, safe to log and compare."""
    return hashlib.sha256(key.encode()).hexdigest()[:12]


@dataclass(frozen=True, slots=True)
class RequestLogEntry:
    """One request as the server saw it.

    ``at`` is the server clock on arrival; ``key`` is :func:`key_id` of the key sent (None when
    none was); ``status`` is the status line sent (a ``reset`` logs 200: the headers went out);
    ``accepted`` is False only for a rate-limiter 429; ``fault`` names the fault applied;
    ``instance`` is the relay instance that sent it (its ``X-Relay-Instance`` header).
    """

    at: float
    key: str | None
    timestamp: str | None
    status: int
    accepted: bool = True
    fault: str | None = None
    instance: str | None = None  # the X-Relay-Instance header: which relay instance asked


@dataclass(slots=True)
class _Account:
    """One API key's data: its PBX profile and its records, kept sorted for the query."""

    label: str
    main_number: str
    extensions: list[str]
    sort_keys: list[tuple[str, int, int]] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)
    # Raw records without a string call_timestamp cannot be filtered; they come back every time.
    unfiltered: list[dict[str, Any]] = field(default_factory=list)


class SimulatedWebFones(LocalServer):
    """The simulated API. ``keys`` maps each API key to an account label.

    ``rate_limit=(requests, per_seconds)`` enables a per-key sliding window (per client IP when no
    key is sent). ``clock`` defaults to the running loop's clock; tests pass a fake one to move
    time instead of sleeping. ``seed`` makes records, producer timing and random faults
    reproducible.
    """

    def __init__(
        self,
        keys: Mapping[str, str],
        *,
        timezone: str = "UTC",
        rate_limit: tuple[int, float] | None = None,
        seed: int = 0,
        clock: Callable[[], float] | None = None,
    ) -> None:
        super().__init__()
        self.zone = ZoneInfo(timezone)
        self.rate_limit = rate_limit
        self.request_log: list[RequestLogEntry] = []
        self.visible_at: dict[int, float] = {}
        self._clock = clock
        self._rng = random.Random(seed)
        self._fault_rng = random.Random(f"{seed}-faults")
        self._accounts: dict[str, _Account] = {}
        for i, (key, label) in enumerate(keys.items()):
            profile = random.Random(f"{seed}-account-{i}")
            first = profile.randint(20, 79) * 100
            self._accounts[key] = _Account(
                label=label,
                main_number=f"(555) 010-{(i + 1) * 1000 % 10000:04d}",
                extensions=[str(first + n) for n in range(1, 9)],
            )
        self._windows: dict[str, deque[float]] = {}
        self._next_rid = 211_001
        self._seq = 0
        self._faults: deque[Fault] = deque()
        self._key_faults: dict[str, deque[Fault]] = {}
        self._fault_prob = 0.0
        self._fault_choices: tuple[Fault, ...] = ()
        self._added: asyncio.Event | None = None

    # --- records -----------------------------------------------------------------------------

    def _account(self, key: str) -> _Account:
        try:
            return self._accounts[key]
        except KeyError:
            raise KeyError("unknown API key (not one given to the simulator)") from None

    def now(self) -> datetime:
        """The current wall-clock time in the simulator's zone."""
        return datetime.now(self.zone)

    def format_ts(self, moment: datetime) -> str:
        """``moment`` as a ``call_timestamp`` in the simulator's zone (naive = already local)."""
        local = moment.replace(tzinfo=self.zone) if moment.tzinfo is None else moment
        return local.astimezone(self.zone).strftime(TS_FORMAT)

    def add_record(
        self, key: str, *, started_at: datetime | None = None, **overrides: Any
    ) -> dict[str, Any]:
        """Create a realistic record for ``key`` stamped ``started_at`` (default now), visible now.

        ``overrides`` replace generated fields (including ``rid`` or ``call_timestamp``).
        Returns a copy of the stored record.
        """
        account = self._account(key)
        started = started_at or self.now()
        record = self._generate(account, started)
        record.update(overrides)
        self._insert(account, record)
        return dict(record)

    def add_raw(self, key: str, record: dict[str, Any]) -> None:
        """Append ``record`` verbatim (it may be invalid) to ``key``'s records.

        A record whose ``call_timestamp`` is not a string is returned by every poll, first.
        """
        self._insert(self._account(key), dict(record))

    def records(self, key: str) -> list[dict[str, Any]]:
        """Every visible record of ``key``, in response order (copies)."""
        account = self._account(key)
        return [dict(r) for r in (*account.unfiltered, *account.rows)]

    async def wait_records(self, key: str, n: int, timeout: float) -> None:  # noqa: ASYNC109
        """Wait until ``key`` has at least ``n`` visible records (else TimeoutError)."""
        account = self._account(key)
        try:
            async with asyncio.timeout(timeout):
                while len(account.rows) + len(account.unfiltered) < n:
                    if self._added is None:
                        self._added = asyncio.Event()
                    await self._added.wait()
        except TimeoutError:
            have = len(account.rows) + len(account.unfiltered)
            raise TimeoutError(f"{have} of {n} records after {timeout}s") from None

    def _generate(self, account: _Account, started: datetime) -> dict[str, Any]:
        record = make_call(
            self._rng, self._next_rid, self.format_ts(started), started, account.main_number,
            account.extensions,
        )  # fmt: skip
        return record

    def _insert(self, account: _Account, record: dict[str, Any]) -> None:
        rid = record.get("rid")
        if isinstance(rid, int):
            # Keep generated rids unique even after a raw record picked its own.
            self._next_rid = max(self._next_rid, rid + 1)
            self.visible_at[rid] = time.monotonic()
        ts = record.get("call_timestamp")
        if isinstance(ts, str):
            self._seq += 1
            sort_key = (ts, rid if isinstance(rid, int) else -1, self._seq)
            at = bisect.bisect_right(account.sort_keys, sort_key)
            account.sort_keys.insert(at, sort_key)
            account.rows.insert(at, record)
        else:
            account.unfiltered.append(record)
        if self._added is not None:
            # Wake every waiter, then hand later waiters a fresh event.
            self._added.set()
            self._added = None

    def _after(self, account: _Account, stamp: str) -> list[dict[str, Any]]:
        start = bisect.bisect_right(account.sort_keys, (stamp, sys.maxsize, sys.maxsize))
        return [*account.unfiltered, *account.rows[start:]]

    # --- background producer -----------------------------------------------------------------

    async def produce(
        self,
        key: str,
        *,
        rate: float,
        duration: float | None = None,
        count: int | None = None,
        burst_prob: float = 0.1,
        late_prob: float = 0.1,
        max_late: float = 1800.0,
    ) -> int:
        """Add records to ``key`` at about ``rate`` per second; return how many were added.

        Stops after ``duration`` seconds or ``count`` records (one of them is required). With
        ``burst_prob`` a tick adds 2-5 records sharing one second; with ``late_prob`` a record
        appears now but started ``U(60, max_late)`` seconds ago (a long call written at its end).
        Cancel the task to stop early; nothing is left half-done.
        """
        if rate <= 0:
            raise ValueError("rate must be positive")
        if duration is None and count is None:
            raise ValueError("produce() needs duration or count so that it ends")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + duration if duration is not None else float("inf")
        rng, made, due = self._rng, 0, loop.time()
        while count is None or made < count:
            size = rng.randint(2, 5) if rng.random() < burst_prob else 1
            if count is not None:
                size = min(size, count - made)
            # Schedule on absolute due times so that many tiny sleeps keep the average rate.
            due += rng.expovariate(rate / size)
            if due > deadline:
                break
            await asyncio.sleep(max(0.0, due - loop.time()))
            second = self.now()
            for _ in range(size):
                if rng.random() < late_prob:
                    late = rng.uniform(min(60.0, max_late), max_late)
                    length = int(late)
                    self.add_record(
                        key,
                        started_at=second - timedelta(seconds=late),
                        disposition="ANSWERED",
                        duration=length,
                        billsec=max(1, length - rng.randint(0, 25)),
                    )
                else:
                    self.add_record(key, started_at=second)
            made += size
        return made

    # --- faults and rate limit ---------------------------------------------------------------

    def fail_next(self, *faults: Fault, key: str | None = None) -> None:
        """Queue ``faults``, one per request (only requests with ``key``, when given).

        Per-key faults are used before global ones; queued faults before random ones.
        """
        if key is None:
            self._faults.extend(faults)
        else:
            self._key_faults.setdefault(key, deque()).extend(faults)

    def set_fault_rate(self, prob: float, faults: Iterable[Fault]) -> None:
        """Give each request probability ``prob`` of a fault drawn from ``faults`` (seeded)."""
        self._fault_prob, self._fault_choices = prob, tuple(faults)

    def _next_fault(self, key: str | None) -> Fault | None:
        queued = self._key_faults.get(key) if key is not None else None
        if queued:
            return queued.popleft()
        if self._faults:
            return self._faults.popleft()
        if self._fault_choices and self._fault_rng.random() < self._fault_prob:
            return self._fault_rng.choice(self._fault_choices)
        return None

    def _admit(self, bucket: str, now: float) -> bool:
        if self.rate_limit is None:
            return True
        limit, per = self.rate_limit
        window = self._windows.setdefault(bucket, deque())
        # Closed window [now - per, now]: a request exactly `per` old still counts.
        while window and window[0] < now - per:
            window.popleft()
        if len(window) >= limit:
            return False  # rejected requests are not counted
        window.append(now)
        return True

    def max_window_count(self, per: float, *, key: str | None = None) -> int:
        """The most accepted requests (optionally of one key) in any closed window of ``per`` s."""
        kid = key_id(key) if key is not None else None
        times = sorted(
            e.at for e in self.request_log if e.accepted and (kid is None or e.key == kid)
        )
        best, lo = 0, 0
        for hi, t in enumerate(times):
            while times[lo] < t - per:
                lo += 1
            best = max(best, hi - lo + 1)
        return best

    def count_status(self, status: int) -> int:
        """How many logged requests were answered with ``status``."""
        return sum(1 for e in self.request_log if e.status == status)

    # --- HTTP --------------------------------------------------------------------------------

    def _answer(self, key: str | None, stamp: str | None) -> tuple[int, bytes]:
        if key is None:
            return _error(401, "Missing API key")
        account = self._accounts.get(key)
        if account is None:
            return _error(403, "Invalid API key")
        if not stamp:
            return _error(400, "Missing timestamp in query")
        try:
            canonical = datetime.strptime(stamp, TS_FORMAT).strftime(TS_FORMAT)
        except ValueError:
            return _error(400, "Invalid timestamp format, expected YYYY-MM-DD HH:MM:SS")
        found = self._after(account, canonical)
        return 200, orjson.dumps({"success": True, "count": len(found), "records": found})

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        task = asyncio.current_task()
        assert task is not None
        self._inflight.add(task)
        try:
            return await self._serve(request)
        finally:
            self._inflight.discard(task)

    async def _serve(self, request: web.Request) -> web.StreamResponse:
        now = self._clock() if self._clock else asyncio.get_running_loop().time()
        key = _api_key(request)
        kid = key_id(key) if key is not None else None
        stamp = request.query.get("timestamp")
        inst = request.headers.get("X-Relay-Instance")
        if not self._admit(kid or f"ip:{request.remote}", now):
            self.request_log.append(
                RequestLogEntry(now, kid, stamp, 429, accepted=False, instance=inst)
            )
            return _response(*_error(429, _KEY_LIMITED if kid else _IP_LIMITED))
        fault = self._next_fault(key)
        kind = type(fault).__name__.removesuffix("Fault").lower() if fault else None
        match fault:
            case StatusFault(code=code, body=body, headers=headers):
                self.request_log.append(
                    RequestLogEntry(now, kid, stamp, code, fault=kind, instance=inst)
                )
                default = _error(code, _default_message(code))[1]
                return _response(code, default if body is None else body, dict(headers))
            case RawFault(code=code, content_type=ctype, body=body):
                self.request_log.append(
                    RequestLogEntry(now, kid, stamp, code, fault=kind, instance=inst)
                )
                return web.Response(status=code, body=body, headers={"Content-Type": ctype})
            case RedirectFault(location=location, code=code):
                self.request_log.append(
                    RequestLogEntry(now, kid, stamp, code, fault=kind, instance=inst)
                )
                return web.Response(status=code, headers={"Location": location})
        status, body = self._answer(key, stamp)
        self.request_log.append(RequestLogEntry(now, kid, stamp, status, fault=kind, instance=inst))
        account = self._accounts[key].label if key in self._accounts else kid
        logger.debug("simulated poll", extra={"account": account, "status": status, "since": stamp})
        if isinstance(fault, SlowFault):
            await asyncio.sleep(fault.seconds)
        if isinstance(fault, ResetFault):
            return await reset_answer(request, status, body)
        if isinstance(fault, HugeFault) and status == 200:
            return await huge_answer(request, body, fault)
        return _response(status, body)

    # --- lifecycle ---------------------------------------------------------------------------

    def build_app(self) -> web.Application:
        app = web.Application()
        app.router.add_get(PATH, self._handle)
        return app


def _api_key(request: web.Request) -> str | None:
    key = request.headers.get("x-api-key", "").strip()
    if key:
        return key
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return None


def _default_message(code: int) -> str:
    if code == 429:
        return _KEY_LIMITED
    try:
        return HTTPStatus(code).phrase
    except ValueError:
        return "Error"


def _error(code: int, message: str) -> tuple[int, bytes]:
    doc: dict[str, str] = {"error": message}
    if code == 500:
        stamp = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        doc = {
            "error": "Internal server error",
            "message": "An unexpected error occurred",
            "timestamp": stamp,
        }
    return code, orjson.dumps(doc)


def _response(status: int, body: bytes, headers: Mapping[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status, body=body, headers={"Content-Type": _JSON, **(headers or {})}
    )
