from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator

import pytest

from relay.sim.receiver import Receiver
from relay.sim.simulator import SimulatedWebFones
from tests.helpers import KEY_A, KEY_B, STARTED
from tests.pg import drop_schema, new_schema, require_postgres, schema_url


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


@pytest.fixture
def pg_schema() -> Iterator[str]:
    """A fresh PostgreSQL schema name of this test's own (created by the relay, dropped after).
    Skips (fails under CI=true) without a server."""
    require_postgres()
    schema = new_schema()
    try:
        yield schema
    finally:
        drop_schema(schema)


@pytest.fixture
def pg_url(pg_schema: str) -> str:
    """A state URL for a fresh, empty schema of its own.

    Synchronous, so that ``store_factory`` can ask for it; the drop runs on a loop of its own.
    """
    return schema_url(pg_schema)
