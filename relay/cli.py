"""The ``relay`` command: parse arguments, load settings, and hand over to the runner.

Exit codes: 0 success, 1 runtime failure (state unusable…), 2 bad configuration or usage.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import sys
import time
from collections.abc import Sequence
from typing import Any

import orjson

from relay import __version__
from relay.config.schema import Settings, load_settings
from relay.core.errors import ConfigError, RelayError, StoreError
from relay.core.status import RelayStatus
from relay.ops.logs import setup_logging

log = logging.getLogger("relay")

EXIT_OK, EXIT_FAILURE, EXIT_CONFIG = 0, 1, 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="relay",
        description="Relay WebFones call records to webhooks: signed, durable, at-least-once.",
    )
    parser.add_argument("--version", action="version", version=f"webfones-relay {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def with_config(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--config", "-c", required=True, metavar="FILE", help="YAML configuration file"
        )

    def with_logging(p: argparse.ArgumentParser) -> None:
        p.add_argument("--log-format", choices=["text", "json"], help="overrides log.format")
        p.add_argument(
            "--log-level",
            choices=["DEBUG", "INFO", "WARNING", "ERROR"],
            type=str.upper,
            help="overrides log.level",
        )

    run = sub.add_parser("run", help="poll WebFones and deliver webhooks until stopped")
    with_config(run)
    with_logging(run)

    check = sub.add_parser("check-config", help="validate a configuration file and exit")
    with_config(check)

    demo = sub.add_parser(
        "demo", help="run against a built-in simulated WebFones and a local receiver"
    )
    demo.add_argument("--duration", type=float, default=None, help="stop after N seconds")
    demo.add_argument("--rate", type=float, default=1.0, help="simulated calls per second")
    demo.add_argument("--verbose", action="store_true", help="show the relay's own log lines")
    demo.add_argument("--seed", type=int, default=None, help="make the simulated calls repeatable")

    status = sub.add_parser("status", help="show cursors, queues and dead letters (relay stopped)")
    with_config(status)

    dead = sub.add_parser("dead-letters", help="list or replay dead-lettered deliveries")
    with_config(dead)
    dead.add_argument("--subscriber", help="only this subscriber")
    dead.add_argument("--limit", type=int, default=50)
    dead.add_argument("--replay", action="store_true", help="put them back in their queues")

    enable = sub.add_parser("enable-subscriber", help="re-enable a subscriber disabled by 410")
    with_config(enable)
    enable.add_argument("name")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "demo":
        from relay.sim.demo import run_demo

        return run_demo(args.duration, args.rate, args.verbose, args.seed)
    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return EXIT_CONFIG
    if args.command == "check-config":
        return _check_config(settings)
    if args.command == "run":
        return _run(settings, args)
    return _offline(settings, args)


def _check_config(settings: Settings) -> int:
    subs = [s for s in settings.subscribers if s.enabled]
    print(
        f"config OK: {len(settings.upstream.accounts)} account(s), {len(subs)} subscriber(s), "
        f"state {settings.state}"
    )
    return EXIT_OK


def _run(settings: Settings, args: argparse.Namespace) -> int:
    from relay.runtime.runner import install_signal_handlers, loop_factory, run_relay

    setup_logging(
        args.log_level or settings.log.level,
        args.log_format or settings.log.format,
        settings.secret_values(),
    )

    async def go() -> None:
        stop = asyncio.Event()
        install_signal_handlers(stop)
        await run_relay(settings, stop)

    try:
        with asyncio.Runner(loop_factory=loop_factory()) as runner:
            runner.run(go())
    except StoreError as exc:
        log.error("cannot use state %s: %s", settings.state, exc)
        return EXIT_FAILURE
    except RelayError as exc:
        log.error("%s", exc)
        return EXIT_FAILURE
    return EXIT_OK


def _offline(settings: Settings, args: argparse.Namespace) -> int:
    """status / dead-letters / enable-subscriber: work on the state while the relay is stopped
    (while it runs, use the admin API: the state has one owner at a time)."""
    from relay.runtime.stores import open_store

    async def go() -> Any:
        store = open_store(settings.state)
        await store.open()
        try:
            if args.command == "status":
                return RelayStatus(store=await store.stats()).to_dict()
            if args.command == "enable-subscriber":
                await store.set_subscriber_disabled(args.name, None, time.time())
                return {"enabled": args.name}
            if args.replay:
                return {"replayed": await store.replay(args.subscriber, None, time.time())}
            letters = await store.dead_letters(args.subscriber, args.limit)
            return [dataclasses.asdict(letter) for letter in letters]
        finally:
            await store.close()

    try:
        result = asyncio.run(go())
    except StoreError as exc:
        print(f"state {settings.state}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    sys.stdout.write(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode() + "\n")
    return EXIT_OK
