"""What only the SQLite backend has: file locking, one worker thread, crash safety, disk full,
file permissions and its schema versions. The behaviour both backends share is in
test_contract.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import multiprocessing
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from relay.core.errors import StoreError, StoreFull, StoreLocked
from relay.core.models import AccountCursor, IngestBatch, Outcome
from relay.store.sqlite import sql as sqlite_backend
from relay.store.sqlite.store import SqliteStore, integrity_check
from tests.helpers import GENEROUS
from tests.store.builders import LEASE, T0, batch, opened, rec, result, ts

REPO = Path(__file__).resolve().parents[2]


def sqlite_rows(path: Path, sql: str) -> list[tuple[Any, ...]]:
    """Read the state file through a second connection (fine alongside the owner in WAL)."""
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return conn.execute(sql).fetchall()


async def test_sqlite_records_every_attempt(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    async with opened(SqliteStore(str(path))) as s:
        await s.ingest(batch([1], ("a",)))
        [d] = await s.claim("a", 1, T0, LEASE)
        await s.finish([result(d.id, Outcome.RETRY, at=1_100.0, status=None, error="timeout")])
        [d] = await s.claim("a", 1, 1_100.0, LEASE)
        await s.finish([result(d.id, Outcome.DELIVERED, at=1_200.0)])
        rows = sqlite_rows(path, "SELECT delivery_id, at, status, error FROM attempts ORDER BY at")
        assert rows == [(d.id, 1_100.0, None, "timeout"), (d.id, 1_200.0, 200, None)]
        [state] = sqlite_rows(path, "SELECT state, attempts, last_status FROM deliveries")
        assert state == ("delivered", 2, 200)
        # The body is stored once, however many subscribers there are.
        await s.ingest(batch([2], ("a", "b", "c")))
        assert sqlite_rows(path, "SELECT COUNT(*) FROM records") == [(2,)]


async def test_sqlite_runs_everything_on_one_worker_thread(tmp_path: Path) -> None:
    async with opened(SqliteStore(str(tmp_path / "state.db"))) as s:
        first = await s._run("probe", lambda _conn: threading.get_ident())
        second = await s._run("probe", lambda _conn: threading.get_ident())
    assert first == second != threading.get_ident()


async def test_sqlite_prune_delivered_in_chunks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_backend, "PRUNE_CHUNK", 3)
    path = tmp_path / "state.db"
    async with opened(SqliteStore(str(path))) as s:
        await s.ingest(batch(list(range(10)), ("a",), at=100.0))
        claimed = await s.claim("a", 100, T0, LEASE)
        done = [result(d.id, Outcome.DELIVERED) for d in claimed if d.rid != 4]
        await s.finish(done)
        assert await s.prune_delivered(500.0) == 9
        assert sqlite_rows(path, "SELECT rid FROM records") == [(4,)]
        assert sqlite_rows(path, "SELECT COUNT(*) FROM attempts") == [(0,)]
        assert sqlite_rows(path, "SELECT COUNT(*) FROM deliveries") == [(1,)]


async def test_sqlite_schema_is_versioned(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    async with opened(SqliteStore(str(path))):
        pass
    assert sqlite_rows(path, "PRAGMA user_version") == [(len(sqlite_backend.MIGRATIONS),)]
    assert sqlite_rows(path, "PRAGMA journal_mode") == [("wal",)]
    async with opened(SqliteStore(str(path))):  # reopening migrates nothing
        pass

    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute("PRAGMA user_version = 99")
        conn.commit()
    with pytest.raises(StoreError, match="newer than this relay"):
        await SqliteStore(str(path)).open()

    foreign = tmp_path / "other.db"
    with contextlib.closing(sqlite3.connect(foreign)) as conn:
        conn.execute("CREATE TABLE customers (id INTEGER)")
    with pytest.raises(StoreError, match="some other program"):
        await SqliteStore(str(foreign)).open()


async def test_a_version_1_state_file_is_migrated_and_keeps_its_cursor(tmp_path: Path) -> None:
    # A file written by the first release: schema version 1, no sweep anchor column.
    path = tmp_path / "state.db"
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.executescript(sqlite_backend.SCHEMA_V1)
        conn.execute(
            "INSERT INTO cursors (account, newest, last_sweep) VALUES (?, ?, ?)",
            ("acct", ts(3), 4_000.0),
        )
        conn.execute("PRAGMA user_version = 1")
        conn.commit()
    async with opened(SqliteStore(str(path))) as store:
        assert await store.load_cursor("acct") == AccountCursor(ts(3), 4_000.0, None)
        await store.mark_swept("acct", 5_000.0, ts(3))
        assert await store.load_cursor("acct") == AccountCursor(ts(3), 5_000.0, ts(3))
    assert sqlite_rows(path, "PRAGMA user_version") == [(len(sqlite_backend.MIGRATIONS),)]


async def test_an_older_file_keys_deliveries_by_record_alone_and_retention_still_holds(
    tmp_path: Path,
) -> None:
    # Version 6 took the state out of the deliveries_record key, so that a result does not
    # move that index entry; retention reads the state from the row instead.
    path = tmp_path / "state.db"
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.executescript(sqlite_backend.SCHEMA_V1)  # (record_id, state) until version 6
        for record, state in ((1, "delivered"), (2, "pending")):
            conn.execute(
                "INSERT INTO records (id, account, rid, call_ts, received_at, body) "
                "VALUES (?, 'acct', ?, ?, 100.0, x'7b7d')",
                (record, record, ts(record)),
            )
            conn.execute(
                "INSERT INTO deliveries (record_id, subscriber, state, next_at, updated_at) "
                "VALUES (?, 'crm', ?, 100.0, 100.0)",
                (record, state),
            )
        conn.execute("PRAGMA user_version = 1")
        conn.commit()
    async with opened(SqliteStore(str(path))) as store:
        assert await store.prune_delivered(500.0) == 1
    assert sqlite_rows(path, "SELECT name FROM pragma_index_info('deliveries_record')") == [
        ("record_id",)
    ]
    assert sqlite_rows(path, "SELECT id FROM records") == [(2,)]
    assert sqlite_rows(path, "SELECT record_id, state FROM deliveries") == [(2, "pending")]
    assert sqlite_rows(path, "PRAGMA user_version") == [(len(sqlite_backend.MIGRATIONS),)]


async def test_sqlite_second_open_is_locked(tmp_path: Path) -> None:
    path = str(tmp_path / "state.db")
    async with opened(SqliteStore(path)):
        with pytest.raises(StoreLocked) as caught:
            await SqliteStore(path).open()
        assert str(caught.value) == f"state file {path} is in use by another relay process"
    # Released on close.
    async with opened(SqliteStore(path)):
        pass


async def test_sqlite_failed_open_releases_everything(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    path.write_bytes(b"this is not an sqlite database, just some text " * 100)
    with pytest.raises(StoreError) as caught:
        await SqliteStore(str(path)).open()
    message = str(caught.value)
    assert str(path) in message and "not a database" in message and "\n" not in message
    with open(f"{path}.lock", "rb") as lock:  # nobody holds the lock any more
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)


async def test_sqlite_missing_directory(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "state.db"
    with pytest.raises(StoreError, match="no directory") as caught:
        await SqliteStore(str(path)).open()
    assert str(path) in str(caught.value)


async def test_sqlite_disk_full_refuses_work_and_rolls_back(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    async with opened(SqliteStore(str(path))) as s:
        await s.ingest(batch([1], cursor=ts(1)))
        # Emulate a full disk: cap the file at its current size (SQLITE_FULL, as from ENOSPC).
        await s._run("cap", lambda c: c.execute("PRAGMA max_page_count = 1"))
        big = [rec(r, body=b"x" * 4_000) for r in range(2, 200)]
        with pytest.raises(StoreFull) as caught:
            await s.ingest(IngestBatch("acct", big, ["a", "b"], T0, ts(199)))
        assert "x" * 10 not in str(caught.value)
        # Nothing of the failed batch was committed; reads still work.
        stats = await s.stats()
        assert (stats.seen, stats.accounts["acct"].cursor) == (1, ts(1))

        await s._run("uncap", lambda c: c.execute("PRAGMA max_page_count = 1073741823"))
        outcome = await s.ingest(IngestBatch("acct", big, ["a", "b"], T0, ts(199)))
        assert len(outcome.new_rids) == 198
    assert integrity_check(str(path)) == "ok"


# -- file permissions: run as an unprivileged user, since root ignores them ------------------------


@pytest.fixture
def store_shared_dir() -> Iterator[Path]:
    """A scratch directory that an unprivileged user can reach (tmp_path is private to root)."""
    path = Path(tempfile.mkdtemp(prefix="relay-store-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        for sub in path.iterdir():
            sub.chmod(0o755)
        shutil.rmtree(path)


def open_error(path: Path) -> str:
    """Open a store, as a non-root user when we are root, and return the StoreError text."""

    def attempt() -> str:
        try:
            asyncio.run(SqliteStore(str(path)).open())
        except StoreError as exc:
            return f"{type(exc).__name__}: {exc}"
        return "opened"

    if os.geteuid() != 0:
        return attempt()
    ctx = multiprocessing.get_context("fork")
    receiver, sender = ctx.Pipe(duplex=False)

    def child() -> None:
        os.setgid(65534)
        os.setuid(65534)
        try:
            sender.send(attempt())
        except BaseException as exc:  # report, do not hang the parent
            sender.send(f"child failed: {exc!r}")

    proc = ctx.Process(target=child)
    proc.start()
    try:
        assert receiver.poll(30), "child did not answer"
        return str(receiver.recv())
    finally:
        proc.join()
        receiver.close()
        sender.close()


def test_sqlite_read_only_directory(store_shared_dir: Path) -> None:
    directory = store_shared_dir / "ro"
    directory.mkdir(mode=0o555)
    directory.chmod(0o555)
    path = directory / "state.db"
    message = open_error(path)
    assert message.startswith("StoreError: cannot open state file")
    assert str(path) in message


def test_sqlite_read_only_file(store_shared_dir: Path) -> None:
    directory = store_shared_dir / "rw"
    directory.mkdir()
    directory.chmod(0o777)
    path = directory / "state.db"
    asyncio.run(_create(path))
    path.chmod(0o444)
    Path(f"{path}.lock").chmod(0o666)
    message = open_error(path)
    assert message.startswith("StoreError: cannot open state file")
    assert str(path) in message


async def _create(path: Path) -> None:
    async with opened(SqliteStore(str(path))) as s:
        await s.ingest(batch([1]))


# -- other processes -------------------------------------------------------------------------------


def run_python(code: str, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        cwd=REPO,
    )


TRY_OPEN = """
import asyncio, sys
from relay.core.errors import StoreError
from relay.store.sqlite.store import SqliteStore

async def main():
    store = SqliteStore(sys.argv[1])
    try:
        await store.open()
    except StoreError as exc:
        print(type(exc).__name__, exc)
    else:
        await store.close()
        print("opened")

asyncio.run(main())
"""

INGEST_FOREVER = """
import asyncio, sys
from relay.core.models import CallRecord, IngestBatch
from relay.store.sqlite.store import SqliteStore

async def main():
    store = SqliteStore(sys.argv[1])
    await store.open()
    records = [CallRecord(rid, "2024-05-01 00:00:00", b"x" * 300) for rid in range(100)]
    await store.ingest(IngestBatch("acct", records, ["a", "b"], 1000.0, None))
    await store.claim("a", 10, 1000.0, 3600.0)
    print("ready", flush=True)
    rid = 100
    while True:  # killed somewhere in here
        records = [CallRecord(r, "2024-05-01 00:00:01", b"y" * 300) for r in range(rid, rid + 500)]
        await store.ingest(IngestBatch("acct", records, ["a", "b"], 1000.0, None))
        print("committed", flush=True)
        rid += 500

asyncio.run(main())
"""


@pytest.mark.slow
async def test_sqlite_lock_holds_against_another_process(tmp_path: Path) -> None:
    path = str(tmp_path / "state.db")
    async with opened(SqliteStore(path)):
        with run_python(TRY_OPEN, path) as proc:
            out, _ = proc.communicate(timeout=GENEROUS)
        assert out.strip() == f"StoreLocked state file {path} is in use by another relay process"
    with run_python(TRY_OPEN, path) as proc:
        out, _ = proc.communicate(timeout=GENEROUS)
    assert out.strip() == "opened"


@pytest.mark.slow
async def test_sqlite_survives_kill_9(tmp_path: Path) -> None:
    path = str(tmp_path / "state.db")
    with run_python(INGEST_FOREVER, path) as proc:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        for _ in range(3):
            assert proc.stdout.readline().strip() == "committed"
        proc.kill()  # SIGKILL, most likely mid-ingest: no chance to clean up
        proc.wait(timeout=GENEROUS)

    assert integrity_check(path) == "ok"
    async with opened(SqliteStore(path)) as s:  # the dead process's lock is gone
        [(records, deliveries)] = sqlite_rows(
            Path(path), "SELECT (SELECT COUNT(*) FROM records), (SELECT COUNT(*) FROM deliveries)"
        )
        assert records >= 100 + 3 * 500
        assert records % 500 == 100  # whole batches only
        assert deliveries == 2 * records
        # The ten claimed under a one-hour lease are due again at once.
        claimed = await s.claim("a", 10, 1_000.0, LEASE)
        assert [d.rid for d in claimed] == list(range(10))
    assert integrity_check(path) == "ok"
