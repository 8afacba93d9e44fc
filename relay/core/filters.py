"""Declarative subscriber filters in the operator style of Convoy and Outpost (pure, no I/O).

A filter is a mapping. Each key is a field path (or a logical operator) and every entry must
hold; for example a missed-calls channel::

    {direction: INCOMING, disposition: {$ne: ANSWERED}}
    {call.missed: true, call.caller.number: {$startsWith: "+1212"}}
    {$or: [{queue: Sales}, {queue: {$in: [Support, Billing]}}]}

Paths are dot-separated: ``call.<...>`` reads the call view (:mod:`relay.core.callview`), any
other path reads the upstream record; a segment of digits indexes a list (``tags.0``). A nested
mapping without operators is a nested path: ``{call: {missed: true}}`` is ``call.missed``.

Semantics, chosen to match MongoDB (which Convoy and Outpost follow) so users guess right:

- A plain value (or ``$eq``) is JSON equality: ``1 == 1.0``, but ``true`` is not ``1`` and
  ``"1"`` is not ``1``; lists and mappings compare element by element. ``null`` matches a
  field that is null *or missing*.
- ``$ne``, ``$nin`` and ``$not`` are the exact negations of ``$eq``, ``$in`` and their operand,
  so they match a missing field (``disposition: {$ne: ANSWERED}`` passes a record without one).
- ``$gt $gte $lt $lte`` compare numbers with numbers and strings with strings (by code point);
  any other pairing, or a missing field, is simply false -- never an error.
- ``$exists: true`` passes a present field even if it is null; ``$startsWith`` needs a string.
- A list field is a value like any other: there is no implicit "any element" matching.

:func:`compile_filter` validates everything up front and reports every problem with its key
(``subscribers[2].filter.disposition: unknown operator $neq``); :meth:`Filter.matches` then
never raises, whatever the record holds.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from relay.core.errors import FilterSpecError

__all__ = ["MATCH_ALL", "Filter", "FilterSpecError", "compile_filter"]

Predicate = Callable[[Mapping[str, Any], Mapping[str, Any]], bool]
_Getter = Callable[[Mapping[str, Any], Mapping[str, Any]], Any]

VIEW_PREFIX = "call"
_MAX_DEPTH = 32
_MISSING: Any = object()
_LOGICAL = frozenset({"$and", "$or", "$not"})
_COMPARISONS = frozenset({"$gt", "$gte", "$lt", "$lte"})
_FIELD_OPERATORS = frozenset(
    {"$eq", "$ne", "$in", "$nin", "$exists", "$startsWith", "$not", *_COMPARISONS}
)


@dataclass(frozen=True, slots=True)
class Filter:
    """A compiled filter; ``spec`` is what it was compiled from (for ``--explain`` output)."""

    spec: Mapping[str, Any] | None
    _predicate: Predicate = field(repr=False, compare=False)

    def matches(self, record: Mapping[str, Any], view: Mapping[str, Any]) -> bool:
        """Does ``record`` (with its call view as a dict) pass? Never raises for any record."""
        try:
            return self._predicate(record, view)
        except RecursionError:
            # A pathologically deep record compared against a deep operand: no match, no crash.
            return False


MATCH_ALL = Filter(None, lambda record, view: True)


def compile_filter(spec: object, path: str = "filter") -> Filter:
    """Validate and compile ``spec`` (a mapping, or ``None`` for "every record").

    Raises :class:`FilterSpecError` listing every problem found, each prefixed with its key
    under ``path`` (e.g. ``subscribers[0].filter.$or[1].queue: $in needs a list``).
    """
    if spec is None:
        return MATCH_ALL
    problems: list[str] = []
    predicate = _document(spec, (), path, problems)
    if problems:
        raise FilterSpecError(problems)
    assert isinstance(spec, Mapping)  # _document reported anything else as a problem
    return Filter(spec, predicate)


# --- compilation ----------------------------------------------------------------------------


def _document(spec: object, prefix: tuple[str, ...], path: str, problems: list[str]) -> Predicate:
    if not isinstance(spec, Mapping):
        problems.append(f"{path}: must be a mapping of field names to conditions")
        return _never
    parts: list[Predicate] = []
    for key, condition in spec.items():
        key_path = f"{path}.{key}"
        if not isinstance(key, str) or not key:
            problems.append(f"{path}: field names must be non-empty strings, not {key!r}")
        elif key in _LOGICAL:
            parts.append(_logical(key, condition, prefix, key_path, problems))
        elif key.startswith("$"):
            problems.append(f"{key_path}: unknown operator {key}")
        else:
            segments = tuple(key.split("."))
            if "" in segments:
                problems.append(f"{key_path}: empty segment in field path")
                continue
            parts.append(_condition(condition, prefix + segments, key_path, problems))
    return _all(parts)


def _logical(
    op: str, operand: object, prefix: tuple[str, ...], path: str, problems: list[str]
) -> Predicate:
    if op == "$not":
        inner = _document(operand, prefix, path, problems)
        return lambda record, view: not inner(record, view)
    if not isinstance(operand, list) or not operand:
        problems.append(f"{path}: {op} needs a non-empty list of filters")
        return _never
    parts = [_document(item, prefix, f"{path}[{i}]", problems) for i, item in enumerate(operand)]
    return _all(parts) if op == "$and" else _any(parts)


def _condition(
    condition: object, segments: tuple[str, ...], path: str, problems: list[str]
) -> Predicate:
    if isinstance(condition, Mapping) and condition:
        keys = [k for k in condition if isinstance(k, str)]
        operators = [k for k in keys if k.startswith("$")]
        if operators and len(operators) != len(condition):
            problems.append(f"{path}: cannot mix operators and field names in one mapping")
            return _never
        if not operators:
            return _document(condition, segments, path, problems)  # a nested path
        get = _getter(segments)
        parts = [_operator(op, arg, get, f"{path}.{op}", problems) for op, arg in condition.items()]
        return _all(parts)
    if not _is_json(condition):
        problems.append(f"{path}: {_json_hint(condition)}")
        return _never
    return _equals(_getter(segments), condition)


def _operator(op: str, arg: object, get: _Getter, path: str, problems: list[str]) -> Predicate:
    bad = len(problems)
    if op not in _FIELD_OPERATORS:
        problems.append(f"{path.rpartition('.')[0]}: unknown operator {op}")
    elif op == "$not":
        inner = _not_operand(arg, get, path, problems)
        return lambda record, view: not inner(record, view)
    elif op in ("$in", "$nin"):
        if not isinstance(arg, list):
            problems.append(f"{path}: {op} needs a list")
        elif not all(_is_json(item) for item in arg):
            problems.append(f"{path}: list items must be JSON values (quote dates and times)")
    elif op in _COMPARISONS:
        if not (_is_number(arg) or isinstance(arg, str)):
            problems.append(f"{path}: {op} needs a number or a string")
    elif op == "$exists":
        if not isinstance(arg, bool):
            problems.append(f"{path}: $exists needs true or false")
    elif op == "$startsWith":
        if not isinstance(arg, str):
            problems.append(f"{path}: $startsWith needs a string")
    elif not _is_json(arg):
        problems.append(f"{path}: {_json_hint(arg)}")
    if len(problems) > bad:
        return _never
    return _build(op, arg, get)


def _not_operand(arg: object, get: _Getter, path: str, problems: list[str]) -> Predicate:
    if isinstance(arg, Mapping) and arg and all(isinstance(k, str) and k[:1] == "$" for k in arg):
        return _all([_operator(op, a, get, f"{path}.{op}", problems) for op, a in arg.items()])
    if isinstance(arg, Mapping) and arg:
        problems.append(f"{path}: $not on a field takes operators or a plain value")
        return _never
    if not _is_json(arg):
        problems.append(f"{path}: {_json_hint(arg)}")
        return _never
    return _equals(get, arg)


def _build(op: str, arg: Any, get: _Getter) -> Predicate:
    if op == "$eq":
        return _equals(get, arg)
    if op == "$ne":
        eq = _equals(get, arg)
        return lambda record, view: not eq(record, view)
    if op in ("$in", "$nin"):
        options = [_equals(get, item) for item in arg]
        if op == "$in":
            return lambda record, view: any(o(record, view) for o in options)
        return lambda record, view: not any(o(record, view) for o in options)
    if op == "$exists":
        return lambda record, view: (get(record, view) is not _MISSING) is arg
    if op == "$startsWith":
        return lambda record, view: _starts_with(get(record, view), arg)
    compare = _ORDER[op]
    return lambda record, view: _ordered(get(record, view), arg, compare)


def _getter(segments: tuple[str, ...]) -> _Getter:
    if segments[0] == VIEW_PREFIX:
        rest = segments[1:]
        return lambda record, view: _walk(view, rest)
    return lambda record, view: _walk(record, segments)


def _equals(get: _Getter, expected: Any) -> Predicate:
    if expected is None:
        return lambda record, view: get(record, view) in (None, _MISSING)
    return lambda record, view: _json_equal(get(record, view), expected)


def _all(parts: list[Predicate]) -> Predicate:
    if len(parts) == 1:
        return parts[0]
    return lambda record, view: all(p(record, view) for p in parts)


def _any(parts: list[Predicate]) -> Predicate:
    return lambda record, view: any(p(record, view) for p in parts)


def _never(record: Mapping[str, Any], view: Mapping[str, Any]) -> bool:
    return False  # only in filters that failed validation, which are never returned


# --- evaluation -----------------------------------------------------------------------------


def _walk(value: Any, segments: tuple[str, ...]) -> Any:
    for segment in segments:
        if isinstance(value, Mapping):
            value = value.get(segment, _MISSING)
        elif isinstance(value, list) and segment.isdecimal() and segment.isascii():
            index = int(segment)
            value = value[index] if index < len(value) else _MISSING
        else:
            return _MISSING
        if value is _MISSING:
            return _MISSING
    return value


def _json_equal(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if _is_number(a) and _is_number(b):
        return bool(a == b)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_json_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(_json_equal(a[k], b[k]) for k in a)
    if a is _MISSING or b is _MISSING:
        return False
    return type(a) is type(b) and bool(a == b)


_ORDER: dict[str, Callable[[Any, Any], bool]] = {
    "$gt": lambda a, b: bool(a > b),
    "$gte": lambda a, b: bool(a >= b),
    "$lt": lambda a, b: bool(a < b),
    "$lte": lambda a, b: bool(a <= b),
}


def _ordered(value: Any, bound: Any, compare: Callable[[Any, Any], bool]) -> bool:
    if _is_number(value) and _is_number(bound):
        return compare(value, bound)
    if isinstance(value, str) and isinstance(bound, str):
        return compare(value, bound)
    return False


def _starts_with(value: Any, prefix: str) -> bool:
    return isinstance(value, str) and value.startswith(prefix)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_json(value: object, depth: int = 0) -> bool:
    # The depth bound keeps operands (and so every comparison at match time) shallow.
    if depth > _MAX_DEPTH:
        return False
    if value is None or isinstance(value, str | bool | int):
        return True
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, list):
        return all(_is_json(v, depth + 1) for v in value)
    if isinstance(value, Mapping):
        return all(isinstance(k, str) and _is_json(v, depth + 1) for k, v in value.items())
    return False


def _json_hint(value: object) -> str:
    # YAML reads an unquoted 2025-07-01 as a date; say so rather than "bad type date".
    if isinstance(value, list | Mapping):
        return f"must be a JSON value nested at most {_MAX_DEPTH} deep (quote dates and times)"
    return f"must be a JSON value, not {type(value).__name__} (quote dates and times)"
