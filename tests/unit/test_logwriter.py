"""The log writer thread: lines in order, every waiting line written at close and at exit, and a
kill loses at most the lines still waiting, never more than ``max_lines``."""

from __future__ import annotations

import io
import signal
import subprocess
import sys
import textwrap
import threading

from relay.ops.logwriter import LineWriter

NEVER = 3600.0  # a pause the thread never gets to the end of within a test


def test_lines_wait_until_flushed_then_come_in_order() -> None:
    out = io.StringIO()
    w = LineWriter(out, max_lines=1_000, pause=NEVER)
    try:
        for i in range(10):
            w.put(f"line {i}")
        assert out.getvalue() == ""  # waiting for the thread's pause
        w.flush()
        assert out.getvalue().splitlines() == [f"line {i}" for i in range(10)]
    finally:
        w.close()


def test_a_full_queue_is_written_by_the_caller() -> None:
    out = io.StringIO()
    w = LineWriter(out, max_lines=5, pause=NEVER)
    try:
        for i in range(12):
            w.put(f"line {i}")
        # The 5th and the 10th put found the queue full and wrote it: back-pressure, no loss.
        assert out.getvalue().splitlines() == [f"line {i}" for i in range(10)]
    finally:
        w.close()
    assert out.getvalue().splitlines() == [f"line {i}" for i in range(12)]


def test_a_warning_is_written_at_once_after_what_came_before() -> None:
    out = io.StringIO()
    w = LineWriter(out, max_lines=1_000, pause=NEVER)
    try:
        w.put("info 1")
        w.put("info 2")
        w.put("warning", urgent=True)
        assert out.getvalue().splitlines() == ["info 1", "info 2", "warning"]
    finally:
        w.close()


def test_close_writes_what_waits_and_later_lines_directly() -> None:
    out = io.StringIO()
    w = LineWriter(out, max_lines=1_000, pause=NEVER)
    w.put("before")
    w.close()
    assert out.getvalue() == "before\n"
    w.put("after")
    assert out.getvalue() == "before\nafter\n"


def test_the_thread_writes_on_its_own() -> None:
    class Signalling(io.StringIO):
        def __init__(self) -> None:
            super().__init__()
            self.wrote = threading.Event()

        def flush(self) -> None:
            super().flush()
            self.wrote.set()

    out = Signalling()
    w = LineWriter(out, max_lines=1_000, pause=0.0)
    try:
        w.put("one")
        assert out.wrote.wait(timeout=30)  # generous: only a hung thread fails this
        assert out.getvalue() == "one\n"
    finally:
        w.close()


def _child(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_every_line_is_written_at_exit() -> None:
    done = _child(
        """
        import logging, sys
        from relay.ops.logs import setup_logging
        setup_logging("INFO", "text", [], stream=sys.stdout, threaded=True)
        log = logging.getLogger("relay.test")
        for i in range(20_000):
            log.info("line %d", i)
        """
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 20_000
    assert lines[-1].endswith("relay.test line 19999")


def test_a_kill_loses_only_the_waiting_lines() -> None:
    done = _child(
        """
        import os, signal, sys
        from relay.ops.logwriter import LineWriter
        w = LineWriter(sys.stdout, max_lines=100, pause=3600.0)
        for i in range(250):
            w.put(f"line {i}")
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    assert done.returncode == -signal.SIGKILL
    # The queue filled twice and was written; the 50 lines waiting when the kill came are
    # lost, which is at most max_lines, as the module says.
    assert done.stdout.splitlines() == [f"line {i}" for i in range(200)]
