from __future__ import annotations

import pytest

from relay.core.retry import (
    RETRY_AFTER_CEILING,
    Verdict,
    classify,
    next_attempt_at,
    parse_retry_after,
    upstream_backoff,
)

DATE_TS = 1_445_412_480.0  # Wed, 21 Oct 2015 07:28:00 GMT


@pytest.mark.parametrize(
    ("value", "now", "expected"),
    [
        (None, DATE_TS, None),
        ("", DATE_TS, None),
        ("   ", DATE_TS, None),
        ("120", DATE_TS, 120.0),
        (" 120 ", DATE_TS, 120.0),
        ("0", DATE_TS, 0.0),
        ("1.5", DATE_TS, 1.5),
        ("007", DATE_TS, 7.0),
        ("-5", DATE_TS, None),
        ("+5", DATE_TS, None),
        ("1e3", DATE_TS, None),
        ("inf", DATE_TS, None),
        ("nan", DATE_TS, None),
        ("12abc", DATE_TS, None),
        ("soon", DATE_TS, None),
        ("999999999999999", DATE_TS, RETRY_AFTER_CEILING),  # huge: capped
        ("9" * 400, DATE_TS, RETRY_AFTER_CEILING),  # float() gives inf here; still capped
        ("Wed, 21 Oct 2015 07:28:00 GMT", DATE_TS - 90, 90.0),
        ("Wed, 21 Oct 2015 07:28:00 GMT", DATE_TS, 0.0),
        ("Wed, 21 Oct 2015 07:28:00 GMT", DATE_TS + 3600, 0.0),  # in the past: go now
        ("Wed, 21 Oct 2015 07:28:00 GMT", DATE_TS - 10 * 86400, RETRY_AFTER_CEILING),
        ("Wed, 21 Oct 2015 07:28:00 -0000", DATE_TS - 30, 30.0),  # no zone: read as UTC
        ("Wed, 21 Oct 2015 09:28:00 +0200", DATE_TS - 30, 30.0),
        ("Wednesday, 21-Oct-15 07:28:00 GMT", DATE_TS - 30, 30.0),  # obsolete RFC 850 form
        ("Wed, 32 Oct 2015 07:28:00 GMT", DATE_TS, None),
        ("Wed, 21 Oct 99999 07:28:00 GMT", DATE_TS, None),
        ("Wed, 21 Oct 2015", DATE_TS, None),
        ("Wed", DATE_TS, None),
    ],
)
def test_parse_retry_after(value: str | None, now: float, expected: float | None) -> None:
    assert parse_retry_after(value, now) == expected


@pytest.mark.parametrize(
    ("status", "retry_on_4xx", "verdict"),
    [
        (None, False, Verdict.RETRY),
        (None, True, Verdict.RETRY),
        (100, False, Verdict.RETRY),
        (200, False, Verdict.SUCCESS),
        (201, False, Verdict.SUCCESS),
        (204, False, Verdict.SUCCESS),
        (299, False, Verdict.SUCCESS),
        (301, False, Verdict.RETRY),
        (302, True, Verdict.RETRY),
        (304, False, Verdict.RETRY),
        (308, False, Verdict.RETRY),
        (400, False, Verdict.FAIL),
        (400, True, Verdict.RETRY),
        (401, False, Verdict.FAIL),
        (403, False, Verdict.FAIL),
        (404, False, Verdict.FAIL),
        (404, True, Verdict.RETRY),
        (408, False, Verdict.RETRY),
        (409, False, Verdict.FAIL),
        (410, False, Verdict.GONE),
        (410, True, Verdict.GONE),
        (413, False, Verdict.FAIL),
        (422, True, Verdict.RETRY),
        (429, False, Verdict.RETRY),
        (499, False, Verdict.FAIL),
        (500, False, Verdict.RETRY),
        (502, False, Verdict.RETRY),
        (503, False, Verdict.RETRY),
        (504, False, Verdict.RETRY),
        (599, False, Verdict.RETRY),
        (600, False, Verdict.RETRY),
        (0, False, Verdict.RETRY),
    ],
)
def test_classify(status: int | None, retry_on_4xx: bool, verdict: Verdict) -> None:
    assert classify(status, retry_on_4xx=retry_on_4xx) is verdict


SCHEDULE = (10.0, 60.0, 300.0)
NOW = 1_000_000.0


@pytest.mark.parametrize(
    ("attempts", "jitter", "retry_after", "expected"),
    [
        (1, 0.5, None, NOW + 10),  # jitter 0.5 is the unjittered delay
        (2, 0.5, None, NOW + 60),
        (3, 0.5, None, NOW + 300),
        (4, 0.5, None, None),  # schedule exhausted: dead letter
        (99, 0.5, None, None),
        (1, 0.0, None, NOW + 9),  # -10%
        (1, 0.75, None, NOW + 10.5),
        (2, 0.999999, None, pytest.approx(NOW + 66, abs=1e-3)),  # just under +10%
        (2, 0.5, 5.0, NOW + 60),  # Retry-After shorter than the schedule: ignored
        (1, 0.5, 120.0, NOW + 120),  # longer: honoured
        (1, 0.0, 9.5, NOW + 9.5),  # longer than the jittered delay
        (1, 0.5, 10_000.0, NOW + 3600),  # capped at max_retry_after
        (1, 0.5, 0.0, NOW + 10),
        (1, 0.5, -30.0, NOW + 10),  # nonsense: ignored
        (1, 0.5, float("nan"), NOW + 10),
        (1, 0.5, float("inf"), NOW + 3600),
        (4, 0.5, 120.0, None),  # Retry-After does not extend the schedule
    ],
)
def test_next_attempt_at(
    attempts: int, jitter: float, retry_after: float | None, expected: object
) -> None:
    got = next_attempt_at(SCHEDULE, attempts, NOW, jitter=jitter, retry_after=retry_after)
    assert got == expected


@pytest.mark.parametrize(
    ("schedule", "attempts", "max_retry_after", "retry_after", "expected"),
    [
        ((), 1, 3600, None, None),  # no retries at all
        ((0.0,), 1, 3600, None, NOW),
        ((5.0,), 1, 60, 600.0, NOW + 60),
        ((5.0,), 1, 0, 600.0, NOW + 5),
    ],
)
def test_next_attempt_at_edges(
    schedule: tuple[float, ...],
    attempts: int,
    max_retry_after: float,
    retry_after: float | None,
    expected: float | None,
) -> None:
    got = next_attempt_at(
        schedule,
        attempts,
        NOW,
        jitter=0.5,
        retry_after=retry_after,
        max_retry_after=max_retry_after,
    )
    assert got == expected


def test_jitter_spread_is_within_ten_percent() -> None:
    for step in range(100):
        delay = next_attempt_at((100.0,), 1, 0.0, jitter=step / 100)
        assert delay is not None and 90.0 <= delay < 110.0


@pytest.mark.parametrize(
    ("attempts", "jitter"), [(0, 0.5), (-1, 0.5), (1, -0.1), (1, 1.0), (1, float("nan"))]
)
def test_next_attempt_at_rejects_bad_input(attempts: int, jitter: float) -> None:
    with pytest.raises(ValueError):
        next_attempt_at(SCHEDULE, attempts, NOW, jitter=jitter)


@pytest.mark.parametrize(
    ("failures", "base", "cap", "jitter", "expected"),
    [
        (1, 2.0, 300.0, 0.0, 1.0),  # half of base: never ~0
        (1, 2.0, 300.0, 0.5, 1.5),
        (1, 2.0, 300.0, 0.999, pytest.approx(1.999)),
        (2, 2.0, 300.0, 0.0, 2.0),
        (3, 2.0, 300.0, 0.0, 4.0),
        (4, 2.0, 300.0, 1 / 2, 12.0),
        (8, 2.0, 300.0, 0.0, 128.0),
        (9, 2.0, 300.0, 0.0, 150.0),  # 256 capped at 300, halved
        (9, 2.0, 300.0, 0.5, 225.0),
        (50, 2.0, 300.0, 0.0, 150.0),
        (10_000, 2.0, 300.0, 0.0, 150.0),  # no overflow
        (10**9, 30.0, 60.0, 0.0, 30.0),
        (1, 0.0, 300.0, 0.7, 0.0),
    ],
)
def test_upstream_backoff(
    failures: int, base: float, cap: float, jitter: float, expected: float
) -> None:
    assert upstream_backoff(failures, base=base, cap=cap, jitter=jitter) == expected


@pytest.mark.parametrize(("failures", "jitter"), [(0, 0.5), (-3, 0.5), (1, 1.0), (1, -0.5)])
def test_upstream_backoff_rejects_bad_input(failures: int, jitter: float) -> None:
    with pytest.raises(ValueError):
        upstream_backoff(failures, base=1.0, cap=10.0, jitter=jitter)
