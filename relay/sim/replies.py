"""How the test receiver answers one request: a status, a redirect, a slow or hanging answer,
a reset, a huge or endless body, or headers trickled a byte at a time."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

_OK_BODY = b'{"ok":true}'
_JSON = {"Content-Type": "application/json"}


@dataclass(frozen=True, slots=True)
class Reply:
    """How the receiver answers one request. Build one with the constructors below."""

    @staticmethod
    def status(
        code: int, headers: Mapping[str, str] | None = None, body: bytes = b""
    ) -> StatusReply:
        """Answer ``code`` (e.g. 500, 410, 429 with ``{"Retry-After": "3"}``)."""
        return StatusReply(code, tuple((headers or {}).items()), body)

    @staticmethod
    def ok() -> StatusReply:
        """The default answer: 200 ``{"ok":true}``."""
        return StatusReply(200, tuple(_JSON.items()), _OK_BODY)

    @staticmethod
    def redirect(location: str, code: int = 307) -> StatusReply:
        """Answer a redirect (301/302/303/307/308) to ``location``."""
        return StatusReply(code, (("Location", location),), b"")

    @staticmethod
    def slow(seconds: float, then: Reply | None = None) -> SlowReply:
        """Wait ``seconds``, then answer ``then`` (default: the receiver's default reply)."""
        return SlowReply(seconds, then)

    @staticmethod
    def hang() -> HangReply:
        """Never answer; the handler ends when the client closes the connection."""
        return HangReply()

    @staticmethod
    def reset() -> ResetReply:
        """Abort the connection without sending any response."""
        return ResetReply()

    @staticmethod
    def huge(nbytes: int) -> HugeReply:
        """Answer 200 with a body of ``nbytes`` bytes, streamed."""
        return HugeReply(nbytes)

    @staticmethod
    def stream_forever(limit: float = 60.0) -> StreamForeverReply:
        """Answer 200 with a chunked body that keeps coming (ends after ``limit`` seconds)."""
        return StreamForeverReply(limit)

    @staticmethod
    def trickle_headers(delay: float, then: StatusReply | None = None) -> TrickleReply:
        """Write the status line and headers of ``then`` (default 200) one byte per ``delay``."""
        return TrickleReply(delay, then or Reply.ok())


@dataclass(frozen=True, slots=True)
class StatusReply(Reply):
    code: int
    headers: tuple[tuple[str, str], ...]
    body: bytes


@dataclass(frozen=True, slots=True)
class SlowReply(Reply):
    seconds: float
    then: Reply | None


@dataclass(frozen=True, slots=True)
class HangReply(Reply):
    pass


@dataclass(frozen=True, slots=True)
class ResetReply(Reply):
    pass


@dataclass(frozen=True, slots=True)
class HugeReply(Reply):
    nbytes: int


@dataclass(frozen=True, slots=True)
class StreamForeverReply(Reply):
    limit: float


@dataclass(frozen=True, slots=True)
class TrickleReply(Reply):
    delay: float
    then: StatusReply


def status_of(reply: Reply, default: Reply) -> int:
    """The status a reply sends (0 when it sends no status line)."""
    match reply:
        case StatusReply(code=code) | TrickleReply(then=StatusReply(code=code)):
            return code
        case SlowReply(then=then):
            return status_of(then or default, default)
        case HugeReply() | StreamForeverReply():
            return 200
    return 0
