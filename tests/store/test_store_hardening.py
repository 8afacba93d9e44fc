"""Store hardening: private state files (issue 8 §3 #4), de-duplicated and pruned quarantine
(#7), retention of dead letters and orphaned deliveries (#8). Real SQLite files in tmp dirs;
every time is an explicit number passed to the store."""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from relay.core.models import CallRecord, IngestBatch
from relay.store.sqlite.store import SqliteStore

T0 = 1_000.0


@pytest.fixture
def umask_022() -> Iterator[None]:
    """The common default umask, which would make new files world-readable."""
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def record(rid: int) -> CallRecord:
    return CallRecord(rid, "2025-07-01 14:53:43", b'{"rid":%d}' % rid)


async def test_state_file_and_companions_are_created_private(
    tmp_path: Path, umask_022: None
) -> None:
    path = tmp_path / "state.db"
    s = SqliteStore(str(path))
    await s.open()
    try:
        await s.ingest(IngestBatch("acct", [record(1)], ["a"], T0, None))
        files = [path, Path(f"{path}-wal"), Path(f"{path}-shm"), Path(f"{path}.lock")]
        assert {f.name: mode(f) for f in files} == {f.name: 0o600 for f in files}
    finally:
        await s.close()


async def test_a_world_readable_state_file_is_tightened_on_open(
    tmp_path: Path, umask_022: None
) -> None:
    path = tmp_path / "state.db"
    async with _opened(SqliteStore(str(path))) as s:
        await s.ingest(IngestBatch("acct", [record(1)], ["a"], T0, None))
    for f in (path, Path(f"{path}.lock")):
        f.chmod(0o644)  # as an older relay left it
    async with _opened(SqliteStore(str(path))):
        for f in (path, Path(f"{path}-wal"), Path(f"{path}-shm"), Path(f"{path}.lock")):
            assert mode(f) == 0o600, f.name


@contextlib.asynccontextmanager
async def _opened(store: SqliteStore) -> AsyncIterator[SqliteStore]:
    await store.open()
    try:
        yield store
    finally:
        await store.close()
