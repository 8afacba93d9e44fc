"""One delivery attempt: sign, POST, read a capped response, describe what happened.

The sender never raises for anything the receiver or the network does; every outcome becomes an
:class:`AttemptOutcome` that the dispatcher turns into a retry decision with the pure policy in
:mod:`relay.retry`.
"""

from __future__ import annotations

import math
import ssl
import time
from dataclasses import dataclass

import aiohttp

from relay.config import SubscriberSettings
from relay.models import Attempt, Delivery
from relay.retry import parse_retry_after
from relay.signing import decode_secret, keyed, sign_timestamped, webhook_id
from relay.upstream import USER_AGENT


@dataclass(frozen=True, slots=True)
class AttemptOutcome:
    """What one POST did. ``status`` is None when no HTTP status arrived."""

    attempt: Attempt
    status: int | None
    retry_after: float | None
    webhook_id: str


class Sender:
    """Delivers to one subscriber; holds its decoded key and fixed headers."""

    def __init__(
        self, session: aiohttp.ClientSession, subscriber: SubscriberSettings, response_cap: int
    ) -> None:
        self._session = session
        self._url = subscriber.url
        self._name = subscriber.name
        self._mac = keyed(decode_secret(subscriber.secret.get_secret_value()))
        self._timeout = aiohttp.ClientTimeout(total=subscriber.timeout)
        self._cap = response_cap
        self._base_headers = {
            **subscriber.headers,
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
        }

    async def send(self, delivery: Delivery) -> AttemptOutcome:
        """POST the delivery once. Never raises except CancelledError."""
        msg_id = webhook_id(delivery.account, delivery.rid, self._name)
        now = time.time()
        timestamp = math.floor(now)  # fresh for every attempt: receivers reject stale ones
        headers = self._base_headers.copy()
        headers["webhook-id"] = msg_id
        headers["webhook-timestamp"] = str(timestamp)
        headers["webhook-signature"] = sign_timestamped(self._mac, msg_id, timestamp, delivery.body)
        started = time.perf_counter()
        status: int | None = None
        error: str | None = None
        excerpt = ""
        retry_after: float | None = None
        try:
            async with self._session.post(
                self._url,
                data=delivery.body,
                headers=headers,
                timeout=self._timeout,
                allow_redirects=False,
            ) as resp:
                status = resp.status
                excerpt = await self._read_capped(resp)
                if status in (429, 503):
                    retry_after = parse_retry_after(resp.headers.get("Retry-After"), now)
                if 300 <= status < 400:
                    error = f"redirect to {resp.headers.get('Location', '?')!r} not followed"
        except TimeoutError:
            error = f"timeout after {self._timeout.total:g}s"
        except aiohttp.ClientConnectorCertificateError as exc:
            error = f"TLS certificate did not verify: {exc.certificate_error}"
        except (aiohttp.ClientSSLError, ssl.SSLError) as exc:
            error = f"TLS error: {exc}"
        except aiohttp.ClientConnectorError as exc:
            error = f"cannot connect: {exc.os_error.strerror or exc.os_error}"
        except aiohttp.ServerDisconnectedError:
            error = "connection closed without a response"
        except aiohttp.ClientError as exc:
            error = f"{type(exc).__name__}: {exc}"
        except OSError as exc:
            error = f"network error: {exc.strerror or exc}"
        latency_ms = (time.perf_counter() - started) * 1000.0
        if status is not None and error is None and not 200 <= status < 300:
            error = f"HTTP {status}"
        attempt = Attempt(
            at=now, status=status, error=error, latency_ms=latency_ms, response=excerpt
        )
        return AttemptOutcome(attempt, status, retry_after, msg_id)

    async def _read_capped(self, resp: aiohttp.ClientResponse) -> str:
        """Read at most ``response_cap`` bytes; a longer (or endless) body is cut off."""
        length = resp.content_length
        if length is not None and length <= self._cap:
            # The usual small answer of known length: one read, and the connection is reused.
            return (await resp.read()).decode("utf-8", "replace")
        data = b""
        while len(data) < self._cap:
            chunk = await resp.content.read(self._cap - len(data))
            if not chunk:
                break
            data += chunk
        if not resp.content.at_eof():
            # Do not drain the rest: close the connection instead of reusing it.
            resp.close()
        return data.decode("utf-8", "replace")
