"""One delivery attempt: shape the body, sign, POST, read a capped response, describe what
happened.

The sender never raises for anything the receiver or the network does; every outcome becomes an
:class:`AttemptOutcome` that the dispatcher turns into a retry decision with the pure policy in
:mod:`relay.core.retry`. A body that cannot be rendered (a template failing on this record) is
``permanent``: no HTTP request is made and the dispatcher dead-letters the delivery.
"""

from __future__ import annotations

import errno
import ssl
import time
from dataclasses import dataclass
from zoneinfo import ZoneInfo

from relay import USER_AGENT
from relay.config.schema import SubscriberSettings
from relay.core.errors import LocalResourceError, RenderError
from relay.core.keys import signature_headers
from relay.core.models import Attempt, Delivery
from relay.core.retry import parse_retry_after
from relay.core.signing import webhook_id
from relay.delivery.shaping import Shaper
from relay.http1.client import BadResponse, Disconnected, Http1Client

_UTC = ZoneInfo("UTC")

# errnos that describe this process or host running short, not the receiver failing.
LOCAL_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


# Not frozen, for speed: see relay.core.models.Delivery.
@dataclass(slots=True)
class AttemptOutcome:
    """What one attempt did. ``status`` is None when no HTTP status arrived; ``permanent``
    means no attempt can succeed (the body cannot be rendered): dead-letter, do not retry."""

    attempt: Attempt
    status: int | None
    retry_after: float | None
    webhook_id: str
    permanent: bool = False


class Sender:
    """Delivers to one subscriber; holds its keys, its format and its endpoint (URL, fixed
    headers, kept-alive connections)."""

    def __init__(
        self,
        client: Http1Client,
        subscriber: SubscriberSettings,
        response_cap: int,
        *,
        tz: ZoneInfo = _UTC,
        region: str | None = None,
    ) -> None:
        self._name = subscriber.name
        self._keys = subscriber.signing_keys
        self._shaper = Shaper(subscriber.format_spec, tz, region)
        self._ids = subscriber.format_spec.name == "template"  # only a template shows the id
        self._timeout = subscriber.timeout
        self._cap = response_cap
        self._endpoint = client.endpoint(
            subscriber.url,
            {**subscriber.headers, "Content-Type": "application/json", "User-Agent": USER_AGENT},
        )

    @property
    def shapes(self) -> bool:
        """True when bodies are rendered (any format but ``envelope``, which sends the stored
        bytes as they are)."""
        return not self._shaper.passthrough

    def shape(self, delivery: Delivery) -> bytes | RenderError:
        """The body :meth:`send` would send for ``delivery``, or why it cannot be rendered.

        Deterministic from the stored body, so the dispatcher renders a claimed batch ahead in
        one loop (the same work, but with the interpreter's caches warm, it costs a fraction of
        what it does spread between network callbacks) and passes each body to :meth:`send`."""
        msg_id = webhook_id(delivery.account, delivery.rid, self._name) if self._ids else ""
        return self._render(delivery, msg_id)

    def _render(self, delivery: Delivery, msg_id: str) -> bytes | RenderError:
        try:
            return self._shaper.body(delivery.body, delivery.account, msg_id)
        except RenderError as exc:
            return exc

    async def send(
        self,
        delivery: Delivery,
        *,
        msg_id: str | None = None,
        shaped: bytes | RenderError | None = None,
    ) -> AttemptOutcome:
        """POST the delivery once. Never raises for what the receiver or the network does;
        raises :class:`LocalResourceError` when this process could not even try (EMFILE…),
        and CancelledError. ``msg_id`` replaces the delivery's stable ``webhook-id``
        (``relay send-test``); ``shaped`` is what :meth:`shape` gave for this delivery, if it
        was rendered ahead (it is rendered here otherwise)."""
        if msg_id is None:
            msg_id = webhook_id(delivery.account, delivery.rid, self._name)
            body = shaped if shaped is not None else self._render(delivery, msg_id)
        else:
            body = self._render(delivery, msg_id)  # a template may show this other id
        now = time.time()
        if isinstance(body, RenderError):
            attempt = Attempt(now, None, f"cannot render the body: {body}", 0.0, "")
            return AttemptOutcome(attempt, None, None, msg_id, permanent=True)
        # A fresh timestamp for every attempt: receivers reject stale ones.
        headers = signature_headers(self._keys, msg_id, now, body)
        started = time.perf_counter()
        status: int | None = None
        error: str | None = None
        excerpt = ""
        retry_after: float | None = None
        try:
            resp = await self._endpoint.post(headers, body, time_limit=self._timeout, cap=self._cap)
        except TimeoutError:
            error = f"timeout after {self._timeout:g}s"
        except ssl.SSLCertVerificationError as exc:
            error = f"TLS certificate did not verify: {exc.verify_message or exc}"
        except ssl.SSLError as exc:
            error = f"TLS error: {exc.reason or exc}"
        except (Disconnected, BadResponse) as exc:
            error = str(exc)
        except OSError as exc:
            if exc.errno in LOCAL_ERRNOS:
                raise LocalResourceError(f"cannot open a connection: {exc.strerror}") from exc
            error = f"cannot connect: {exc.strerror or exc}"
        else:
            status = resp.status
            error = resp.error
            excerpt = resp.body.decode("utf-8", "replace")
            if status in (429, 503):
                retry_after = parse_retry_after(resp.headers.get("retry-after"), now)
            if 300 <= status < 400 and error is None:
                error = f"redirect to {resp.headers.get('location', '?')!r} not followed"
        latency_ms = (time.perf_counter() - started) * 1000.0
        if status is not None and error is None and not 200 <= status < 300:
            error = f"HTTP {status}"
        attempt = Attempt(
            at=now, status=status, error=error, latency_ms=latency_ms, response=excerpt
        )
        return AttemptOutcome(attempt, status, retry_after, msg_id)
