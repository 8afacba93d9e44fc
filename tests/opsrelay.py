"""`relay run` as a real process with its admin API on, for the operations tests: write a
config, start it, wait until it answers, call its endpoints."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from tests.helpers import KEY_A, KEY_B, new_secret, start_relay_process, wait_until_async

TOKEN = "admin-token-0123456789abcdef"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class OpsRelay:
    """A relay process and what a test needs to talk to it."""

    config: Path
    state: Path
    log: Path
    env: dict[str, str]
    base: str
    doc: dict[str, Any]
    secrets: dict[str, str] = field(default_factory=dict)
    proc: asyncio.subprocess.Process | None = None
    extra_args: tuple[str, ...] = ()

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {TOKEN}"}

    def write(self) -> None:
        self.config.write_text(yaml.safe_dump(self.doc))

    async def start(self) -> OpsRelay:
        self.write()
        self.proc = await start_relay_process(self.config, self.env, self.log, *self.extra_args)

        async def up() -> bool:
            assert self.proc is not None
            if self.proc.returncode is not None:
                raise AssertionError(f"relay exited {self.proc.returncode}: {self.log.read_text()}")
            with contextlib.suppress(aiohttp.ClientError):
                async with aiohttp.ClientSession() as http, http.get(self.base + "/readyz") as r:
                    return r.status == 200
            return False

        await wait_until_async(up, timeout=60, interval=0.1)
        return self

    async def stop(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(self.proc.wait(), 60) == 0

    async def call(
        self, method: str, path: str, body: Any = None, *, raw: bool = False
    ) -> tuple[int, Any]:
        async with (
            aiohttp.ClientSession() as http,
            http.request(method, self.base + path, json=body, headers=self.auth) as resp,
        ):
            if raw:
                return resp.status, await resp.text()
            return resp.status, await resp.json()


def subscriber(name: str, url: str, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "url": url,
        "secret": "${SECRET_" + name.upper() + "}",
        "timeout": "2s",
        "retry": ["50ms", "100ms"],
        **extra,
    }


def ops_relay(
    tmp_path: Path, upstream: str, subs: list[dict[str, Any]], *, two_accounts: bool = False
) -> OpsRelay:
    """An unstarted relay polling ``upstream`` for account alpha (and bravo)."""
    port = free_port()
    accounts = [{"name": "alpha", "api_key": "${KEY_A}"}]
    if two_accounts:
        accounts.append({"name": "bravo", "api_key": "${KEY_B}"})
    doc = {
        "state": str(tmp_path / "state.db"),
        "upstream": {
            "base_url": upstream,
            "poll_interval": "100ms",
            "recent_window": "1m",
            "sweep_interval": "1s",
            "start_from": "2000-01-01 00:00:00",
            "rate_limit": {"requests": 100000, "per": "10s"},
            "accounts": accounts,
        },
        "subscribers": subs,
        "delivery": {"grace_period": "2s"},
        "admin": {"listen": f"127.0.0.1:{port}", "token": "${ADMIN_TOKEN}"},
    }
    secrets = {"SECRET_" + s["name"].upper(): new_secret() for s in subs}
    for extra in ("SECRET_LATE", "SECRET_EXTRA"):
        secrets.setdefault(extra, new_secret())
    env = {**os.environ, "KEY_A": KEY_A, "KEY_B": KEY_B, "ADMIN_TOKEN": TOKEN, **secrets}
    return OpsRelay(
        config=tmp_path / "relay.yaml",
        state=tmp_path / "state.db",
        log=tmp_path / "relay.log",
        env=env,
        base=f"http://127.0.0.1:{port}",
        doc=doc,
        secrets=secrets,
    )
