from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from relay.sim.receiver import Receiver
from relay.sim.simulator import SimulatedWebFones
from tests.helpers import KEY_A, KEY_B, STARTED


@pytest.fixture(autouse=True)
async def reap_relay_processes() -> AsyncIterator[None]:
    """Kill any relay process a test started and left running (e.g. because it failed)."""
    yield
    while STARTED:
        proc = STARTED.pop()
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


@pytest.fixture
async def sim() -> AsyncIterator[SimulatedWebFones]:
    server = SimulatedWebFones({KEY_A: "alpha", KEY_B: "bravo"}, seed=7)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def receiver_factory() -> AsyncIterator[Callable[..., Awaitable[tuple[Receiver, str]]]]:
    started: list[Receiver] = []

    async def make(
        *, ssl_context: ssl.SSLContext | None = None, **kwargs: object
    ) -> tuple[Receiver, str]:
        rx = Receiver(**kwargs)  # type: ignore[arg-type]
        url = await rx.start(ssl_context=ssl_context)
        started.append(rx)
        return rx, url

    try:
        yield make
    finally:
        for rx in started:
            await rx.stop()
