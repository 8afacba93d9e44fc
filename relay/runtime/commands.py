"""The operator commands behind ``relay status / inspect / redeliver / dead-letters /
enable-subscriber / backup``.

While a relay runs it owns the state, so a command goes through its admin API when one is
configured and answering; reads otherwise use a read-only snapshot of the state (which works
whether or not a relay runs), and writes open the store (which fails fast with "in use" when a
relay owns it). Each returns a JSON-ready result; the CLI prints it.
"""

from __future__ import annotations

import dataclasses
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from relay.config.schema import Settings
from relay.core.errors import StoreError, StoreLocked
from relay.core.journey import RecordQuery
from relay.core.status import RelayStatus
from relay.ops.client import AdminClient, AdminUnavailable
from relay.ops.journey import explain, journey_doc
from relay.runtime.stores import open_reader, open_store
from relay.store.base import Store, StoreReader

T = TypeVar("T")


def _api(settings: Settings) -> AdminClient | None:
    """A client for the running relay's admin API, or None when there is none answering."""
    if settings.admin.listen is None:
        return None
    client = AdminClient(settings.admin, timeout=30.0)
    try:
        client.get("/healthz")
    except AdminUnavailable:
        return None
    return client


async def _read(settings: Settings, fn: Callable[[StoreReader], Awaitable[T]]) -> T:
    reader = open_reader(settings.state)
    await reader.open()
    try:
        return await fn(reader)
    finally:
        await reader.close()


async def _write(settings: Settings, fn: Callable[[Store], Awaitable[T]]) -> T:
    store = open_store(settings.state)
    try:
        await store.open()
    except StoreLocked:
        raise StoreLocked(
            "a relay is running on this state: set admin.listen (and admin.token) so that "
            "this command can go through its admin API"
        ) from None
    try:
        return await fn(store)
    finally:
        await store.close()


async def status(settings: Settings) -> dict[str, Any]:
    """The status document (live from the admin API, else from the state file)."""
    api = _api(settings)
    if api is not None:
        doc: dict[str, Any] = api.get("/status")
        doc["source"] = "admin API"
        return doc

    async def stats(reader: StoreReader) -> dict[str, Any]:
        snapshot = RelayStatus(store=await reader.stats(), at=time.time())
        doc = snapshot.to_dict()
        # Whether a relay runs, and how its loops are doing, only the relay itself can say.
        for live in ("running", "ready", "problems", "pollers", "dispatchers"):
            doc.pop(live, None)
        doc["source"] = "state file (read-only)"
        return doc

    return await _read(settings, stats)


async def inspect(settings: Settings, account: str, rid: int) -> dict[str, Any]:
    """A call's journey."""
    api = _api(settings)
    if api is not None:
        path = f"/records/{urllib.parse.quote(account, safe='')}/{rid}"
        result: dict[str, Any] = api.get(path, also_ok=(404,))
        return result
    journey = await _read(settings, lambda r: r.journey(account, rid))
    return journey_doc(explain(journey, settings))


async def search(settings: Settings, query: RecordQuery) -> list[dict[str, Any]]:
    """Stored records by caller number and time range."""
    api = _api(settings)
    if api is not None:
        params = {k: v for k, v in dataclasses.asdict(query).items() if v is not None}
        found: list[dict[str, Any]] = api.get("/records?" + urllib.parse.urlencode(params))
        return found
    hits = await _read(settings, lambda r: r.find_records(query))
    return [dataclasses.asdict(hit) for hit in hits]


async def redeliver(settings: Settings, delivery_id: int) -> dict[str, Any]:
    """Send a delivered (or dead) delivery again: same webhook-id, a new attempt."""
    api = _api(settings)
    if api is not None:
        result: dict[str, Any] = api.post(f"/deliveries/{delivery_id}/redeliver")
        return result

    async def go(store: Store) -> dict[str, Any]:
        subscriber = await store.delivery_subscriber(delivery_id)
        if subscriber is None:
            raise StoreError(f"no delivery {delivery_id}")
        if subscriber not in {s.name for s in settings.subscribers}:
            raise StoreError(f"subscriber {subscriber!r} is not in the configuration")
        if not await store.redeliver(delivery_id, time.time()):
            raise StoreError(f"delivery {delivery_id} is already queued or in flight")
        return {"redelivering": delivery_id, "subscriber": subscriber}

    return await _write(settings, go)


async def dead_letters(settings: Settings, subscriber: str | None, limit: int) -> Any:
    """Dead letters, newest first."""
    api = _api(settings)
    if api is not None:
        query = {"limit": str(limit), **({"subscriber": subscriber} if subscriber else {})}
        return api.get("/dead-letters?" + urllib.parse.urlencode(query))
    letters = await _read(settings, lambda r: r.dead_letters(subscriber, limit))
    return [dataclasses.asdict(letter) for letter in letters]


async def replay(settings: Settings, subscriber: str | None) -> dict[str, Any]:
    """Put dead letters back in their queues."""
    api = _api(settings)
    if api is not None:
        result: dict[str, Any] = api.post("/dead-letters/replay", {"subscriber": subscriber})
        return result
    _known(settings, subscriber)

    async def go(store: Store) -> dict[str, Any]:
        return {"replayed": await store.replay(subscriber, None, time.time())}

    return await _write(settings, go)


async def enable(settings: Settings, name: str) -> dict[str, Any]:
    """Re-enable a subscriber disabled by 410 Gone (or paused)."""
    api = _api(settings)
    if api is not None:
        result: dict[str, Any] = api.post(
            f"/subscribers/{urllib.parse.quote(name, safe='')}/enable"
        )
        return result
    _known(settings, name)

    async def go(store: Store) -> dict[str, Any]:
        await store.set_subscriber_disabled(name, None, time.time())
        return {"enabled": name}

    return await _write(settings, go)


async def backup(settings: Settings, target: str) -> dict[str, Any]:
    """A consistent copy of the state file, taken online (the relay may keep running)."""

    async def go(reader: StoreReader) -> dict[str, Any]:
        await reader.backup(target)
        return {"backup": target}

    return await _read(settings, go)


def _known(settings: Settings, name: str | None) -> None:
    if name is not None and name not in {s.name for s in settings.subscribers}:
        raise StoreError(f"no subscriber named {name!r} in the configuration")
