"""Storage faults: a full disk under a running relay, and state files it must refuse at start.

The full disk is real: a size-limited tmpfs mounted for the test (skipped where mounting is not
allowed). A bad state file is met through the real ``relay run``: exit code 1 and one clear line.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from relay.sim.receiver import Reply
from relay.store.sqlite.store import integrity_check
from tests.helpers import (
    GENEROUS,
    KEY_A,
    Sub,
    ago,
    make_settings,
    new_secret,
    rids,
    running,
    start_relay_process,
    stop_relay_process,
    wait_until_async,
)

# -- the disk fills up under a running relay ----------------------------------------------------


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 16 MiB tmpfs: a filesystem that really runs out of space."""
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=16m,mode=0700", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a size-limited tmpfs here: {done.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], capture_output=True, check=False)


def fill(path: Path) -> int:
    """Write ``path`` until the filesystem is full; return how many bytes it took."""
    chunk = b"\0" * (64 * 1024)
    written = 0
    with open(path, "wb", buffering=0) as f:
        for _ in range(100_000):  # bounded: far more than any test filesystem holds
            try:
                written += f.write(chunk)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
                break
        for size in (4096, 512, 1):  # and the last crumbs
            with contextlib.suppress(OSError):
                while True:
                    written += f.write(b"\0" * size)
    return written


async def test_full_disk_stops_new_work_keeps_the_rest_and_resumes(
    sim, receiver_factory, tmp_path, small_disk, caplog
) -> None:
    caplog.set_level(logging.INFO, logger="relay")
    rx, url = await receiver_factory()
    state = small_disk / "state.db"
    # A receiver that is down for a while must not run out of retries while the disk is full.
    sub = Sub("crm", url, new_secret(), {"retry": ["300ms"] * 40})
    settings = make_settings(tmp_path, sim.url, [sub], state=str(state))
    first = [sim.add_record(KEY_A, started_at=ago(60)) for _ in range(3)]
    async with running(settings) as relay:
        assert relay.supervisor is not None
        store = relay.supervisor.store
        await rx.wait_count(3, timeout=GENEROUS)

        async def recorded() -> bool:
            return (await store.stats()).subscribers["crm"].delivered == 3

        # Their results are written a moment after the receiver answers (a batch per 20 ms):
        # the disk fills only once they are in the file, as this test's premise says.
        await wait_until_async(recorded)

        # Work the relay already has: two records whose deliveries keep failing for now.
        rx.set_default(Reply.status(503))
        pending = [sim.add_record(KEY_A, started_at=ago(50)) for _ in range(2)]
        await rx.wait_for(
            lambda reqs: {pending[0]["rid"], pending[1]["rid"]} <= set(rids(reqs)), timeout=GENEROUS
        )
        cursor = (await store.load_cursor("alpha")).newest

        filler = small_disk / "filler"
        assert fill(filler) > 0
        caplog.clear()
        late = [sim.add_record(KEY_A, started_at=ago(40), queue="Q" * 2000) for _ in range(5)]

        def refused() -> bool:
            return any(
                r.name == "relay.ingest.poller" and "state disk is full" in r.getMessage()
                for r in caplog.records
            )

        async def refused_async() -> bool:
            return refused()

        await wait_until_async(refused_async)
        # Nothing new was taken: the cursor did not move and nothing new went out. What the
        # relay already had is still there and the file is sound.
        assert (await store.load_cursor("alpha")).newest == cursor
        assert not {r["rid"] for r in late} & set(rids(rx.requests))
        stats = await store.stats()
        assert stats.seen == 5
        crm = stats.subscribers["crm"]
        assert crm.delivered == 3 and crm.pending + crm.inflight == 2
        assert integrity_check(str(state)) == "ok"

        # Space returns (and the receiver recovers): everything goes out, nothing twice.
        filler.unlink()
        rx.set_default(Reply.ok())
        want = {r["rid"] for r in first + pending + late}

        def all_ok(reqs: list[Any]) -> bool:
            return want <= set(ok_rids(reqs))

        await rx.wait_for(all_ok, timeout=GENEROUS)
        assert not relay.task.done()  # type: ignore[union-attr]
    assert sorted(ok_rids(rx.requests)) == sorted(want), "each record delivered exactly once"
    assert integrity_check(str(state)) == "ok"


def ok_rids(requests: list[Any]) -> list[int]:
    return rids(r for r in requests if r.status_sent == 200)


# -- state files the relay must refuse at start -------------------------------------------------


def write_config(tmp_path: Path, sim_url: str, hook_url: str, state: Path) -> Path:
    doc = {
        "state": str(state),
        "upstream": {
            "base_url": sim_url,
            "poll_interval": "50ms",
            "start_from": "2000-01-01 00:00:00",
            "accounts": [{"name": "alpha", "api_key": "${TEST_API_KEY}"}],
        },
        "subscribers": [{"name": "crm", "url": hook_url, "secret": "${TEST_SECRET}"}],
    }
    path = tmp_path / "relay.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


ENV = {**os.environ, "TEST_API_KEY": KEY_A, "TEST_SECRET": new_secret()}


def relay_cli(config: Path, command: str = "run", *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "relay", command, "--config", str(config), *args],
        capture_output=True,
        text=True,
        timeout=GENEROUS,
        env=ENV,
        check=False,
    )


def assert_refused(done: subprocess.CompletedProcess[str], state: Path, reason: str) -> None:
    assert done.returncode == 1, done.stderr
    [line] = done.stderr.splitlines()
    assert f"cannot use state {state}" in line and reason in line, line


@contextlib.contextmanager
def immutable(path: Path) -> Iterator[None]:
    """Make ``path`` unwritable even for root (``chattr +i``), or skip the test."""
    done = subprocess.run(["chattr", "+i", str(path)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot make a file immutable here: {done.stderr.strip()}")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


@pytest.mark.slow
def test_read_only_state_file_is_refused_at_start(tmp_path: Path) -> None:
    state = tmp_path / "state.db"
    with contextlib.closing(sqlite3.connect(state)) as db:
        db.execute("PRAGMA journal_mode = DELETE")  # a copied-in file, no WAL beside it
    config = write_config(tmp_path, "http://127.0.0.1:9", "http://127.0.0.1:9/h", state)
    with immutable(state):
        assert_refused(relay_cli(config), state, "readonly")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"this is not a database, it is a text file\n" * 100, "file is not a database"),
        (None, "SQLite file of some other program"),
    ],
    ids=["not-a-database", "someone-elses-database"],
)
def test_a_state_file_that_is_not_ours_is_refused(
    tmp_path: Path, content: bytes | None, reason: str
) -> None:
    state = tmp_path / "state.db"
    if content is None:
        with contextlib.closing(sqlite3.connect(state)) as db:
            db.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, total REAL)")
            db.commit()
    else:
        state.write_bytes(content)
    config = write_config(tmp_path, "http://127.0.0.1:9", "http://127.0.0.1:9/h", state)
    assert_refused(relay_cli(config), state, reason)


@pytest.mark.slow
def test_someone_elses_database_is_left_exactly_as_it_was(tmp_path: Path) -> None:
    state = tmp_path / "state.db"
    with contextlib.closing(sqlite3.connect(state)) as db:
        db.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, total REAL)")
        db.commit()
    before = state.read_bytes()
    config = write_config(tmp_path, "http://127.0.0.1:9", "http://127.0.0.1:9/h", state)
    assert relay_cli(config).returncode == 1
    assert state.read_bytes() == before


@pytest.mark.slow
async def test_second_relay_on_the_same_state_refuses_to_start(
    sim, receiver_factory, tmp_path
) -> None:
    rx, url = await receiver_factory()
    state = tmp_path / "state.db"
    config = write_config(tmp_path, sim.url, url, state)
    sim.add_record(KEY_A, started_at=ago(20))
    first = await start_relay_process(config, ENV, tmp_path / "first.log")
    try:
        await rx.wait_count(1, timeout=GENEROUS)
        second = await asyncio.to_thread(relay_cli, config)
        assert_refused(second, state, "in use by another relay process")
        # Reads work beside the owner (a read-only snapshot); writes need its admin API.
        status = await asyncio.to_thread(relay_cli, config, "status")
        assert status.returncode == 0, status.stderr
        assert '"source": "state file (read-only)"' in status.stdout
        write = await asyncio.to_thread(relay_cli, config, "enable-subscriber", "crm")
        assert write.returncode == 1
        assert "a relay is running on this state: set admin.listen" in write.stderr
        # The first relay never noticed: it keeps delivering.
        sim.add_record(KEY_A, started_at=ago(10))
        await rx.wait_count(2, timeout=GENEROUS)
        assert first.returncode is None
    finally:
        assert await stop_relay_process(first) == 0
