"""``relay demo``: the whole relay between a simulated WebFones and a local receiver.

No configuration and no API key needed: a simulated WebFones API produces realistic calls
(same-second bursts, long calls written late), the real relay polls it with a temporary SQLite
state, and three subscribers show what a subscriber can be: ``crm`` takes the signed envelope
(its receiver verifies every signature), ``slack`` takes Slack messages (``format: slack``) on a
receiver that enforces Slack's contract, and ``missed`` takes only missed calls (a ``filter``).
Each call a receiver gets is printed as one line.
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
from collections.abc import Callable, Mapping
from typing import Any
from zoneinfo import ZoneInfo

import orjson

from relay.config.schema import Settings
from relay.core.callview import call_view
from relay.core.signing import decode_secret, verify
from relay.ops.logs import setup_logging
from relay.runtime.runner import install_signal_handlers, loop_factory, run_relay
from relay.sim.chat_receivers import SlackLike
from relay.sim.receiver import Receiver
from relay.sim.simulator import SimulatedWebFones

MAX_DEMO = 24 * 3600.0  # seconds a demo without --duration keeps producing calls
DEMO_KEY = "demo-" + "k" * 27  # the simulated API's key; not a real WebFones key
MISSED_FILTER = {"call.missed": True}  # inbound and not answered (relay.core.callview)


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


def demo_settings(state: str, upstream_url: str, subscribers: list[dict[str, Any]]) -> Settings:
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
            {"timeout": "5s", "retry": ["1s", "2s", "5s", "10s", "30s"], **sub}
            for sub in subscribers
        ],
        "delivery": {"grace_period": "3s"},
    }
    return Settings.model_validate(doc)


class SlackPrinter:
    """Prints each message the Slack-like receiver accepted (its ``text``, as Slack would show
    it in a notification); counts distinct webhook-ids."""

    def __init__(self, receiver: SlackLike) -> None:
        self.receiver = receiver
        self.seen: set[str] = set()
        self.duplicates = 0

    async def run(self) -> None:
        printed = 0
        while True:
            await self.receiver.wait_accepted(printed + 1, timeout=MAX_DEMO)
            for accepted in self.receiver.accepted[printed:]:
                headers = {k.lower(): v for k, v in accepted.headers.items()}
                msg_id = headers.get("webhook-id", "")
                if msg_id in self.seen:
                    self.duplicates += 1
                    continue
                self.seen.add(msg_id)
                text = str(accepted.body.get("text", "")).replace("\n", " ")
                print(f"{time.strftime('%H:%M:%S')}  slack  {text}", flush=True)
            printed = len(self.receiver.accepted)


def _missed(records: list[dict[str, Any]]) -> int:
    zone = ZoneInfo("UTC")
    return sum(1 for r in records if call_view(r, "demo", zone, "US").missed)


async def _finish_after(
    duration: float | None,
    producer: asyncio.Future[int],
    sim: SimulatedWebFones,
    counts: list[tuple[Callable[[], int], Callable[[list[dict[str, Any]]], int]]],
    stop: asyncio.Event,
) -> None:
    """With ``--duration``: stop producing, let the relay deliver what is left, then stop.
    ``counts`` pairs what a receiver saw with what it should see of the produced records."""
    if duration is None:
        return
    await asyncio.wait([producer], timeout=duration)
    producer.cancel()
    records = sim.records(DEMO_KEY)
    deadline = asyncio.get_running_loop().time() + 20.0
    while any(seen() < want(records) for seen, want in counts):
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
        crm_secret, missed_secret = _new_secret(), _new_secret()
        crm = DemoPrinter("crm", decode_secret(crm_secret))
        missed = DemoPrinter("missed", decode_secret(missed_secret))
        sim = SimulatedWebFones(
            {DEMO_KEY: "demo"}, seed=seed if seed is not None else int(time.time())
        )
        # Slack takes about one message a second with short bursts; the simulator's bursts fit.
        slack_rx = SlackLike(requests=1, per=1.0, burst=30)
        slack = SlackPrinter(slack_rx)
        async with sim, Receiver(verify=crm) as crm_rx, Receiver(verify=missed) as missed_rx:
            upstream_url = await sim.start()
            crm_url = await crm_rx.start()
            missed_url = await missed_rx.start()
            await slack_rx.start()
            settings = demo_settings(
                os.path.join(tmp, "state.db"),
                upstream_url,
                [
                    {"name": "crm", "url": crm_url + "/hooks/crm", "secret": crm_secret},
                    {
                        "name": "slack",
                        "url": slack_rx.url("calls"),
                        "secret": _new_secret(),
                        "format": "slack",
                        "max_in_flight": 1,
                    },
                    {
                        "name": "missed",
                        "url": missed_url + "/hooks/missed",
                        "secret": missed_secret,
                        "filter": MISSED_FILTER,
                    },
                ],
            )
            print(
                f"relay demo: simulated WebFones at {upstream_url}, state in {tmp}\n"
                "  crm    gets every call as the signed envelope (signature checked here)\n"
                "  slack  gets every call as a Slack message (format: slack) on a Slack-like "
                "receiver\n"
                f"  missed gets only missed calls (filter: {MISSED_FILTER})\n"
                "Each line is one call as a receiver got it. Ctrl-C to stop.\n",
                flush=True,
            )
            producer = asyncio.ensure_future(
                # Without --duration the demo runs until Ctrl-C; the producer is still bounded.
                sim.produce(DEMO_KEY, rate=rate, duration=duration or MAX_DEMO, max_late=300)
            )
            counts = [
                (lambda: len(crm.seen), len),
                (lambda: len(slack.seen), len),
                (lambda: len(missed.seen), _missed),
            ]
            director = asyncio.ensure_future(_finish_after(duration, producer, sim, counts, stop))
            slack_task = asyncio.ensure_future(slack.run())
            try:
                await run_relay(settings, stop)
            finally:
                for task in (director, producer, slack_task):
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                        await task
                await slack_rx.stop()
            records = sim.records(DEMO_KEY)
            rejected = sum(1 for r in crm_rx.requests + missed_rx.requests if r.status_sent == 401)
            duplicates = crm.duplicates + missed.duplicates + slack.duplicates
            print(
                f"\n{len(records)} calls produced; crm received {len(crm.seen)}, slack received "
                f"{len(slack.seen)} as Slack messages, missed received {len(missed.seen)} of "
                f"{_missed(records)} missed calls (duplicates ignored by webhook-id: "
                f"{duplicates}); rejected signatures: {rejected}; refused by Slack as "
                f"malformed: {sum(1 for _, status, _ in slack_rx.rejected if status == 400)}",
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
