"""Finished log lines written by a thread of their own, a burst at a time.

At one INFO line per delivery a busy relay logs thousands of lines a second. Written one
``write`` + ``flush`` at a time on the event loop (stderr is line-buffered), the system call, and
the wait whenever the pipe to a slow reader is full, were about a fifth of the loop's time. Here
the caller only formats its line (redaction included, as before) and appends it to a list; this
thread writes what has gathered every :data:`PAUSE` seconds in one call, with the GIL released
while it does.

What may be lost: nothing on a normal exit (``logging.shutdown``, run at exit, closes the
handler, and :meth:`LineWriter.close` writes every line still waiting); on ``SIGKILL`` or a
power loss, the lines of the last pause at most, and never more than :data:`MAX_LINES`: a caller
that finds that many waiting writes them itself, at once, before it returns (back-pressure, not
loss). A warning or worse is written before its call returns (with every line queued before
it): those are rare, and an operator or a test reading the log must find them there at once;
so a kill only ever loses INFO and DEBUG lines (except those marked
:data:`relay.core.fastlog.WRITE_NOW`, written at once as well: an account lease taken or handed
over, which a reader after a crash needs to tell who polled when).
"""

from __future__ import annotations

import logging
import threading
import time
import traceback
from typing import TextIO

MAX_LINES = 10_000  # lines that may wait for the thread; more and the caller writes them
PAUSE = 0.02  # seconds the thread lets a burst gather before it writes it


class LineWriter:
    """Writes lines (without their newline) to ``stream`` on a daemon thread."""

    def __init__(self, stream: TextIO, max_lines: int = MAX_LINES, pause: float = PAUSE) -> None:
        self._stream = stream
        self._max_lines = max_lines
        self._pause = pause
        self._lines: list[str] = []
        self._lock = threading.Lock()  # guards _lines and _closed
        self._write_lock = threading.Lock()  # one writer at a time keeps lines in order
        self._waiting = threading.Event()  # set when _lines went from empty to not
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="relay-log-writer", daemon=True)
        self._thread.start()

    def put(self, line: str, urgent: bool = False) -> None:
        """Queue one line; written by the thread within about a pause (see the module).
        ``urgent`` (a warning or worse): written now, after every line queued before it."""
        with self._lock:
            if not self._closed:
                self._lines.append(line)
                waiting = len(self._lines)
            else:
                waiting = -1
        if waiting == -1:
            self._write([line])  # after close (a late line at exit): written at once
        elif waiting >= self._max_lines or urgent:
            self.flush()
        elif waiting == 1:
            self._waiting.set()

    def flush(self) -> None:
        """Write every line queued so far, now, in the calling thread."""
        with self._write_lock:
            with self._lock:
                lines, self._lines = self._lines, []
                if not self._closed:  # once closed it stays set: the thread must see it
                    self._waiting.clear()
            self._write(lines)

    def close(self) -> None:
        """Stop the thread and write what is left; later lines are written directly."""
        with self._lock:
            self._closed = True
        self._waiting.set()
        if self._thread is not threading.current_thread():
            # Bounded: a stream that blocks for good (a reader that stopped reading) must not
            # keep the process from exiting; the flush below then waits on the same stream.
            self._thread.join(timeout=5.0)
        self.flush()

    def _run(self) -> None:
        # The pause is what makes a burst of lines one system call: without it the thread
        # would wake (and take the GIL from the event loop) for every line.
        while True:
            self._waiting.wait()
            with self._lock:
                if self._closed:
                    return
            time.sleep(self._pause)
            try:
                self.flush()
            except Exception:
                # A broken stream must not end the thread. Nothing to log to (the stream is
                # the log): the traceback goes to stderr and these lines are dropped, as
                # Handler.handleError does for a StreamHandler's.
                if logging.raiseExceptions:
                    traceback.print_exc()

    def _write(self, lines: list[str]) -> None:
        if lines:
            self._stream.write("\n".join(lines) + "\n")
            self._stream.flush()
