"""relay.core.schedule: where a relay's accounts start, and when each next poll is due."""

from __future__ import annotations

import pytest

from relay.core.schedule import SLOT, START_BURST, START_RATE, next_due, start_offset


@pytest.mark.parametrize(
    ("index", "count", "interval", "expected"),
    [
        (0, 1, 5.0, 0.0),  # one account polls at once
        (1, 2, 3600.0, 0.0),  # a handful poll at once, whatever the interval
        (START_BURST - 1, START_BURST, 5.0, 0.0),
        (0, 1_000, 5.0, 0.0),  # the first of many still polls at once
        (500, 1_000, 5.0, 2.5),  # 1,000 at 5 s: spread over the whole interval
        (999, 1_000, 5.0, 4.9),  # in whole slots: a slot's accounts wake together
        (5_000, 10_000, 30.0, 15.0),  # 10,000 at 30 s: over the interval too
        (500, 1_000, 3600.0, 1_000 / START_RATE / 2),  # a long interval: at START_RATE
        (10, 1_000, 0.0, 0.0),  # no interval, no spread
    ],
)
def test_start_offset(index: int, count: int, interval: float, expected: float) -> None:
    assert start_offset(index, count, interval) == pytest.approx(expected)


def test_start_offsets_stay_within_one_interval() -> None:
    offsets = [start_offset(i, 10_000, 30.0) for i in range(10_000)]
    assert offsets == sorted(offsets)
    assert len(set(offsets)) == 30.0 / SLOT  # every slot used, each by as many accounts
    assert offsets[0] >= 0.0 and offsets[-1] < 30.0


@pytest.mark.parametrize(
    ("due", "interval", "now", "expected"),
    [
        (100.0, 5.0, 100.2, 105.0),  # a short poll: the next keeps the schedule
        (100.0, 5.0, 104.9, 105.0),  # a long one too: no drift by its length
        (100.0, 5.0, 105.0, 105.0),
        (100.0, 5.0, 117.0, 117.0),  # fell behind: at once, no burst of the missed polls
    ],
)
def test_next_due(due: float, interval: float, now: float, expected: float) -> None:
    assert next_due(due, interval, now) == expected
