"""``relay demo``: the whole relay between a simulated WebFones and a local receiver.

No configuration and no API key needed: a simulated WebFones API produces realistic calls
(same-second bursts, long calls written late), the real relay polls it with a temporary SQLite
state, and a local receiver verifies every signature and prints each call as one line.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
import secrets
import sys
import tempfile
import time
from collections.abc import Mapping
from typing import Any

import orjson

from relay.config.schema import Settings
from relay.core.signing import decode_secret, verify
from relay.ops.logs import setup_logging
from relay.runtime.runner import install_signal_handlers, loop_factory, run_relay
from relay.sim.receiver import Receiver
from relay.sim.simulator import SimulatedWebFones

MAX_DEMO = 24 * 3600.0  # seconds a demo without --duration keeps producing calls
DEMO_KEY = "demo-" + "k" * 27  # the simulated API's key; not a real WebFones key


def _describe(doc: Mapping[str, Any], subscriber: str) -> str:
    """One readable line for one delivered call."""
    rec = doc.get("data", {})
    direction = str(rec.get("direction", "?"))
    outside = rec.get("cidnumber_outside") or "?"
    name = rec.get("cidname_outside") or ""
    inside = rec.get("cidext_inside") or "?"
    duration = rec.get("duration")
    length = f"{int(duration) // 60}m{int(duration) % 60:02d}s" if isinstance(duration, int) else ""
    who = f"{name} {outside}".strip()
    route = f"x{inside} → {who}" if direction == "OUTGOING" else f"{who} → x{inside}"
    return (
        f"{time.strftime('%H:%M:%S')}  {subscriber:<6} rid={rec.get('rid')!s:<7} "
        f"{rec.get('call_timestamp')}  {direction:<8} {route}  "
        f"{rec.get('disposition', '?')} {length}"
    )


class DemoPrinter:
    """Verifies each webhook with the subscriber's key and prints the call; counts what it saw."""

    def __init__(self, name: str, key: bytes) -> None:
        self.name = name
        self.key = key
        self.seen: set[str] = set()
        self.duplicates = 0

    def __call__(self, headers: Mapping[str, str], body: bytes) -> None:
        verify(self.key, headers, body, time.time())  # raises -> the receiver answers 401
        msg_id = headers.get("webhook-id", "")
        if msg_id in self.seen:
            self.duplicates += 1  # at-least-once: a receiver de-duplicates by webhook-id
            return
        self.seen.add(msg_id)
        print(_describe(orjson.loads(body), self.name), flush=True)


def demo_settings(
    state: str, upstream_url: str, receivers: Mapping[str, tuple[str, str]]
) -> Settings:
    """The settings the demo runs with: fast polling, a short look-back, temporary state."""
    doc: dict[str, Any] = {
        "state": state,
        "upstream": {
            "base_url": upstream_url,
            "poll_interval": "1s",
            "recent_window": "5m",
            "lookback": "2h",
            "sweep_interval": "30s",
            # Deliver everything the simulator makes, including calls it backdates.
            "start_from": "2000-01-01 00:00:00",
            "accounts": [{"name": "demo", "api_key": DEMO_KEY}],
        },
        "subscribers": [
            {
                "name": name,
                "url": url,
                "secret": secret,
                "timeout": "5s",
                "retry": ["1s", "2s", "5s"],
            }
            for name, (url, secret) in receivers.items()
        ],
        "delivery": {"grace_period": "3s"},
    }
    return Settings.model_validate(doc)


async def _finish_after(
    duration: float | None,
    producer: asyncio.Future[int],
    sim: SimulatedWebFones,
    printers: list[DemoPrinter],
    stop: asyncio.Event,
) -> None:
    """With ``--duration``: stop producing, let the relay deliver what is left, then stop."""
    if duration is None:
        return
    await asyncio.wait([producer], timeout=duration)
    producer.cancel()
    want = len(sim.records(DEMO_KEY))
    deadline = asyncio.get_running_loop().time() + 10.0
    while any(len(p.seen) < want for p in printers):
        if asyncio.get_running_loop().time() > deadline:
            break
        await asyncio.sleep(0.1)
    stop.set()


def _new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


async def demo(duration: float | None, rate: float, seed: int | None) -> int:
    stop = asyncio.Event()
    install_signal_handlers(stop)
    with tempfile.TemporaryDirectory(prefix="relay-demo-") as tmp:
        crm_secret, slack_secret = _new_secret(), _new_secret()
        crm = DemoPrinter("crm", decode_secret(crm_secret))
        slack = DemoPrinter("slack", decode_secret(slack_secret))
        sim = SimulatedWebFones(
            {DEMO_KEY: "demo"}, seed=seed if seed is not None else int(time.time())
        )
        async with sim, Receiver(verify=crm) as crm_rx, Receiver(verify=slack) as slack_rx:
            upstream_url = await sim.start()
            crm_url = await crm_rx.start()
            slack_url = await slack_rx.start()
            settings = demo_settings(
                os.path.join(tmp, "state.db"),
                upstream_url,
                {
                    "crm": (crm_url + "/hooks/crm", crm_secret),
                    "slack": (slack_url + "/hooks/slack", slack_secret),
                },
            )
            print(
                f"relay demo: simulated WebFones at {upstream_url}, receivers at {crm_url} "
                f"and {slack_url}, state in {tmp}\n"
                "Each line is a call delivered and signature-checked. Ctrl-C to stop.\n",
                flush=True,
            )
            producer = asyncio.ensure_future(
                # Without --duration the demo runs until Ctrl-C; the producer is still bounded.
                sim.produce(DEMO_KEY, rate=rate, duration=duration or MAX_DEMO, max_late=300)
            )
            director = asyncio.ensure_future(
                _finish_after(duration, producer, sim, [crm, slack], stop)
            )
            try:
                await run_relay(settings, stop)
            finally:
                for task in (director, producer):
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
            produced = len(sim.records(DEMO_KEY))
            print(
                f"\n{produced} calls produced; crm received {len(crm.seen)}, slack received "
                f"{len(slack.seen)} (duplicates ignored by webhook-id: "
                f"{crm.duplicates + slack.duplicates}); rejected signatures: "
                f"{sum(1 for r in crm_rx.requests + slack_rx.requests if r.status_sent == 401)}",
                flush=True,
            )
    return 0


def run_demo(duration: float | None, rate: float, verbose: bool, seed: int | None) -> int:
    """Entry point for ``relay demo``."""
    setup_logging("INFO" if verbose else "WARNING", "text")
    logging.getLogger("relay.sim.simulator").setLevel(logging.WARNING)
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        try:
            return runner.run(demo(duration, rate, seed))
        except KeyboardInterrupt:
            print("stopped", file=sys.stderr)
            return 0
