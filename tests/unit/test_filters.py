"""Filters: validation messages, match semantics table, and a property test against a naive
predicate written independently of the compiler."""

from __future__ import annotations

import datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.core.errors import RelayError
from relay.core.filters import MATCH_ALL, FilterSpecError, compile_filter

QUOTE = "quote dates and times"
REC: dict[str, Any] = {
    "rid": 211159,
    "direction": "INCOMING",
    "disposition": "NO ANSWER",
    "cidname_outside": "José & <Co>",
    "duration": 25,
    "billsec": 0,
    "queue": "",
    "recording": None,
    "tags": ["vip", "new"],
    "meta": {"crm": {"id": 7}, "flag": True},
}
VIEW: dict[str, Any] = {
    "direction": "inbound",
    "missed": True,
    "answered": False,
    "caller": {"number": "+12125550100", "extension": None},
    "start_ms": 1751417693000,
}


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({}, True),
        ({"direction": "INCOMING"}, True),
        ({"direction": "OUTGOING"}, False),
        ({"direction": "INCOMING", "disposition": {"$ne": "ANSWERED"}}, True),
        ({"disposition": {"$ne": "NO ANSWER"}}, False),
        ({"absent": {"$ne": "x"}}, True),  # $ne matches a missing field
        ({"absent": "x"}, False),
        ({"absent": None}, True),  # null matches missing
        ({"recording": None}, True),
        ({"recording": {"$exists": True}}, True),  # present though null
        ({"absent": {"$exists": False}}, True),
        ({"absent": {"$exists": True}}, False),
        ({"recording": {"$ne": None}}, False),
        ({"duration": 25.0}, True),  # 25 == 25.0
        ({"duration": "25"}, False),  # no string/number coercion
        ({"meta.flag": 1}, False),  # true is not 1
        ({"meta.flag": True}, True),
        ({"billsec": False}, False),
        ({"duration": {"$gt": 20, "$lte": 25}}, True),
        ({"duration": {"$gt": "20"}}, False),  # number vs string: false, no error
        ({"cidname_outside": {"$gt": 5}}, False),
        ({"cidname_outside": {"$gte": "José"}}, True),
        ({"absent": {"$lt": 5}}, False),
        ({"recording": {"$lt": 5}}, False),
        ({"disposition": {"$in": ["BUSY", "NO ANSWER"]}}, True),
        ({"disposition": {"$nin": ["BUSY", "NO ANSWER"]}}, False),
        ({"absent": {"$nin": ["a"]}}, True),
        ({"absent": {"$in": [None]}}, True),
        ({"cidname_outside": {"$startsWith": "José"}}, True),
        ({"duration": {"$startsWith": "2"}}, False),
        ({"meta.crm.id": 7}, True),
        ({"meta": {"crm": {"id": 7}}}, True),  # nested mapping is a nested path
        ({"meta.crm": {"id": 7}}, True),
        ({"meta.crm.id.deeper": 7}, False),
        ({"tags.0": "vip"}, True),
        ({"tags.5": "vip"}, False),
        ({"tags.x": "vip"}, False),
        ({"tags": ["vip", "new"]}, True),
        ({"tags": ["new", "vip"]}, False),
        ({"tags": "vip"}, False),  # no implicit any-element matching
        ({"call.missed": True}, True),
        ({"call": {"missed": True, "direction": "inbound"}}, True),
        ({"call.caller.number": {"$startsWith": "+1212"}}, True),
        ({"call.caller.extension": None}, True),
        ({"call.start_ms": {"$gte": 1751417693000}}, True),
        ({"call.nope": {"$exists": False}}, True),
        ({"$or": [{"queue": "Sales"}, {"call.missed": True}]}, True),
        ({"$or": [{"queue": "Sales"}, {"call.missed": False}]}, False),
        ({"$and": [{"rid": 211159}, {"duration": 25}]}, True),
        ({"$not": {"direction": "INCOMING"}}, False),
        ({"disposition": {"$not": {"$in": ["ANSWERED"]}}}, True),
        ({"disposition": {"$not": "NO ANSWER"}}, False),
        ({"absent": {"$not": {"$gt": 1}}}, True),
        ({"queue": ""}, True),
    ],
)
def test_matches(spec: dict[str, Any], expected: bool) -> None:
    assert compile_filter(spec).matches(REC, VIEW) is expected


@pytest.mark.parametrize(
    ("spec", "problems"),
    [
        (
            {"disposition": {"$neq": "ANSWERED"}},
            ["subscribers[2].filter.disposition: unknown operator $neq"],
        ),
        ({"$nor": []}, ["subscribers[2].filter.$nor: unknown operator $nor"]),
        ("direction", ["subscribers[2].filter: must be a mapping of field names to conditions"]),
        (
            {"a": {"$in": "x"}, "b": {"$gt": [1]}, "c": {"$exists": "yes"}},
            [
                "subscribers[2].filter.a.$in: $in needs a list",
                "subscribers[2].filter.b.$gt: $gt needs a number or a string",
                "subscribers[2].filter.c.$exists: $exists needs true or false",
            ],
        ),
        (
            {"a": {"$startsWith": 1}},
            ["subscribers[2].filter.a.$startsWith: $startsWith needs a string"],
        ),
        ({"$or": []}, ["subscribers[2].filter.$or: $or needs a non-empty list of filters"]),
        (
            {"$or": [{"q": 1}, {"q": {"$bad": 1}}]},
            ["subscribers[2].filter.$or[1].q: unknown operator $bad"],
        ),
        (
            {"$and": [3]},
            ["subscribers[2].filter.$and[0]: must be a mapping of field names to conditions"],
        ),
        (
            {"a": {"$eq": 1, "b": 2}},
            ["subscribers[2].filter.a: cannot mix operators and field names in one mapping"],
        ),
        ({"a..b": 1}, ["subscribers[2].filter.a..b: empty segment in field path"]),
        (
            {"day": datetime.date(2025, 7, 1)},
            ["subscribers[2].filter.day: must be a JSON value, not date (quote dates and times)"],
        ),
        (
            {"x": {"$in": [datetime.date(2025, 7, 1)]}},
            ["subscribers[2].filter.x.$in: list items must be JSON values (quote dates and times)"],
        ),
        (
            {"x": {"$eq": float("nan")}},
            [f"subscribers[2].filter.x.$eq: must be a JSON value, not float ({QUOTE})"],
        ),
        (
            {"x": {"$not": {"a": 1}}},
            ["subscribers[2].filter.x.$not: $not on a field takes operators or a plain value"],
        ),
        ({"x": {"$not": {"$neq": 1}}}, ["subscribers[2].filter.x.$not: unknown operator $neq"]),
        ({1: "a"}, ["subscribers[2].filter: field names must be non-empty strings, not 1"]),
    ],
)
def test_validation_problems(spec: Any, problems: list[str]) -> None:
    with pytest.raises(FilterSpecError) as caught:
        compile_filter(spec, "subscribers[2].filter")
    assert caught.value.problems == problems
    assert isinstance(caught.value, ValueError) and isinstance(caught.value, RelayError)


def test_none_is_match_all() -> None:
    assert compile_filter(None) is MATCH_ALL
    assert MATCH_ALL.matches({}, {})


def test_match_never_raises_on_hostile_records() -> None:
    deep: Any = "x"
    for _ in range(5000):
        deep = [deep]
    target: Any = "x"
    for _ in range(30):
        target = [target]
    f = compile_filter({"a": {"$eq": target}, "b": {"$gt": 1}})
    assert f.matches({"a": deep}, {}) is False
    too_deep: Any = [target] * 1
    for _ in range(5):
        too_deep = [too_deep]
    with pytest.raises(FilterSpecError, match="nested at most 32 deep"):
        compile_filter({"a": too_deep})
    for odd in (object(), float("nan"), b"bytes", {1: 2}, [None]):
        assert compile_filter({"a": {"$gt": 1}}).matches({"a": odd}, {}) is False
        assert compile_filter({"a": 1}).matches({"a": odd}, {}) is False


# --- property test against an independent, naive interpreter -------------------------------

FIELDS = ["a", "b", "c", "n.x", "call.missed", "call.dir"]
VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 3),
    st.sampled_from([0.0, 1.0, 2.5, -1.5]),
    st.sampled_from(["", "a", "ab", "b", "B", "é", "😀", "a&<b>"]),
    st.lists(st.integers(0, 2), max_size=2),
)
MISSING = object()


def naive_get(record: dict[str, Any], view: dict[str, Any], path: str) -> Any:
    parts = path.split(".")
    node: Any = view if parts[0] == "call" else record
    for p in parts[1:] if parts[0] == "call" else parts:
        if type(node) is dict and p in node:
            node = node[p]
        else:
            return MISSING
    return node


def naive_eq(a: Any, b: Any) -> bool:
    if b is None:
        return a is None or a is MISSING
    if type(a) is bool or type(b) is bool:
        return type(a) is bool and type(b) is bool and a == b
    if type(a) in (int, float) and type(b) in (int, float):
        return a == b
    if type(a) is list and type(b) is list:
        return len(a) == len(b) and all(naive_eq(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


def naive_op(op: str, arg: Any, v: Any) -> bool:
    num = lambda x: type(x) in (int, float)  # noqa: E731
    if op == "$eq":
        return naive_eq(v, arg)
    if op == "$ne":
        return not naive_eq(v, arg)
    if op == "$in":
        return any(naive_eq(v, x) for x in arg)
    if op == "$nin":
        return not any(naive_eq(v, x) for x in arg)
    if op == "$exists":
        return (v is not MISSING) == arg
    if op == "$startsWith":
        return type(v) is str and v.startswith(arg)
    if not ((num(v) and num(arg)) or (type(v) is str and type(arg) is str)):
        return False
    return {"$gt": v > arg, "$gte": v >= arg, "$lt": v < arg, "$lte": v <= arg}[op]


def naive(spec: dict[str, Any], record: dict[str, Any], view: dict[str, Any]) -> bool:
    for key, cond in spec.items():
        if key == "$and":
            ok = all(naive(s, record, view) for s in cond)
        elif key == "$or":
            ok = any(naive(s, record, view) for s in cond)
        elif key == "$not":
            ok = not naive(cond, record, view)
        else:
            v = naive_get(record, view, key)
            if type(cond) is dict and cond and all(k.startswith("$") for k in cond):
                ok = all(
                    (not naive_op("$eq", a, v) if type(a) is not dict else
                     not all(naive_op(o2, a2, v) for o2, a2 in a.items()))
                    if op == "$not" else naive_op(op, a, v)
                    for op, a in cond.items()
                )  # fmt: skip
            else:
                ok = naive_eq(v, cond)
        if not ok:
            return False
    return True


def _comparable(op: str, value: Any) -> Any:
    # Comparisons take a number or a string; anything else would be a config error.
    if op in ("$eq", "$ne") or (isinstance(value, int | float | str) and type(value) is not bool):
        return value
    return 0


def field_conditions() -> st.SearchStrategy[Any]:
    scalar_ops = st.sampled_from(["$eq", "$ne", "$gt", "$gte", "$lt", "$lte"])
    scalars = VALUES.filter(lambda v: type(v) is not list)
    ops = st.one_of(
        st.dictionaries(scalar_ops, scalars, min_size=1, max_size=2).map(
            lambda d: {k: _comparable(k, v) for k, v in d.items()}
        ),
        st.builds(lambda v: {"$in": v}, st.lists(VALUES, max_size=3)),
        st.builds(lambda v: {"$nin": v}, st.lists(VALUES, max_size=3)),
        st.builds(lambda v: {"$exists": v}, st.booleans()),
        st.builds(lambda v: {"$startsWith": v}, st.sampled_from(["", "a", "é"])),
    )
    return st.one_of(VALUES, ops, ops.map(lambda o: {"$not": o}))


def filters() -> st.SearchStrategy[dict[str, Any]]:
    leaf = st.dictionaries(st.sampled_from(FIELDS), field_conditions(), max_size=2)
    return st.recursive(
        leaf,
        lambda inner: st.one_of(
            st.builds(lambda xs: {"$and": xs}, st.lists(inner, min_size=1, max_size=3)),
            st.builds(lambda xs: {"$or": xs}, st.lists(inner, min_size=1, max_size=3)),
            st.builds(lambda x: {"$not": x}, inner),
        ),
        max_leaves=6,
    )


def _present(**fields: Any) -> dict[str, Any]:
    return {k: v for k, v in fields.items() if v is not MISSING}


def records() -> st.SearchStrategy[tuple[dict[str, Any], dict[str, Any]]]:
    maybe = st.one_of(st.just(MISSING), VALUES)

    def build(a: Any, b: Any, c: Any, nx: Any, missed: Any, d: Any) -> tuple[Any, Any]:
        nested = MISSING if nx is MISSING else {"x": nx}
        return _present(a=a, b=b, c=c, n=nested), _present(missed=missed, dir=d)

    return st.builds(build, maybe, maybe, maybe, maybe, maybe, maybe)


@settings(max_examples=300, deadline=None)
@given(filters(), st.lists(records(), min_size=1, max_size=25))
def test_filters_agree_with_naive_predicate(
    spec: dict[str, Any], stream: list[tuple[dict[str, Any], dict[str, Any]]]
) -> None:
    compiled = compile_filter(spec)
    for record, view in stream:
        assert compiled.matches(record, view) is naive(spec, record, view), (spec, record, view)
