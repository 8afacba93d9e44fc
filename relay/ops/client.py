"""A tiny client for a running relay's admin API, used by the CLI: ``relay status``,
``inspect``, ``redeliver``… go through it when ``admin.listen`` is configured and answering,
so they work while the relay owns the state."""

from __future__ import annotations

import urllib.error
import urllib.request
from typing import Any

import orjson

from relay.config.schema import AdminSettings
from relay.core.errors import RelayError


class AdminUnavailable(RelayError):
    """No admin API configured, or nothing answers there (the relay is not running)."""


class AdminRequestFailed(RelayError):
    """The admin API answered with an error; ``status`` and the API's message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"admin API: {message} (HTTP {status})")
        self.status = status


class AdminClient:
    """Blocking JSON calls to ``admin.listen`` with the configured token."""

    def __init__(self, settings: AdminSettings, timeout: float = 30.0) -> None:
        address = settings.address()
        if address is None:
            raise AdminUnavailable("admin.listen is not configured")
        host, port = address
        # A wildcard listen address is reached on loopback.
        host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
        self.base = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
        self._token = settings.token.get_secret_value() if settings.token else None
        self._timeout = timeout

    def get(self, path: str, also_ok: tuple[int, ...] = ()) -> Any:
        """GET ``path``; the decoded JSON answer (also for the statuses in ``also_ok``)."""
        return self._call(urllib.request.Request(self.base + path, method="GET"), also_ok)

    def post(self, path: str, body: Any | None = None) -> Any:
        """POST ``body`` as JSON to ``path``; the decoded JSON answer."""
        request = urllib.request.Request(
            self.base + path, data=orjson.dumps(body or {}), method="POST"
        )
        request.add_header("Content-Type", "application/json")
        return self._call(request)

    def _call(self, request: urllib.request.Request, also_ok: tuple[int, ...] = ()) -> Any:
        if self._token is not None:
            request.add_header("Authorization", f"Bearer {self._token}")
        try:
            with urllib.request.urlopen(request, timeout=self._timeout) as resp:
                return orjson.loads(resp.read())
        except urllib.error.HTTPError as exc:
            body = exc.read()
            if exc.code in also_ok:
                return orjson.loads(body)
            try:
                message = orjson.loads(body).get("error", exc.reason)
            except (orjson.JSONDecodeError, AttributeError):
                message = str(exc.reason)
            raise AdminRequestFailed(exc.code, str(message)) from None
        except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
            raise AdminUnavailable(f"no admin API answering at {self.base}") from exc
