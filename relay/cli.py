"""The ``relay`` command: parse arguments, load settings, and hand over to the runner.

Exit codes: 0 success, 1 runtime failure (state unusable…), 2 bad configuration or usage.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence
from typing import Any

import orjson

from relay import __version__
from relay.config.schema import Settings, load_settings
from relay.core.errors import ConfigError, RelayError, StoreError
from relay.core.journey import RecordQuery
from relay.core.text import mask_credentials
from relay.ops.logs import flush_logs, setup_logging

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
    run.add_argument(
        "--watch", action="store_true", help="reload the config file whenever it changes"
    )

    check = sub.add_parser("check-config", help="validate a configuration file and exit")
    with_config(check)
    check.add_argument(
        "--explain",
        action="store_true",
        help="also show which stored records each subscriber's filter passes (relay stopped)",
    )
    check.add_argument("--last", type=int, default=20, metavar="N", help="records to explain")

    keygen = sub.add_parser("keygen", help="print a new signing secret (whsec_…)")
    keygen.add_argument(
        "--ed25519",
        action="store_true",
        help="an ed25519 pair instead: whsk_ private, whpk_ public",
    )

    send_test = sub.add_parser(
        "send-test", help="send one signed sample call to a subscriber, in its format"
    )
    send_test.add_argument("name", help="the subscriber's name")
    with_config(send_test)

    demo = sub.add_parser(
        "demo", help="run against a built-in simulated WebFones and a local receiver"
    )
    demo.add_argument("--duration", type=float, default=None, help="stop after N seconds")
    demo.add_argument("--rate", type=float, default=1.0, help="simulated calls per second")
    demo.add_argument("--verbose", action="store_true", help="show the relay's own log lines")
    demo.add_argument("--seed", type=int, default=None, help="make the simulated calls repeatable")

    status = sub.add_parser(
        "status", help="show accounts, queues and dead letters (also while the relay runs)"
    )
    with_config(status)

    inspect = sub.add_parser(
        "inspect", help="a call's journey (--account and --rid), or search by --caller / time"
    )
    with_config(inspect)
    inspect.add_argument("--account", help="the WebFones account name from the config")
    inspect.add_argument("--rid", type=int, help="the record id")
    inspect.add_argument("--caller", help="digits of either party's number")
    inspect.add_argument("--since", help="call_timestamp from, e.g. '2025-07-01 10:00:00'")
    inspect.add_argument("--until", help="call_timestamp up to (inclusive)")
    inspect.add_argument("--limit", type=int, default=50)

    redeliver = sub.add_parser(
        "redeliver", help="send one delivery again (same webhook-id, a new attempt)"
    )
    with_config(redeliver)
    redeliver.add_argument("delivery_id", type=int, help="the delivery id (see relay inspect)")

    dead = sub.add_parser("dead-letters", help="list or replay dead-lettered deliveries")
    with_config(dead)
    dead.add_argument("--subscriber", help="only this subscriber")
    dead.add_argument("--limit", type=int, default=50)
    dead.add_argument("--replay", action="store_true", help="put them back in their queues")

    enable = sub.add_parser("enable-subscriber", help="re-enable a subscriber disabled by 410")
    with_config(enable)
    enable.add_argument("name")

    backup = sub.add_parser("backup", help="copy the SQLite state file online (relay may run)")
    with_config(backup)
    backup.add_argument("target", help="where to write the copy (a new file)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "demo":
        from relay.sim.demo import run_demo

        return run_demo(args.duration, args.rate, args.verbose, args.seed)
    if args.command == "keygen":
        return _keygen(args.ed25519)
    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return EXIT_CONFIG
    if args.command == "check-config":
        code = _check_config(settings)
        return _explain(settings, args.last) if args.explain else code
    if args.command == "send-test":
        return _send_test(settings, args.name)
    if args.command == "run":
        return _run(settings, args)
    return _offline(settings, args)


def _check_config(settings: Settings) -> int:
    subs = [s for s in settings.subscribers if s.enabled]
    print(
        f"config OK: {len(settings.upstream.accounts)} account(s), {len(subs)} subscriber(s), "
        f"state {mask_credentials(settings.state)}"
    )
    if settings.upstream.poll_interval == "auto":
        from relay.ingest.cadence import intervals as auto_intervals
        from relay.ingest.cadence import key_accounts

        every = auto_intervals(settings)
        per_key = sorted({len(names) for names in key_accounts(settings).values()})
        shown = sorted({round(v, 2) for v in every.values()})
        span = f"{shown[0]:g}s" if len(shown) == 1 else f"{shown[0]:g}s to {shown[-1]:g}s"
        counts = f"{per_key[0]}" if len(per_key) == 1 else f"{per_key[0]}–{per_key[-1]}"
        print(f"poll_interval auto: each account polled every {span} ({counts} account(s) per key)")
    return EXIT_OK


def _keygen(ed25519: bool) -> int:
    from relay.core.keys import generate_ed25519_pair, generate_hmac_secret

    if not ed25519:
        print(generate_hmac_secret())
        print("put it in subscribers[].secret and give it to the receiver", file=sys.stderr)
        return EXIT_OK
    private, public = generate_ed25519_pair()
    print(private)
    print(public)
    print(
        "line 1 (whsk_) goes in subscribers[].secret; line 2 (whpk_) is the public key for "
        "the receiver, which checks the v1a signature with it",
        file=sys.stderr,
    )
    return EXIT_OK


def _send_test(settings: Settings, name: str) -> int:
    from relay.ops.sendtest import report, send_test

    sub = next((s for s in settings.subscribers if s.name == name), None)
    if sub is None:
        print(f"no subscriber named {name!r} in the configuration", file=sys.stderr)
        return EXIT_CONFIG
    outcome, _ = asyncio.run(send_test(settings, sub))
    for line in report(settings, sub, outcome):
        print(line)
    ok = outcome.status is not None and 200 <= outcome.status < 300
    return EXIT_OK if ok else EXIT_FAILURE


def _explain(settings: Settings, last: int) -> int:
    from relay.ops.explain import explain
    from relay.runtime.stores import open_reader

    async def go() -> list[str]:
        # A read-only snapshot: works beside a running relay, which keeps the state's lock.
        reader = open_reader(settings.state)
        await reader.open()
        try:
            return await explain(settings, reader, max(last, 1))
        finally:
            await reader.close()

    try:
        lines = asyncio.run(go())
    except StoreError as exc:
        print(f"state {settings.state}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    print("\n".join(lines))
    return EXIT_OK


def _run(settings: Settings, args: argparse.Namespace) -> int:
    from relay.runtime.runner import (
        freeze_gc,
        install_signal_handlers,
        loop_factory,
        run_relay,
        tune_interpreter,
    )

    tune_interpreter()

    setup_logging(
        args.log_level or settings.log.level,
        args.log_format or settings.log.format,
        settings.secret_values(),
        threaded=True,
    )

    async def go() -> None:
        stop = asyncio.Event()
        install_signal_handlers(stop)
        await run_relay(settings, stop, freeze_gc, config_path=args.config, watch=args.watch)

    try:
        with asyncio.Runner(loop_factory=loop_factory()) as runner:
            runner.run(go())
    except StoreError as exc:
        state = mask_credentials(settings.state)
        log.error("cannot use state %s: %s", state, mask_credentials(str(exc)))
        return EXIT_FAILURE
    except RelayError as exc:
        log.error("%s", exc)
        return EXIT_FAILURE
    finally:
        # The log writer's thread may still hold the last lines; at exit logging.shutdown
        # would write them, but a caller of main() (a test, an embedding) reads them now.
        flush_logs()
    return EXIT_OK


def _offline(settings: Settings, args: argparse.Namespace) -> int:
    """The operator commands: through the running relay's admin API when it answers, else on
    the state file (reads from a read-only snapshot; see :mod:`relay.runtime.commands`)."""
    from relay.runtime import commands

    def go() -> Any:
        cmd = args.command
        if cmd == "status":
            return commands.status(settings)
        if cmd == "inspect":
            if args.account is not None and args.rid is not None:
                return commands.inspect(settings, args.account, args.rid)
            query = RecordQuery(args.account, args.caller, args.since, args.until, args.limit)
            return commands.search(settings, query)
        if cmd == "redeliver":
            return commands.redeliver(settings, args.delivery_id)
        if cmd == "enable-subscriber":
            return commands.enable(settings, args.name)
        if cmd == "backup":
            return commands.backup(settings, args.target)
        if args.replay:
            return commands.replay(settings, args.subscriber)
        return commands.dead_letters(settings, args.subscriber, args.limit)

    if args.command == "inspect" and args.rid is not None and args.account is None:
        print("relay inspect: --rid needs --account", file=sys.stderr)
        return EXIT_CONFIG
    try:
        result = asyncio.run(go())
    except StoreError as exc:
        # A driver's message may quote the URL it could not use, password included.
        print(
            f"state {mask_credentials(settings.state)}: {mask_credentials(str(exc))}",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    except RelayError as exc:
        print(f"relay {args.command}: {mask_credentials(str(exc))}", file=sys.stderr)
        return EXIT_FAILURE
    sys.stdout.write(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode() + "\n")
    return EXIT_OK
