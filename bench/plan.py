"""Relay settings for the benchmarks, the shared simulated upstream, and the run's sizes."""

from __future__ import annotations

import base64
import secrets
from dataclasses import dataclass
from typing import Any

ACCOUNT = "bench"


def new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def relay_settings(
    state: str,
    upstream_url: str,
    api_key: str,
    subscribers: list[tuple[str, str]],
    *,
    max_in_flight: int = 16,
    timeout: str = "30s",
    upstream: dict[str, Any] | None = None,
    accounts: list[dict[str, str]] | None = None,
    retry: list[str] | None = None,
    delivery: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A settings document: one account (unless ``accounts``), the given subscribers.

    By default the account is polled once an hour from "now", i.e. the poller stays out of the
    way of a delivery measurement; measurements of polling pass ``upstream`` overrides.
    """
    return {
        "state": state,
        "upstream": {
            "base_url": upstream_url,
            "poll_interval": "1h",
            "start_from": "now",
            "accounts": accounts or [{"name": ACCOUNT, "api_key": api_key}],
            **(upstream or {}),
        },
        "subscribers": [
            {
                "name": name,
                "url": url,
                "secret": new_secret(),
                "max_in_flight": max_in_flight,
                "timeout": timeout,
                **({"retry": retry} if retry else {}),
            }
            for name, url in subscribers
        ],
        # A short grace: a run ends with stop, and black-hole requests would wait it out.
        "delivery": {"grace_period": "1s", **(delivery or {})},
    }


@dataclass(frozen=True)
class Sizes:
    """How big and how long each measurement is. ``FULL`` takes about five minutes."""

    reps: int
    deliveries: int  # (1) total deliveries per throughput run, as in the issue
    concurrency: int  # (1) workers per subscriber (max_in_flight) for the headline figure
    sweep: tuple[int, ...]  # (1) concurrencies for the throughput-vs-concurrency plot
    sweep_deliveries: int
    latency_seconds: float  # (2) production time per run
    latency_rate: float  # (2) records per second, steady
    backlogs: tuple[int, ...]  # (3)
    drain: int  # (3) deliveries timed when the subscriber returns
    down_seconds: float  # (3)
    ingest_records: int  # (4)
    idle_seconds: float  # (5)
    idle_subscribers: int  # (5) subscribers of the relay whose idle cost is measured from outside
    budget: tuple[int, float]  # (6) requests per seconds
    budget_seconds: float
    isolation: int  # (7) deliveries to the healthy subscriber
    isolation_reps: int  # (7) pairs of runs: the ratio of two noisy rates needs more
    throughput_reps: int  # (1) pairs of headline runs (the sweep runs `reps` times)
    cluster_deliveries: int = 20_000  # (8) deliveries per PostgreSQL/SQLite throughput run
    cluster_reps: int = 3  # (8) rounds of SQLite, PostgreSQL x1 and x3
    format_reps: int = 7  # (9) pairs of runs for each of format and filter
    filter_records: int = 50_000  # (9) records in the one upstream response of a filter run
    e2e_records: int = 20_000  # (10) records in the one upstream answer
    e2e_reps: int = 7  # (10) interleaved pairs (relay run, bare client)
    tls_deliveries: int = 20_000  # (11) per HTTPS throughput run
    tls_close_deliveries: int = 5_000  # (11) per run with a new connection for every request
    tenants: tuple[int, ...] = (
        10,
        100,
        1_000,
    )  # (12) idle accounts (+ one subscriber each) per relay
    tenant_seconds: float = 20.0  # (12) CPU window after start-up
    tenant_poll: float = 5.0  # (12) poll interval of every account
    tenants_full_only: int = 10_000  # (12) measured once, only if it starts within the bound below
    auto_accounts: tuple[int, ...] = (1, 2, 5)  # (13) accounts on one key, poll_interval: auto
    auto_budget: tuple[int, float] = (30, 30.0)  # (13) requests per seconds, per key
    auto_seconds: float = 40.0  # (13) calls written for this long per run
    auto_rate: float = 5.0  # (13) calls per second per key
    tenant_poll_full: float = 30.0  # (12) the poll interval of that largest size (the issue's)
    tenant_seconds_full: float = 60.0  # (12) its CPU window: two intervals, for lateness


FULL = Sizes(
    reps=3,
    deliveries=20_000,
    concurrency=16,
    sweep=(1, 4, 64),  # plus the headline concurrency, from the runs above
    sweep_deliveries=5_000,
    latency_seconds=12.0,
    latency_rate=10.0,
    backlogs=(10_000, 100_000, 1_000_000),
    drain=30_000,
    down_seconds=2.0,
    ingest_records=100_000,
    idle_seconds=60.0,
    idle_subscribers=10_000,
    budget=(20, 10.0),
    budget_seconds=32.0,
    isolation=30_000,
    isolation_reps=5,
    throughput_reps=5,
    # (9) and (10): single pairs of these ratios spread 0.66-1.15 within one run on this machine
    # kind, so a median of five moved by +-0.1 between runs; seven pairs narrow that.
    format_reps=7,
    filter_records=50_000,
    e2e_records=20_000,
    e2e_reps=7,
    tls_deliveries=20_000,
    tls_close_deliveries=5_000,
    tenants=(10, 100, 1_000),
    tenant_seconds=20.0,
    tenant_poll=5.0,
    tenants_full_only=10_000,
    tenant_poll_full=30.0,
    tenant_seconds_full=60.0,
)

SMOKE = Sizes(
    reps=1,
    deliveries=600,
    concurrency=4,
    sweep=(1, 8),
    sweep_deliveries=200,
    latency_seconds=3.0,
    latency_rate=20.0,
    backlogs=(500, 2_000),
    drain=400,
    down_seconds=0.5,
    ingest_records=1_000,
    idle_seconds=3.0,
    idle_subscribers=1_000,
    budget=(4, 1.0),
    budget_seconds=3.0,
    isolation=300,
    isolation_reps=1,
    throughput_reps=1,
    cluster_deliveries=600,
    cluster_reps=1,
    format_reps=1,
    filter_records=1_000,
    e2e_records=1_000,
    e2e_reps=1,
    tls_deliveries=300,
    tls_close_deliveries=100,
    tenants=(5, 20),
    tenant_seconds=2.0,
    tenant_poll=1.0,
    tenants_full_only=0,
    auto_accounts=(1, 2),
    auto_budget=(4, 1.0),
    auto_seconds=4.0,
    auto_rate=5.0,
    tenant_poll_full=1.0,
    tenant_seconds_full=2.0,
)
