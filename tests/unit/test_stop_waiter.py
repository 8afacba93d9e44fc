"""relay.core.aio.StopWaiter: a poller's sleeps and guarded polls share one task waiting for
stop, and behave as wait_or_stop and unless_stopped do."""

from __future__ import annotations

import asyncio

from relay.core.aio import StopWaiter

BOUND = 60.0  # seconds: generous bounds on waits that end by an event


def _tasks() -> set[asyncio.Task[object]]:
    return {t for t in asyncio.all_tasks() if t is not asyncio.current_task()}


async def test_sleeps_and_runs_share_one_waiting_task() -> None:
    stop = asyncio.Event()
    waiter = StopWaiter(stop)
    before = _tasks()

    async def work(n: int) -> int:
        await asyncio.sleep(0)
        return n

    for n in range(5):
        assert await waiter.sleep(0.001) is False
        assert await waiter.run(work(n)) == n
    left = _tasks() - before
    assert len(left) == 1  # the one task waiting for stop, whatever the number of turns
    waiter.close()
    await asyncio.sleep(0)
    assert all(t.done() for t in left)


async def test_stop_ends_a_sleep_and_abandons_a_run() -> None:
    stop = asyncio.Event()
    waiter = StopWaiter(stop)
    sleeping = asyncio.ensure_future(waiter.sleep(BOUND * 10))
    await asyncio.sleep(0)
    stop.set()
    assert await asyncio.wait_for(sleeping, BOUND) is True
    assert await waiter.sleep(1.0) is True  # once stopped, at once

    stop.clear()
    started, cancelled = asyncio.Event(), asyncio.Event()

    async def hangs() -> int:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return 1

    running = asyncio.ensure_future(waiter.run(hangs()))
    await asyncio.wait_for(started.wait(), BOUND)
    stop.set()  # set and cleared before: the waiter made a new task for this run
    assert await asyncio.wait_for(running, BOUND) is None
    assert cancelled.is_set()
    waiter.close()


async def test_a_failing_run_raises_and_the_caller_s_cancel_is_kept() -> None:
    stop = asyncio.Event()
    waiter = StopWaiter(stop)

    async def fails() -> None:
        raise ValueError("upstream said no")

    try:
        await waiter.run(fails())
    except ValueError as exc:
        assert "upstream said no" in str(exc)
    else:
        raise AssertionError("the run's error must reach the caller")

    outer = asyncio.ensure_future(waiter.sleep(BOUND * 10))
    await asyncio.sleep(0)
    outer.cancel()
    try:
        await asyncio.wait_for(outer, BOUND)
    except asyncio.CancelledError:
        pass
    else:
        raise AssertionError("a cancelled sleep must raise CancelledError")
    assert not stop.is_set()
    assert await waiter.sleep(0.001) is False  # the shared task survived the caller's cancel
    waiter.close()
