"""The circuit breaker and 429 pause as a pure state machine, and a subscriber's pace settings
(presets by receiver host, validation), table-driven."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from relay.config import Settings
from relay.config.pace import SubscriberRateLimit, preset_for
from relay.config.schema import load_settings
from relay.core.breaker import (
    BreakerPolicy,
    Change,
    Circuit,
    on_failure,
    on_pause,
    on_success,
    probe_attempts,
)
from relay.core.errors import ConfigError
from tests.unit.test_config import patched, write

POLICY = BreakerPolicy(threshold=3, disable_after=100.0)
T = 1_000.0


@pytest.mark.parametrize(
    ("before", "now", "after", "change"),
    [
        pytest.param(Circuit(), T, Circuit(1, T), Change.COUNTED, id="first failure"),
        pytest.param(Circuit(1, T), T + 1, Circuit(2, T), Change.COUNTED, id="second"),
        pytest.param(Circuit(2, T), T + 2, Circuit(3, T, T + 2), Change.OPENED, id="opens"),
        pytest.param(
            Circuit(3, T, T + 2), T + 50, Circuit(4, T, T + 2), Change.COUNTED, id="probe fails"
        ),
        pytest.param(
            Circuit(9, T, T + 2), T + 100, Circuit(10, T, T + 2), Change.DISABLE, id="disable"
        ),
        pytest.param(  # disabling wins over opening
            Circuit(2, T), T + 500, Circuit(3, T, T + 500), Change.DISABLE, id="open+disable"
        ),
        pytest.param(  # a pause is kept through failures
            Circuit(0, None, None, T + 9),
            T,
            Circuit(1, T, None, T + 9),
            Change.COUNTED,
            id="paused",
        ),
    ],
)
def test_on_failure(before: Circuit, now: float, after: Circuit, change: Change) -> None:
    assert on_failure(before, POLICY, now) == (after, change)


@pytest.mark.parametrize(
    ("before", "after", "change"),
    [
        pytest.param(Circuit(), Circuit(), Change.NONE, id="healthy: nothing to write"),
        pytest.param(Circuit(2, T), Circuit(), Change.COUNTED, id="run of failures ends"),
        pytest.param(Circuit(7, T, T + 1), Circuit(), Change.CLOSED, id="closes"),
        pytest.param(
            Circuit(7, T, T + 1, T + 30),
            Circuit(paused_until=T + 30),
            Change.CLOSED,
            id="keeps pause",
        ),
    ],
)
def test_on_success(before: Circuit, after: Circuit, change: Change) -> None:
    assert on_success(before) == (after, change)


@pytest.mark.parametrize(
    ("before", "seconds", "until", "change"),
    [
        pytest.param(Circuit(), 5.0, T + 5, Change.PAUSED, id="pauses"),
        pytest.param(Circuit(paused_until=T + 9), 5.0, T + 9, Change.NONE, id="never shortens"),
        pytest.param(Circuit(paused_until=T + 2), 5.0, T + 5, Change.PAUSED, id="extends"),
        pytest.param(Circuit(), 0.0, None, Change.NONE, id="zero"),
        pytest.param(Circuit(), -3.0, None, Change.NONE, id="negative"),
        pytest.param(Circuit(), math.nan, None, Change.NONE, id="nan"),
    ],
)
def test_on_pause(before: Circuit, seconds: float, until: float | None, change: Change) -> None:
    after, got = on_pause(before, T, seconds)
    assert (after.paused_until, got) == (until, change)
    assert replace(after, paused_until=None) == replace(before, paused_until=None)


def test_paused_and_state() -> None:
    c = Circuit(paused_until=T + 1)
    assert c.paused(T) and c.paused(T + 0.999) and not c.paused(T + 1)
    assert not Circuit().paused(T)
    assert (Circuit().state, Circuit(3, T, T).state) == ("closed", "open")


@pytest.mark.parametrize(
    ("made", "length", "position"), [(1, 5, 1), (5, 5, 5), (6, 5, 5), (600, 5, 5), (0, 3, 1)]
)
def test_probe_never_runs_out_of_schedule(made: int, length: int, position: int) -> None:
    assert probe_attempts(made, length) == position


def test_policy_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        BreakerPolicy(threshold=0)
    with pytest.raises(ValueError):
        BreakerPolicy(disable_after=0)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://hooks.slack.com/services/T0/B0/x", (1, 1.0, 1)),
        ("https://HOOKS.SLACK.COM./services/x", (1, 1.0, 1)),
        ("https://discord.com/api/webhooks/1/abc", (30, 60.0, 5)),
        ("https://ptb.discord.com/api/webhooks/1/abc", (30, 60.0, 5)),
        ("https://discordapp.com/api/webhooks/1/abc", (30, 60.0, 5)),
        ("https://discord.com/other", None),
        ("https://hooks.zapier.com/hooks/catch/1/2/", (30, 1.0, 1)),
        ("https://notslack.com/hooks.slack.com", None),
        ("https://evilhooks.slack.com.example/x", None),
        ("http://127.0.0.1:8080/", None),
    ],
)
def test_presets_by_host(url: str, expected: tuple[int, float, int] | None) -> None:
    limit = preset_for(url)
    got = None if limit is None else (limit.requests, limit.per, limit.bucket_burst)
    assert got == expected


def settings(**sub: object) -> Settings:
    doc = patched(*((f"subscribers.0.{k}", v) for k, v in sub.items()))
    return Settings.model_validate(doc)


def test_rate_limit_preset_explicit_and_off() -> None:
    slack = "https://hooks.slack.com/services/T/B/x"
    assert settings(url=slack).subscribers[0].pace() == SubscriberRateLimit(
        requests=1, per=1.0, burst=1
    )
    mine = settings(url=slack, rate_limit={"requests": 3, "per": "2s"}).subscribers[0].pace()
    assert mine is not None and (mine.requests, mine.per, mine.bucket_burst) == (3, 2.0, 1)
    assert settings(url=slack, rate_limit="none").subscribers[0].pace() is None
    assert settings().subscribers[0].pace() is None  # hooks.example.com: no preset
    sub = settings(ordering="FIFO", circuit={"open_after": 2, "disable_after": "1h"}).subscribers[0]
    assert (sub.ordering, sub.circuit.policy()) == ("fifo", BreakerPolicy(2, 3600.0))


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("rate_limit", {"requests": 0}, "subscribers[0].rate_limit"),
        ("rate_limit", {"requests": 2, "burst": 3}, "burst must not exceed requests"),
        ("rate_limit", {"requests": 2, "per": "0s"}, "subscribers[0].rate_limit"),
        ("rate_limit", {"requests": 2, "every": "1s"}, "subscribers[0].rate_limit"),
        ("ordering", "lifo", "subscribers[0].ordering"),
        ("circuit", {"open_after": 0}, "subscribers[0].circuit.open_after"),
        ("circuit", {"disable_after": "soon"}, "subscribers[0].circuit.disable_after"),
    ],
)
def test_pace_keys_are_validated(tmp_path, key: str, value: object, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(write(tmp_path, patched((f"subscribers.0.{key}", value))), environ={})
    assert message in str(err.value)
