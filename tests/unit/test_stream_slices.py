"""A large body's records sliced for orjson (relay.ingest.slices): the same records as the
whole-body parser, whatever the strings hold, and the event parser only where a cut fails."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relay.ingest import body as parsing
from relay.ingest import slices
from relay.ingest.body import FetchResult, StreamAbandoned, StreamedBody
from relay.ingest.slices import array_span, sliced
from tests.unit.test_catchup_stream import JSON, doc, same, stream, whole

# Text that looks like a cut, or like the end of the array, inside a string.
TRICKY = ["},{", "}, {", '"},{"rid":1', "}\n,\n{", "]}", "{", "}", "\\", '\\"},{', ""]


def records(n: int, text: str = "plain") -> list[dict[str, Any]]:
    return [
        {"rid": 500 + i, "note": text, "n": i / 4, "tags": [{"a": i}, {"b": text}]}
        for i in range(n)
    ]


class Spy:
    """Counts how often the event parser was asked for records."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        real = parsing.ijson.items_coro

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            return real(*args, **kwargs)

        monkeypatch.setattr(parsing.ijson, "items_coro", counted)


def test_a_plain_body_is_sliced_without_the_event_parser(monkeypatch: pytest.MonkeyPatch) -> None:
    spy = Spy(monkeypatch)
    monkeypatch.setattr(slices, "_GUESS", 1)  # a cut after every record or so
    body = doc(records(50))
    got, result = stream(body, size=3)
    assert isinstance(result, FetchResult) and same(got + result.records, records(50))
    assert spy.calls == 0


@pytest.mark.parametrize("text", TRICKY)
def test_cut_lookalikes_inside_strings_change_nothing(
    text: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(slices, "_GUESS", 1)
    for body in (
        doc(records(40, text)),
        json.dumps(json.loads(doc(records(40, text))), indent=2).encode(),
    ):
        expected = whole(body)
        got, result = stream(body, size=4)
        assert isinstance(expected, FetchResult) and isinstance(result, FetchResult)
        assert same(got + result.records, expected.records) and result.count == expected.count


def test_when_no_cut_holds_the_event_parser_reads_the_rest(monkeypatch: pytest.MonkeyPatch) -> None:
    spy = Spy(monkeypatch)
    monkeypatch.setattr(slices, "_GUESS", 1)
    # Every record's string holds five cut lookalikes: more than the retries allow.
    mixed = records(10) + records(30, "},{" * 5)
    body = doc(mixed)
    got, result = stream(body, size=5)
    assert isinstance(result, FetchResult) and same(got + result.records, mixed)
    assert spy.calls == 1


def test_records_before_another_member_are_read_to_the_end(monkeypatch: pytest.MonkeyPatch) -> None:
    spy = Spy(monkeypatch)
    body = orjson.dumps({"success": True, "count": 30, "records": records(30), "page": [1, 2]})
    got, result = stream(body, size=5)
    assert isinstance(result, FetchResult) and same(got + result.records, records(30))
    assert spy.calls == 1  # the last piece could not end at "]}": the event parser took it


def test_a_twenty_digit_integer_stays_with_the_event_parser(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    spy = Spy(monkeypatch)
    big = [*records(5), {"rid": 1, "billsec": 123456789012345678901234}]
    body = json.dumps({"success": True, "count": 6, "records": big}).encode()
    got, result = stream(body, size=2)
    assert spy.calls == 1
    expected = whole(body)
    assert (
        isinstance(expected, FetchResult) and expected.records[-1]["billsec"] == big[-1]["billsec"]
    )
    if isinstance(result, FetchResult):  # else abandoned: the poller parses it whole
        assert same(got + result.records, expected.records)


def test_array_span_and_empty_arrays() -> None:
    body = b'{"success": true, "records": [ ] }'
    span = array_span(body)
    assert span is not None and body[span[0] : span[1]] == b""

    def never(start: int) -> Iterator[Any]:
        raise AssertionError("no fallback for an empty array")

    assert list(sliced(body, span, 10, never)) == []
    assert array_span(b'{"success": true, "records": [1]') is None  # not closed
    assert StreamedBody(JSON, body).whole().records == []


text = st.lists(
    st.text(st.characters(exclude_categories=("Cs",)), max_size=3) | st.sampled_from(TRICKY),
    max_size=4,
).map("".join)
# -2**63 itself is yajl's overflow when it reads numbers (use_float): a stream that reaches ijson
# with it abandons (see test_the_lowest_64_bit_integer_abandons_an_ijson_stream).
INT_LOW = -(2**63) + 1
record = st.fixed_dictionaries(
    {"rid": st.integers(0, 10**9)},
    optional={
        "note": text,
        "n": st.floats(allow_nan=False, allow_infinity=False) | st.integers(INT_LOW, 2**63 - 1),
        "x": st.lists(st.dictionaries(text, text, max_size=2) | text, max_size=3),
    },
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    recs=st.lists(record | st.integers(INT_LOW, 2**63 - 1) | text, max_size=25),
    style=st.sampled_from(["orjson", "ascii", "pretty"]),
    size=st.integers(1, 6),
    guess=st.sampled_from([1, 8, 256]),
)
def test_sliced_records_are_the_whole_parse(
    recs: list[Any], style: str, size: int, guess: int
) -> None:
    value = {"success": True, "count": len(recs), "records": recs}
    if style == "orjson":
        body = orjson.dumps(value)
    else:
        body = json.dumps(
            value, ensure_ascii=style == "ascii", indent=1 if style == "pretty" else None
        ).encode()
    expected = whole(body)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(slices, "_GUESS", guess)
        got, result = stream(body, size=size)
    assert isinstance(expected, FetchResult) and isinstance(result, FetchResult)
    assert same(got + result.records, expected.records)


@pytest.mark.parametrize(
    ("text", "long"),
    [
        (b'{"a": 1234567890123456789}', False),  # 19 digits: within 64 bits
        (b'{"a": 12345678901234567890}', True),
        (b'{"a": 1234567890.1234567890}', False),  # digits broken by a point
        (b'{"a": "x12345678901234567890"}', True),  # in a string too, as the regex did
        (b"", False),
    ],
)
def test_long_number_finds_twenty_digits_in_a_row(text: bytes, long: bool) -> None:
    assert parsing._long_number(text) is long


def test_the_lowest_64_bit_integer_abandons_an_ijson_stream() -> None:
    """yajl, reading numbers itself (ijson's use_float), overflows on -2**63 although it fits in
    64 bits: a body that goes to ijson (here a 20-digit number sends it there) abandons the
    stream, and the whole-body parse, which the intake falls back to, reads it exactly."""
    recs = [{"rid": 1, "n": -(2**63)}, {"rid": 2, "n": 10**19}]
    body = orjson.dumps({"success": True, "count": 2, "records": recs})
    expected = whole(body)
    assert isinstance(expected, FetchResult) and same(expected.records, recs)
    _, result = stream(body, size=1)
    assert isinstance(result, StreamAbandoned) and "integer overflow" in str(result)
