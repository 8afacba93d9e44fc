from __future__ import annotations

import json
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

import pytest

from relay.core.envelope import build_body, iso_utc

T0 = datetime(2025, 7, 1, 20, 54, 53, tzinfo=UTC).timestamp()

RECORD = {
    "rid": 211159,
    "call_timestamp": "2025-07-01 20:54:53",
    "cidname_outside": "B WHITTAKER",
    "cidext_inside": "3203",
    "direction": "OUTGOING",
    "disposition": "ANSWERED",
    "zz_unknown_new_field": {"nested": [1, 2.5, None, True]},
    "aa_after_it": "order kept, not sorted",
}


@pytest.mark.parametrize(
    ("ts", "text"),
    [
        (0.0, "1970-01-01T00:00:00.000Z"),
        (T0, "2025-07-01T20:54:53.000Z"),
        (T0 + 0.123, "2025-07-01T20:54:53.123Z"),
        (T0 + 0.9999, "2025-07-01T20:54:53.999Z"),  # truncated, never rounded up a second
        (T0 + 0.0005, "2025-07-01T20:54:53.000Z"),
        (951_782_400.5, "2000-02-29T00:00:00.500Z"),
        (4_102_444_799.25, "2099-12-31T23:59:59.250Z"),
    ],
)
def test_iso_utc(ts: float, text: str) -> None:
    assert iso_utc(ts) == text


def test_body_is_exact_compact_envelope_in_key_order() -> None:
    body = build_body("acme", T0 + 0.123, RECORD)
    record_json = json.dumps(RECORD, separators=(",", ":"))
    assert body == (
        b'{"type":"call.record","timestamp":"2025-07-01T20:54:53.123Z","account":"acme",'
        b'"data":' + record_json.encode() + b"}"
    )
    assert list(json.loads(body)["data"]) == list(RECORD)  # field order preserved


@pytest.mark.parametrize(
    "record",
    [
        {},
        RECORD,
        {"rid": 1, "name": "Zoë ☎ 日本", "emoji": "📞", "quote": '"\\\n'},
        {"rid": 2, "big": 2**70, "neg": -(2**80), "list": [2**64, {"x": 1}]},  # beyond orjson
        {"rid": 3, "edge": 2**64 - 1, "low": -(2**63)},  # still within orjson
        {"rid": 4, "float": 1.5, "tiny": 1e-300, "null": None, "bool": False},
    ],
)
def test_body_round_trips_every_record(record: dict[str, Any]) -> None:
    body = build_body("acme", T0, record)
    doc = json.loads(body)
    assert list(doc) == ["type", "timestamp", "account", "data"]
    assert doc == {
        "type": "call.record",
        "timestamp": "2025-07-01T20:54:53.000Z",
        "account": "acme",
        "data": record,
    }
    # Compact, raw UTF-8 (no \\u escapes): the same bytes whichever encoder ran.
    assert body == json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()


def test_big_integer_fallback_matches_orjson_layout() -> None:
    small = build_body("acme", T0, {"rid": 1, "name": "Zoë", "n": 2**63})
    big = build_body("acme", T0, {"rid": 1, "name": "Zoë", "n": 2**65})
    assert small.replace(str(2**63).encode(), str(2**65).encode()) == big


@pytest.mark.parametrize(
    ("record", "data_json"),
    [
        ({"rid": 1, 2: "int key"}, b'{"rid":1,"2":"int key"}'),
        ({"rid": 1, "s": "bad \ud800 half"}, b'{"rid":1,"s":"bad \\ud800 half"}'),
    ],
)
def test_what_orjson_refuses_still_goes_out(record: dict[Any, Any], data_json: bytes) -> None:
    body = build_body("acme", T0, record)
    assert body.endswith(b',"data":' + data_json + b"}")
    assert body.startswith(b'{"type":"call.record","timestamp":"2025-07-01T20:54:53.000Z",')


def test_non_dict_mapping_is_accepted() -> None:
    proxied = MappingProxyType({"rid": 5, "call_timestamp": "2025-07-01 20:54:53"})
    assert build_body("acme", T0, proxied) == build_body("acme", T0, dict(proxied))


# -- issue 8 #9: NaN and infinities are never serialised -------------------------------------------


@pytest.mark.parametrize(
    "record",
    [
        {**RECORD, "dur": float("inf")},
        {**RECORD, "dur": float("-inf")},
        {**RECORD, "nested": {"deep": [1, float("nan")]}},
        # A 20-digit integer sends the record through the standard library, which wrote Infinity.
        {**RECORD, "uniqueid": 12345678901234567890123, "dur": float("inf")},
    ],
    ids=["inf", "-inf", "nested-nan", "with-big-int"],
)
def test_non_finite_numbers_are_refused_not_serialised(record: dict[str, Any]) -> None:
    from relay.core.errors import NonFiniteNumber

    with pytest.raises(NonFiniteNumber):
        build_body("acme", T0, record)


@pytest.mark.parametrize(
    "record",
    [
        {**RECORD, "dur": None, "x": [None, 1.5e308, -0.0, 5e-324]},
        {**RECORD, "uniqueid": 12345678901234567890123, "dur": None},
        {**RECORD, "note": "NaN Infinity null"},
    ],
    ids=["nulls-and-extremes", "big-int-and-null", "words"],
)
def test_finite_records_with_nulls_still_serialise(record: dict[str, Any]) -> None:
    body = build_body("acme", T0, record)
    assert json.loads(body, parse_constant=_no_constants)["data"] == record


def _no_constants(name: str) -> Any:
    raise AssertionError(f"{name} in a webhook body")
