"""A small per-process cache of webhook bodies, so every claim of one record shares one object.

A record is fanned out to every subscriber of its account, and each subscriber claims its own
delivery of it, usually within milliseconds of the others. Read from the database per claim, a
body exists once per subscriber in memory: a 50 MB record took 1 GB with 12 subscribers. Handing
out the object a recent claim already read keeps that at one copy, whatever the number of
subscribers (issue 8, finding #13).

The key must name the body exactly, not just the row: SQLite may reuse the id of a deleted
record, so backends key on the id *and* what was stored with it (rid, time received). Bodies
never change once stored, so an entry is never stale, only old.

Bounded by entries and bytes, least recently used first out: idle, it holds at most
:data:`MAX_BYTES`. Not thread-safe: a backend uses it from one thread (SQLite: its claim thread).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable

MAX_ENTRIES = 1024
MAX_BYTES = 32 * 1024 * 1024


class BodyCache:
    """Recently claimed bodies by key; see the module docstring."""

    def __init__(self, max_entries: int = MAX_ENTRIES, max_bytes: int = MAX_BYTES) -> None:
        self._entries: OrderedDict[Hashable, bytes] = OrderedDict()
        self._bytes = 0
        self._max_entries = max_entries
        self._max_bytes = max_bytes

    def get(self, key: Hashable) -> bytes | None:
        """The body stored under ``key`` (now the most recently used), or None."""
        body = self._entries.get(key)
        if body is not None:
            self._entries.move_to_end(key)
        return body

    def put(self, key: Hashable, body: bytes) -> bytes:
        """Remember ``body`` under ``key`` and return the object to hand out for it."""
        old = self._entries.pop(key, None)
        if old is not None:
            self._bytes -= len(old)
        if len(body) > self._max_bytes:
            return body  # larger than the whole cache: not kept (the record-size limit is lower)
        self._entries[key] = body
        self._bytes += len(body)
        while len(self._entries) > self._max_entries or self._bytes > self._max_bytes:
            _, evicted = self._entries.popitem(last=False)
            self._bytes -= len(evicted)
        return body

    def clear(self) -> None:
        self._entries.clear()
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._entries)
