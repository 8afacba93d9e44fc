"""Process-level wiring shared by ``relay run`` and ``relay demo``: open the store, build the
HTTP sessions, start the admin surface, run the supervisor, and close everything in order."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import logging
import resource
import signal
import sys
from collections.abc import AsyncIterator, Callable

from relay.config.schema import Settings, load_settings
from relay.http1.client import Http1Client
from relay.ops.admin import AdminServer
from relay.runtime.stores import open_store
from relay.runtime.supervisor import Supervisor
from relay.runtime.wiring import build_pipeline

log = logging.getLogger(__name__)


@contextlib.asynccontextmanager
async def sessions(settings: Settings) -> AsyncIterator[Http1Client]:
    """The lean HTTP/1.1 client (:mod:`relay.http1`) for the WebFones GETs and the webhook POSTs,
    closed at the end.

    Concurrency to receivers is bounded by each subscriber's workers, one connection each; to
    WebFones by the upstream client (:data:`relay.ingest.upstream.MAX_CONNECTIONS`). A GET is
    never sent twice by the client (each is paid for in the key's budget first; see
    :mod:`relay.http1.client`).
    """
    http = Http1Client()
    try:
        yield http
    finally:
        http.close()


async def run_relay(
    settings: Settings,
    stop: asyncio.Event,
    on_started: Callable[[Supervisor], object] | None = None,
    *,
    config_path: str | None = None,
    watch: bool = False,
) -> None:
    """Run the relay until ``stop`` is set. Raises StoreError if the state cannot be opened.

    With ``config_path``, SIGHUP and ``POST /reload`` re-read that file (and with ``watch``,
    so does any change to it)."""
    raise_fd_limit()
    store = open_store(settings.state)
    await store.open()
    try:
        async with sessions(settings) as http:
            loader = None if config_path is None else functools.partial(load_settings, config_path)
            supervisor = Supervisor(
                settings,
                build_pipeline(settings, store, http),
                loader=loader,
                watch=config_path if watch else None,
            )
            if loader is not None:
                asyncio.get_running_loop().add_signal_handler(
                    signal.SIGHUP, supervisor.request_reload
                )
            admin = AdminServer(settings.admin, store, supervisor)
            await admin.start()
            supervisor.admin_url = admin.url
            try:
                if on_started is not None:
                    on_started(supervisor)
                await supervisor.run(stop)
            finally:
                await admin.stop()
                if loader is not None:
                    asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
    finally:
        await store.close()


FIRST_POLLS_WITHIN = 600.0  # the second freeze waits this long at most for the first polls
# Allocations (less deallocations) between two collections of the youngest generation; CPython's
# default is 700. See tune_interpreter.
YOUNG_GENERATION = 20_000
# Seconds a thread waiting for the GIL waits before it asks the holder to let go; CPython's
# default is 0.005. See tune_interpreter.
SWITCH_INTERVAL = 0.001


def tune_interpreter() -> None:
    """The interpreter settings of a relay process: ``relay run`` applies them before it starts,
    and the benchmark's worker processes (relay and baseline alike) do the same.

    - The youngest GC generation is collected after ``YOUNG_GENERATION`` allocations instead
      of 700: every delivery allocates a few dozen objects that live until its result is
      written (its claim, its body, its outcome), and at 700 a collection came every few dozen
      deliveries to walk them, collecting nothing (measured in (10), 20,000 deliveries: ~55
      collections and 13-27 ms after start-up, then one and under 1 ms). Only cycles wait longer
      to be freed; everything else is freed when its last reference goes, as always. The older
      generations keep their thresholds (they count collections of the one below).
    - The GIL switch interval is ``SWITCH_INTERVAL`` instead of 5 ms. The store's threads hand
      each SQLite statement over without the GIL and need it back when the statement returns;
      a busy event loop (uvloop does its socket work holding the GIL) keeps it until the switch
      interval runs out, so every statement of a claim, a result batch or an ingest waited up to
      5 ms behind it. A forced switch costs microseconds; at most a thousand a second happen.
    """
    gc.set_threshold(YOUNG_GENERATION, *gc.get_threshold()[1:])
    sys.setswitchinterval(SWITCH_INTERVAL)


def freeze_gc(
    supervisor: Supervisor, first_polls_within: float = FIRST_POLLS_WITHIN
) -> asyncio.Task[None]:
    """Move what lives as long as the process out of the cyclic garbage collector's reach, as
    CPython's ``gc.freeze`` docs suggest for long-lived processes: with 10,000 accounts and
    subscribers those are several hundred MB of objects that every full collection would
    otherwise walk again, for nothing. Only for ``relay run`` (a process of its own).

    Twice: once the relay runs (settings, pollers, subscribers, modules), and again once every
    account has polled successfully once (``supervisor.polled_once``), for what those first
    polls made and keep (connections, sessions, per-account caches). The second freeze does
    not wait for ever: accounts that never succeed (a rejected key, an upstream down, an
    account another instance polls) would hold it back with everything else, so it comes
    ``first_polls_within`` seconds after the first at the latest, with whatever polled by then.

    Returns the task doing it (for tests; it owns nothing else)."""
    task = asyncio.get_running_loop().create_task(
        _freeze_when_running(supervisor, first_polls_within)
    )
    _FREEZERS.add(task)
    task.add_done_callback(_FREEZERS.discard)
    return task


_FREEZERS: set[asyncio.Task[None]] = set()


async def _freeze_when_running(supervisor: Supervisor, first_polls_within: float) -> None:
    await supervisor.started.wait()
    gc.collect()  # what is garbage now is not frozen with the rest
    gc.freeze()
    try:
        async with asyncio.timeout(first_polls_within):
            await supervisor.polled_once.wait()
    except TimeoutError:
        pass  # some account has not polled yet: freeze what the others made
    gc.collect()  # walks only what the first freeze left: the first polls' objects
    gc.freeze()
    log.debug(
        "gc frozen again after the first polls (%s); %d objects frozen",
        "every account polled" if supervisor.polled_once.is_set() else "not every account polled",
        gc.get_freeze_count(),
    )


def raise_fd_limit() -> int:
    """Raise the soft limit on open files to the hard limit (many subscribers, each with kept-
    alive connections, plus admin clients, outgrow the common default of 1024). Returns the
    soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft >= hard:
        return soft
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError) as exc:
        log.warning("cannot raise the open-file limit from %d: %s", soft, exc)
        return soft
    log.debug("open-file limit raised from %d to %d", soft, target)
    return target


def install_signal_handlers(stop: asyncio.Event) -> None:
    """SIGINT/SIGTERM only set the stop event; a second one forces exit."""
    loop = asyncio.get_running_loop()

    def on_signal(signum: int) -> None:
        if stop.is_set():
            log.warning("second signal: exiting now; claimed deliveries retry after restart")
            raise SystemExit(1)
        log.info("received %s: shutting down gracefully", signal.Signals(signum).name)
        stop.set()

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, on_signal, signum)


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop when installed (markedly faster for many concurrent HTTP requests)."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop
