"""The arithmetic of ``poll_interval: auto``: intervals, phases, slots and the latency floor."""

from __future__ import annotations

import itertools
import math

import pytest

from relay.core.budget import SAFETY, bucket_params, default_burst
from relay.core.cadence import (
    MIN_INTERVAL,
    RESERVE,
    auto_interval,
    budget_spacing,
    key_shift,
    latency_floor,
    next_slot,
    phase,
)


@pytest.mark.parametrize(
    ("requests", "per", "accounts", "expected"),
    [
        # The default budget (900 per 15 min, burst 10): 909/891 s per request, / 0.9.
        (900, 900.0, 1, 909 / 891 / 0.9),
        (900, 900.0, 2, 2 * 909 / 891 / 0.9),
        (900, 900.0, 10, 10 * 909 / 891 / 0.9),
        (900, 900.0, 100, 100 * 909 / 891 / 0.9),
        # The bench's scaled budget: 60 per 60 s, burst 3.
        (60, 60.0, 1, 60.6 / 58 / 0.9),
        (60, 60.0, 5, 5 * 60.6 / 58 / 0.9),
        # The tests' small budget: 20 per 10 s, burst 1: 10.1 / 20 s per request.
        (20, 10.0, 3, 3 * 10.1 / 20 / 0.9),
        # One request a day, one account: a day and a bit, over the reserve.
        (1, 86400.0, 1, 86400 * (1 + SAFETY) / 0.9),
        # A budget far above one poll a second per account: the minimum holds.
        (100_000, 900.0, 1, MIN_INTERVAL),
        (100_000, 900.0, 500, 500 * 909 / 99_991 / 0.9),
    ],
)
def test_auto_interval(requests: int, per: float, accounts: int, expected: float) -> None:
    assert auto_interval(requests, per, accounts) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize(("requests", "per"), [(900, 900.0), (60, 60.0), (20, 10.0), (7, 3.0)])
@pytest.mark.parametrize("accounts", [1, 2, 3, 5, 40])
def test_never_faster_than_the_budgets_even_spacing(
    requests: int, per: float, accounts: int
) -> None:
    interval = auto_interval(requests, per, accounts, minimum=0.0)
    capacity, period = bucket_params(requests, per, default_burst(requests))
    # All accounts together ask at most (1 - RESERVE) of the bucket's steady rate ...
    assert accounts / interval == pytest.approx((1 - RESERVE) * capacity / period, rel=1e-12)
    # ... and so at most requests * (1 - RESERVE) in any window of `per`.
    assert accounts * per / interval <= requests * (1 - RESERVE)


def test_spacing_is_the_buckets_drain_rate() -> None:
    assert budget_spacing(900, 900.0) == pytest.approx(909 / 891)
    assert budget_spacing(900, 900.0, burst=1) == pytest.approx(909 / 900)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"accounts": 0}, "accounts must be at least 1"),
        ({"accounts": 1, "reserve": 1.0}, "reserve must be in"),
        ({"accounts": 1, "reserve": -0.1}, "reserve must be in"),
        ({"accounts": 1, "host_rate": 0.0}, "host_rate must be positive"),
    ],
)
def test_auto_interval_refuses(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        auto_interval(900, 900.0, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("name", "names", "place"),
    [
        ("a", ["a"], 0.0),
        ("a", ["b", "a"], 0.0),
        ("b", ["b", "a"], 0.5),
        ("c", ["a", "b", "c", "d", "e"], 0.4),
        ("c", ["c", "a", "c"], 0.5),  # duplicates count once
    ],
)
def test_phase(name: str, names: list[str], place: float) -> None:
    # Its place among the key's accounts, shifted by the key's own fraction of one slot.
    expected = (place + key_shift(names) / len(set(names))) % 1.0
    assert phase(name, names) == pytest.approx(expected, abs=1e-12)


def test_phase_of_an_account_not_on_the_key_is_zero() -> None:
    assert phase("zz", ["a", "b"]) == 0.0  # not (or no longer) on the key: no offset


def test_phases_of_one_key_stay_evenly_apart() -> None:
    names = [f"acct-{i}" for i in range(7)]
    offsets = sorted(phase(n, names) for n in names)
    gaps = [b - a for a, b in itertools.pairwise(offsets)] + [1 + offsets[0] - offsets[-1]]
    assert gaps == pytest.approx([1 / 7] * 7)


def test_keys_of_one_account_each_spread_over_the_interval() -> None:
    # A host with 1,000 keys of one account each: without a shift they would all poll in the
    # same instant of every interval. With it, no tenth of the interval holds more than twice
    # its share.
    offsets = [phase(f"tenant-{i}", [f"tenant-{i}"]) for i in range(1_000)]
    assert all(0.0 <= o < 1.0 for o in offsets)
    tenths = [0] * 10
    for o in offsets:
        tenths[int(o * 10)] += 1
    assert max(tenths) <= 200
    # Stable: the same names give the same shift in any process (crc32, not a salted hash).
    assert key_shift(["b", "a"]) == key_shift(["a", "b", "a"])
    assert key_shift(["a"]) == pytest.approx(0xE8B7BE43 / 2**32)


@pytest.mark.parametrize(
    ("host_accounts", "host_rate", "expected"),
    [
        (0, 200.0, 909 / 891 / 0.9),  # no host cap named: the budget's floor
        (100, 200.0, 909 / 891 / 0.9),  # 100 accounts at 1.13 s: 88 polls/s, under the cap
        (1_000, 200.0, 5.0),  # 1,000 accounts share 200 polls/s: every 5 s
        (10_000, 200.0, 50.0),
        (10_000, 1_000.0, 10.0),
    ],
)
def test_host_rate_caps_all_accounts_together(
    host_accounts: int, host_rate: float, expected: float
) -> None:
    got = auto_interval(900, 900.0, 1, host_accounts=host_accounts, host_rate=host_rate)
    assert got == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize(
    ("now", "interval", "offset", "expected"),
    [
        (0.0, 1.0, 0.0, 1.0),  # on a slot: the next one, never now
        (0.5, 1.0, 0.0, 1.0),
        (0.999, 1.0, 0.0, 1.0),
        (0.2, 1.0, 0.5, 0.5),
        (0.5, 1.0, 0.5, 1.5),
        (0.7, 1.0, 0.5, 1.5),
        (10.0, 4.0, 0.25, 13.0),
        (-3.0, 2.0, 0.0, -2.0),
    ],
)
def test_next_slot(now: float, interval: float, offset: float, expected: float) -> None:
    assert next_slot(now, interval, offset) == pytest.approx(expected)


@pytest.mark.parametrize("interval", [1.1336, 2.2672, 5.8, 1020.3])
@pytest.mark.parametrize("offset", [0.0, 0.2, 0.5, 0.8])
def test_slots_on_a_wall_clock_are_after_now_and_one_interval_apart(
    interval: float, offset: float
) -> None:
    now = 1_764_000_000.123
    for _ in range(200):
        slot = next_slot(now, interval, offset)
        assert now < slot <= now + interval
        # On the key's grid: a whole number of intervals from the phase offset.
        steps = (slot - offset * interval) / interval
        assert abs(steps - round(steps)) < 1e-6
        now = slot


def test_next_slot_refuses_a_zero_interval() -> None:
    with pytest.raises(ValueError, match="interval must be positive"):
        next_slot(1.0, 0.0, 0.0)


@pytest.mark.parametrize(
    ("interval", "quantile", "fetch", "expected"),
    [
        (1.1336, 0.5, 0.0, 0.5668),
        (1.1336, 0.99, 0.02, 1.142264),
        (5.0, 0.5, 0.0, 2.5),
        (5.0, 0.0, 0.01, 0.01),
    ],
)
def test_latency_floor(interval: float, quantile: float, fetch: float, expected: float) -> None:
    assert math.isclose(latency_floor(interval, quantile, fetch), expected, rel_tol=1e-9)


def test_latency_floor_refuses_a_quantile_outside_0_1() -> None:
    with pytest.raises(ValueError, match="quantile"):
        latency_floor(1.0, 1.5)
