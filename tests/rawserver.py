"""A bare asyncio HTTP server scripted per connection, for receivers that misbehave byte by byte.

``RawServer(script0, script1, …)`` serves its N-th connection with ``scripts[N]`` (``serve_ok``
past the end of them). Scripts read whole requests from a :class:`Peer` and write exact bytes;
the server notifies waiters on every change, so tests wait on conditions, never on time.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Self

WAIT = 60.0  # seconds: the longest a test waits for a server to see something (bounded work)


@dataclass(eq=False)
class Peer:
    """One connection a RawServer accepted."""

    index: int
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    changed: Callable[[], Awaitable[None]]
    requests: list[bytes] = field(default_factory=list)  # each whole: head and body
    hung_up: bool = False  # the client closed its end
    done: bool = False  # the connection is closed

    async def read_request(self) -> bytes | None:
        """The next whole request, or None once the client has closed the connection."""
        try:
            head = await self.reader.readuntil(b"\r\n\r\n")
            request = head + await self.reader.readexactly(_content_length(head))
        except asyncio.IncompleteReadError as exc:
            assert exc.partial == b"", f"a partial request: {exc.partial!r}"
            return await self._hang_up()
        except ConnectionResetError:
            return await self._hang_up()
        self.requests.append(request)
        await self.changed()
        return request

    async def _hang_up(self) -> None:
        self.hung_up = True
        await self.changed()


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


Script = Callable[[Peer], Awaitable[None]]


async def serve_ok(peer: Peer) -> None:
    """Answer every request 200 ``conn<N>`` (N counts connections from 0), keeping alive."""
    while await peer.read_request() is not None:
        body = b"conn%d" % peer.index
        peer.writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))


async def until_eof(peer: Peer) -> None:
    """Answer nothing more; end when the client closes."""
    while await peer.read_request() is not None:
        pass


async def close(peer: Peer) -> None:
    """Close the connection now."""
    peer.writer.close()


def answer(data: bytes, then: Script = serve_ok) -> Script:
    """Read one request, write ``data`` (nothing when empty), carry on with ``then``."""

    async def script(peer: Peer) -> None:
        assert await peer.read_request() is not None, "the client sent no request"
        peer.writer.write(data)
        await then(peer)

    return script


class RawServer:
    """Serves the N-th connection with ``scripts[N]`` (``serve_ok`` past the end of them)."""

    def __init__(self, *scripts: Script) -> None:
        self.peers: list[Peer] = []
        self.url = ""
        self._scripts = scripts
        self._changed = asyncio.Condition()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._errors: list[BaseException] = []
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()
        if self._errors and exc_type is None:
            raise self._errors[0]

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = WAIT) -> None:
        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(predicate)

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # The script runs in a task of its own, cancelled at exit: asyncio's stream server
        # reports a cancelled connection callback as an error.
        peer = Peer(len(self.peers), reader, writer, self._notify)
        self.peers.append(peer)
        task = asyncio.create_task(self._run(peer))
        self._tasks.add(task)
        await asyncio.wait([task])

    async def _run(self, peer: Peer) -> None:
        script = self._scripts[peer.index] if peer.index < len(self._scripts) else serve_ok
        try:
            await self._notify()
            await script(peer)
            if not peer.writer.is_closing():
                await until_eof(peer)
        except Exception as exc:  # surfaced by __aexit__: a script's assertion fails the test
            self._errors.append(exc)
        finally:
            peer.writer.close()
            with contextlib.suppress(OSError):
                await peer.writer.wait_closed()
            peer.done = True
            await self._notify()
