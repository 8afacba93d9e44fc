"""The sign-in limiter with a clock the test moves: per-address and global buckets of failures."""

from __future__ import annotations

import pytest

from relay.ops.signin import SignInLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def limiter(clock: Clock, **kw: object) -> SignInLimiter:
    return SignInLimiter(per_address=(3, 10.0), overall=(5, 2.0), clock=clock, **kw)  # type: ignore[arg-type]


def test_an_address_is_limited_after_its_burst_and_recovers_one_by_one(clock: Clock) -> None:
    lim = limiter(clock)
    assert lim.retry_after("a") == 0  # never seen: go ahead
    assert [lim.failed("a") for _ in range(3)] == [False, False, True]
    assert lim.retry_after("a") == 10
    assert lim.retry_after("b") == 0  # another address is not held up
    clock.now += 9.5
    assert lim.retry_after("a") == 1  # whole seconds, rounded up
    clock.now += 0.5
    assert lim.retry_after("a") == 0
    assert lim.failed("a")  # one refilled, one spent: limited again at once
    assert lim.retry_after("a") == 10


def test_the_global_bucket_stops_many_addresses(clock: Clock) -> None:
    lim = limiter(clock)
    for i in range(5):
        lim.failed(f"10.0.0.{i}")
    assert lim.retry_after("10.0.0.99") == 2  # a fresh address waits for the global bucket
    clock.now += 2.0
    assert lim.retry_after("10.0.0.99") == 0


@pytest.mark.parametrize("address", ["", "unknown", "::1", "2001:db8::1", "ä&<>📞" * 50])
def test_any_address_text_is_a_key(clock: Clock, address: str) -> None:
    lim = limiter(clock)
    for _ in range(3):
        lim.failed(address)
    assert lim.retry_after(address) == 10


def test_memory_is_bounded_and_drained_addresses_are_forgotten(clock: Clock) -> None:
    lim = SignInLimiter(per_address=(3, 10.0), overall=(10_000, 0.001), max_addresses=4,
                        clock=clock)  # fmt: skip
    for i in range(10):
        lim.failed(f"a{i}")
    assert len(lim) == 4  # the least recently failing went first
    assert lim.retry_after("a0") == 0 and lim.retry_after("a9") == 0
    clock.now += 10.0  # every bucket drains (one failure each)
    lim.failed("late")
    assert len(lim) == 1


def test_time_running_backwards_drains_nothing(clock: Clock) -> None:
    lim = limiter(clock)
    for _ in range(3):
        lim.failed("a")
    clock.now -= 100.0
    assert lim.retry_after("a") >= 10
