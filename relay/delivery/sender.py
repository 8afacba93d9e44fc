"""One delivery attempt: sign, POST, read a capped response, describe what happened.

The sender never raises for anything the receiver or the network does; every outcome becomes an
:class:`AttemptOutcome` that the dispatcher turns into a retry decision with the pure policy in
:mod:`relay.core.retry`.
"""

from __future__ import annotations

import ssl
import time
from dataclasses import dataclass

from relay import USER_AGENT
from relay.config.schema import SubscriberSettings
from relay.core.models import Attempt, Delivery
from relay.core.retry import parse_retry_after
from relay.core.signing import decode_secret, signature_headers, webhook_id
from relay.delivery.http1 import BadResponse, Disconnected, Http1Client


@dataclass(frozen=True, slots=True)
class AttemptOutcome:
    """What one POST did. ``status`` is None when no HTTP status arrived."""

    attempt: Attempt
    status: int | None
    retry_after: float | None
    webhook_id: str


class Sender:
    """Delivers to one subscriber; holds its decoded key and its endpoint (URL, fixed headers,
    kept-alive connections)."""

    def __init__(
        self, client: Http1Client, subscriber: SubscriberSettings, response_cap: int
    ) -> None:
        self._name = subscriber.name
        self._key = decode_secret(subscriber.secret.get_secret_value())
        self._timeout = subscriber.timeout
        self._cap = response_cap
        self._endpoint = client.endpoint(
            subscriber.url,
            {**subscriber.headers, "Content-Type": "application/json", "User-Agent": USER_AGENT},
        )

    async def send(self, delivery: Delivery) -> AttemptOutcome:
        """POST the delivery once. Never raises except CancelledError."""
        msg_id = webhook_id(delivery.account, delivery.rid, self._name)
        now = time.time()
        # A fresh timestamp for every attempt: receivers reject stale ones.
        headers = signature_headers(self._key, msg_id, now, delivery.body)
        started = time.perf_counter()
        status: int | None = None
        error: str | None = None
        excerpt = ""
        retry_after: float | None = None
        try:
            resp = await self._endpoint.post(
                headers, delivery.body, time_limit=self._timeout, cap=self._cap
            )
        except TimeoutError:
            error = f"timeout after {self._timeout:g}s"
        except ssl.SSLCertVerificationError as exc:
            error = f"TLS certificate did not verify: {exc.verify_message or exc}"
        except ssl.SSLError as exc:
            error = f"TLS error: {exc.reason or exc}"
        except (Disconnected, BadResponse) as exc:
            error = str(exc)
        except OSError as exc:
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
