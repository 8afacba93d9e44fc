"""One exception hierarchy for everything the relay raises.

Each subclass carries what a caller needs to decide what to do next (is it worth retrying, what
did the far end say), and none of them ever carries a secret in its message.
"""

from __future__ import annotations


class RelayError(Exception):
    """Base of every error the relay raises on purpose."""


class ConfigError(RelayError):
    """The configuration is invalid. ``problems`` holds one line per problem, naming the key."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems))


class UpstreamError(RelayError):
    """A poll of the WebFones API failed.

    ``status`` is the HTTP status when there was one; ``retry_after`` is the server's requested
    pause in seconds, if it sent one. The subclass says what kind of failure it was.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


class UpstreamAuthError(UpstreamError):
    """401/403: the account's API key is missing or wrong. Retried rarely, in case it is fixed."""


class UpstreamRateLimited(UpstreamError):
    """429: the key's request budget is exhausted; pause the whole key."""


class MalformedResponse(UpstreamError):
    """The body is not the documented JSON; the cursor stays. (Records of a large, streamed body
    that came before the fault may be stored already; they are de-duplicated when the window is
    read again.)"""


class StoreError(RelayError):
    """The state store failed or cannot be used."""


class StoreLocked(StoreError):
    """Another relay process already owns this state store."""


class StoreFull(StoreError):
    """The disk holding the state store is full; new work is refused until space returns."""


class FilterSpecError(RelayError, ValueError):
    """A subscriber filter is invalid. ``problems`` holds one line per problem, each naming its
    key (``subscribers[2].filter.disposition: unknown operator $neq``). A ValueError too, so a
    pydantic validator can raise it as is."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems))


class RenderError(RelayError):
    """A body could not be rendered for a subscriber (a template failed, its output is not
    JSON or is over the size cap). Permanent: the same inputs fail the same way, so the
    delivery is dead-lettered with this message, which never quotes a secret."""


class TemplateCompileError(RenderError, ValueError):
    """A subscriber's ``format``/``template`` is invalid: it does not compile or fails on the
    sample record. The message is one line and starts with the configuration key."""


class NonFiniteNumber(RelayError, ValueError):
    """A record holds NaN or an infinity, which JSON cannot carry: it is kept aside, never sent
    (orjson would write ``null``, the standard library the invalid ``Infinity``)."""


class LocalResourceError(RelayError):
    """The relay itself ran out of a resource (file descriptors, buffers) before a request
    left: nobody's fault downstream, so no delivery attempt is spent on it."""
