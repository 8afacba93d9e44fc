"""Measured from outside the relay, as a user sets it up: (10) one big upstream answer delivered
as it is polled, and (11) HTTPS.

Rates here are the receiver's: requests counted by a :mod:`bench.rx` process from its first to
its last request, for the relay and for a bare aiohttp client alike, in the same run and
interleaved. The relay of (10) is ``python -m relay run`` with a YAML file (default log level,
default poll interval); the relays of (11) are :mod:`bench.worker` jobs over a state filled by
direct ingest, so that only the delivery path is compared.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import trustme

from bench import procs
from bench.ctx import Ctx, Row, drop_state, fmt
from bench.delivery import UPSTREAM_KEY
from bench.plan import relay_settings
from bench.polling import upstream_ts
from bench.stats import summarize
from relay.sim.simulator import SimulatedWebFones

E2E_KEY = "bench-e2e-key-0001"
E2E_IN_FLIGHT = 32  # as in the issue: one subscriber, max_in_flight 32, bare client 32 wide

Stats = dict[str, Any]


def _rate(stats: Stats) -> float:
    """Requests per second at the receiver, first to last arrival."""
    span = stats["last"] - stats["first"]
    return float(stats["requests"] / span) if span > 0 else float("nan")


async def _bare(
    ctx: Ctx, rx: procs.Receiver, urls: list[str], per_url: int, conc: int, env: dict[str, str]
) -> Stats:
    """The bare aiohttp client's run, measured by the receiver (and its own CPU time)."""
    await rx.reset()
    job = {"kind": "bare", "urls": urls, "per_url": per_url, "concurrency": conc}
    async with procs.child(
        "bare", procs.worker_args({**job, "max_seconds": 120}), ctx.logs, env
    ) as w:
        result = await w.event("result", 180)
        await w.exited(30)
    if result["failures"]:
        raise RuntimeError(f"bare client saw {result['failures']} non-200 answers")
    stats = await rx.stats()
    stats["cpu"] = result["cpu_run"]
    return stats


# -- (10) end to end ---------------------------------------------------------------------------


def add_e2e_records(sim: SimulatedWebFones, n: int, minutes_ago: float = 10.0) -> None:
    """``n`` calls from ten minutes ago: the relay's first poll finds them all in one answer
    (and, inside the default 10-minute recent window, every later poll re-reads them)."""
    started = datetime.now(UTC) - timedelta(minutes=minutes_ago)
    for _ in range(n):
        sim.add_record(E2E_KEY, started_at=started)


async def _relay_e2e(ctx: Ctx, rx: procs.Receiver, upstream: str, n: int) -> Stats:
    """``relay run`` polls the upstream (one answer of ``n`` records) and delivers them."""
    await rx.reset()
    state = ctx.state("e2e")
    settings = relay_settings(
        state,
        upstream,
        E2E_KEY,
        [("s0", f"{rx.url}/s0")],
        max_in_flight=E2E_IN_FLIGHT,
        upstream={"poll_interval": "5s", "start_from": upstream_ts(3600)},
    )
    try:
        async with procs.relay_run("relay-e2e", settings, ctx.scratch, ctx.logs) as relay:
            cpu0 = relay.cpu()
            stats = await rx.wait_count(n, 120)
            stats["cpu"] = relay.cpu() - cpu0
            stats["rss"] = relay.rss_mb()
    finally:
        drop_state(state)
    if stats["requests"] < n:
        raise RuntimeError(f"end to end: {stats['requests']} of {n} delivered in time")
    return stats


async def endtoend(ctx: Ctx, upstream: str) -> None:
    """(10) 20,000 records in one upstream answer, one subscriber 32 in flight, vs bare."""
    sz = ctx.sizes
    n = sz.e2e_records
    runs: dict[str, list[Stats]] = {"relay": [], "bare": []}
    async with procs.counting_receiver("count", 1, ctx.logs, "rx-e2e") as rx:
        url = f"{rx.url}/s0"
        steps: list[tuple[str, Callable[[], Awaitable[Stats]]]] = [
            ("relay", lambda: _relay_e2e(ctx, rx, upstream, n)),
            ("bare", lambda: _bare(ctx, rx, [url], n, E2E_IN_FLIGHT, {})),
        ]
        for rep in range(sz.e2e_reps):
            for key, step in steps if rep % 2 == 0 else reversed(steps):
                runs[key].append(await step())
    relay = [_rate(s) for s in runs["relay"]]
    bare = [_rate(s) for s in runs["bare"]]
    ratios = summarize([r / b for r, b in zip(relay, bare, strict=True)])
    ctx.data["e2e"] = runs
    ctx.add(
        "e2e",
        Row(
            f"{n:,} records in one upstream answer → 1 subscriber, {E2E_IN_FLIGHT} in flight, "
            "`relay run`, rate at the receiver",
            "ratio ≥ 0.90",
            f"{fmt(summarize(relay), '/s')}; ratio {fmt(ratios, digits=2)}",
            f"bare aiohttp, {E2E_IN_FLIGHT} concurrent: {fmt(summarize(bare), '/s')}",
            ctx.check(ratios.median >= 0.90),
        ),
    )
    cpu = summarize([1e6 * s["cpu"] / s["requests"] for s in runs["relay"]])
    bare_cpu = summarize([1e6 * s["cpu"] / s["requests"] for s in runs["bare"]])
    ctx.add(
        "e2e",
        Row(
            "CPU per record, from the relay's start to the last arrival (poll, parse, ingest, "
            "claim, sign, POST, result)",
            "informational",
            fmt(cpu, " µs"),
            f"bare client {fmt(bare_cpu, ' µs')}",
            None,
        ),
    )
    ctx.note(
        "e2e",
        "The relay is `python -m relay run` with a YAML file: default log level (INFO, one line "
        "per delivery, to a file), poll interval 5 s, one account whose first poll answers "
        f"{n:,} records, stamped ten minutes ago, so every later poll re-reads them (the "
        "default 10-minute recent window). The receiver (`bench.rx --mode count`, the stock "
        "fast receiver plus two timestamps) counts from its first to its last request, for the "
        "relay and for the bare client alike.",
    )


# -- (11) HTTPS --------------------------------------------------------------------------------


class Tls:
    """A throwaway CA and a server certificate for 127.0.0.1, as files in the scratch folder."""

    def __init__(self, scratch: str) -> None:
        ca = trustme.CA()
        cert = ca.issue_cert("127.0.0.1")
        self.ca = os.path.join(scratch, "ca.pem")
        self.chain = os.path.join(scratch, "server-chain.pem")
        self.key = os.path.join(scratch, "server-key.pem")
        ca.cert_pem.write_to_path(self.ca)
        cert.private_key_pem.write_to_path(self.key)
        with open(self.chain, "wb") as f:
            for blob in cert.cert_chain_pems:
                f.write(blob.bytes())
        # OpenSSL's default verify paths honour this: both clients trust the CA, unchanged.
        self.env = {"SSL_CERT_FILE": self.ca}

    def args(self, *extra: str) -> list[str]:
        return ["--tls", self.chain, self.key, *extra]


async def _relay_fill(
    ctx: Ctx, rx: procs.Receiver, upstream: str, subs: list[tuple[str, str]], total: int,
    conc: int, env: dict[str, str],
) -> Stats:  # fmt: skip
    """A relay worker over a state with ``total`` deliveries spread over ``subs``."""
    await rx.reset()
    state = ctx.state("tls")
    job = {
        "kind": "relay",
        "settings": relay_settings(state, upstream, UPSTREAM_KEY, subs, max_in_flight=conc),
        "fill": {"records": total // len(subs), "subscribers": [s for s, _ in subs]},
        "goal": {"delivered": total},
        "max_seconds": 120,
    }
    try:
        async with procs.child("relay-tls", procs.worker_args(job), ctx.logs, env) as w:
            result = await w.event("result", 180)
            await w.exited(30)
    finally:
        drop_state(state)
    if result["t_done"] is None:
        raise RuntimeError(f"TLS relay delivered {result['delivered']} of {total} in time")
    stats = await rx.stats()
    stats["cpu"] = result["cpu_run"]
    return stats


async def _pairs(
    ctx: Ctx, reps: int, relay: Callable[[], Awaitable[Stats]], bare: Callable[[], Awaitable[Stats]]
) -> tuple[list[Stats], list[Stats]]:
    got: dict[str, list[Stats]] = {"relay": [], "bare": []}
    steps = [("relay", relay), ("bare", bare)]
    for rep in range(reps):
        for key, step in steps if rep % 2 == 0 else reversed(steps):
            got[key].append(await step())
    return got["relay"], got["bare"]


def _ratio_row(measure: str, relay: list[Stats], bare: list[Stats], ctx: Ctx, target: bool) -> Row:
    r = [_rate(s) for s in relay]
    b = [_rate(s) for s in bare]
    ratios = summarize([x / y for x, y in zip(r, b, strict=True)])
    conns = summarize([float(s["connections"]) for s in relay])
    bare_conns = summarize([float(s["connections"]) for s in bare])
    return Row(
        measure,
        "ratio ≥ 0.90" if target else "informational",
        f"{fmt(summarize(r), '/s')}; ratio {fmt(ratios, digits=2)}; {fmt(conns)} connections",
        f"bare aiohttp {fmt(summarize(b), '/s')}; {fmt(bare_conns)} connections",
        ctx.check(ratios.median >= 0.90) if target else None,
    )


async def https(ctx: Ctx, upstream: str) -> None:
    """(11) Relay vs bare aiohttp over TLS, 1 and 10 subscribers; then a new connection for
    every request (the receiver closes each), where TLS session resumption decides the cost."""
    sz = ctx.sizes
    n, c = sz.tls_deliveries, sz.concurrency
    tls = Tls(ctx.scratch)
    env = tls.env
    sec = "https"
    async with procs.counting_receiver("count", 1, ctx.logs, "rx-tls", tls.args(), tls.ca) as rx:
        for k in (1, 10):
            subs = [(f"s{i}", f"{rx.url}/s{i}") for i in range(k)]
            urls = [u for _, u in subs]
            relay, bare = await _pairs(
                ctx,
                sz.reps,
                lambda s=subs: _relay_fill(ctx, rx, upstream, s, n, c, env),  # type: ignore[misc]
                lambda u=urls: _bare(ctx, rx, u, n // len(u), c, env),  # type: ignore[misc]
            )
            label = "1 subscriber" if k == 1 else f"{k} subscribers"
            ctx.add(
                sec,
                _ratio_row(
                    f"HTTPS, {n:,} deliveries, {label}, {c} in flight each", relay, bare, ctx, True
                ),
            )
    m = sz.tls_close_deliveries
    close_args = tls.args("--close")
    async with procs.counting_receiver(
        "count", 1, ctx.logs, "rx-tls-close", close_args, tls.ca
    ) as rx:
        subs = [("s0", f"{rx.url}/s0")]
        relay, bare = await _pairs(
            ctx,
            sz.reps,
            lambda: _relay_fill(ctx, rx, upstream, subs, m, c, env),
            lambda: _bare(ctx, rx, [subs[0][1]], m, c, env),
        )
        ctx.add(
            sec,
            _ratio_row(
                f"HTTPS, receiver closes every connection: {m:,} deliveries = new connections/s, "
                f"{c} at a time",
                relay,
                bare,
                ctx,
                False,
            ),
        )
        resumed = summarize([s["resumed"] / max(1, s["connections"]) for s in relay])
        bare_resumed = summarize([s["resumed"] / max(1, s["connections"]) for s in bare])
        ctx.add(
            sec,
            Row(
                "TLS handshakes that resumed a session (receiver closes every connection)",
                "relay: all but the first per origin",
                f"{fmt(resumed, digits=3)} of {fmt(summarize([s['connections'] for s in relay]))}",
                f"bare aiohttp {fmt(bare_resumed, digits=3)}",
                ctx.check(resumed.median >= 0.9),
            ),
        )
    ctx.note(
        sec,
        "The receiver is `bench.rx --mode count --tls` (aiohttp's server, Python's ssl module, "
        "a throwaway CA from `trustme` that both clients trust through `SSL_CERT_FILE`). "
        "'connections' are TCP connections the receiver accepted in the run: with keep-alive "
        "the relay opens one per request in flight and keeps it. The last rows make every "
        "request a new connection: the relay offers the TLS session of an earlier connection to "
        "the same host (`ssl_object.session_reused` counted at the receiver); aiohttp does not.",
    )
