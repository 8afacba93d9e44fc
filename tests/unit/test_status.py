"""The pure judgements of the status model: readiness, stuck pollers, lag, the histogram."""

from __future__ import annotations

import pytest

from relay.core.status import (
    LATENCY_BUCKETS,
    RelayStatus,
    RuntimeAccount,
    RuntimeSubscriber,
    StoreStats,
    account_lag,
    poller_problem,
    readiness,
)

NOW = 10_000.0


def account(phase: str, since: float = NOW, next_at: float | None = None) -> RuntimeAccount:
    a = RuntimeAccount(timeout=30.0)
    a.enter(phase, since, next_at)
    return a


@pytest.mark.parametrize(
    ("acct", "problem"),
    [
        (account("starting"), None),
        (account("budget", NOW - 3000), None),  # waiting for budget is a known reason
        (account("polling", NOW - 100), None),
        (account("polling", NOW - 151), "one poll has run 151s"),  # 5 x 30 s timeout
        (account("waiting", NOW - 5, NOW + 900), None),  # auth failure: a long, planned wait
        (account("waiting", NOW - 200, NOW - 61), "poll overdue by 61s"),
        (account("waiting", NOW - 200, NOW - 59), None),
        (account("stopped"), "poller not running"),
    ],
)
def test_poller_problem(acct: RuntimeAccount, problem: str | None) -> None:
    got = poller_problem("alpha", acct, NOW)
    assert (got is None) == (problem is None)
    if problem is not None:
        assert got is not None and problem in got and got.startswith("account alpha")


def test_readiness_needs_a_running_relay_and_a_poller_per_account() -> None:
    status = RelayStatus(store=StoreStats(), running=False, config_accounts=["a"])
    assert readiness(status, NOW) == ["relay not running"]
    status.running = True
    assert readiness(status, NOW) == ["account a: no poller"]
    status.pollers["a"] = account("waiting", NOW, NOW + 5)
    assert readiness(status, NOW) == []
    assert status.to_dict()["ready"] is True


@pytest.mark.parametrize(("newest", "lag"), [(None, None), (NOW - 20, 20.0), (NOW + 5, 0.0)])
def test_account_lag(newest: float | None, lag: float | None) -> None:
    a = RuntimeAccount(newest_call_at=newest)
    assert account_lag(a, NOW) == lag


def test_latency_histogram_buckets_are_inclusive_upper_bounds() -> None:
    s = RuntimeSubscriber()
    for latency in (0.0, LATENCY_BUCKETS[0], LATENCY_BUCKETS[0] + 1e-9, 1e9):
        s.record("delivered", latency, None, NOW)
    s.record("local_error", None, "EMFILE", NOW)
    assert s.latency_counts[0] == 2 and s.latency_counts[1] == 1 and s.latency_counts[-1] == 1
    assert s.latency_count == 4
    assert s.outcomes["delivered"] == 4 and s.outcomes["local_error"] == 1
    assert (s.last_error, s.last_delivered_at) == ("EMFILE", NOW)
