"""What a subscriber receives and how it is signed: the checks behind ``secret``, ``filter``,
``format`` and ``template`` (issue 10), kept apart from the schema so that it stays readable.

Each check returns ``(key path below the subscriber, message)`` problems rather than raising, so
the schema can report them through its one-line-per-problem path; none quotes a key or a value.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from zoneinfo import ZoneInfo

from pydantic import SecretStr

from relay.config.file import Loc
from relay.core.errors import FilterSpecError, TemplateCompileError
from relay.core.filters import MATCH_ALL, Filter, compile_filter
from relay.core.formats import FormatSpec, compile_format
from relay.core.keys import PRIVATE_PREFIX, SigningKey, parse_signing_key

Problems = list[tuple[Loc, str]]

_WHSEC_PROBLEM = "must be whsec_ followed by base64 (24-64 bytes)"


def secret_before(value: object) -> object:
    """``secret`` is one key or a list of keys (newest first); anything else is refused here
    with one plain message rather than pydantic's per-union-member errors."""
    if isinstance(value, str | SecretStr):
        return value
    if isinstance(value, list) and all(isinstance(v, str | SecretStr) for v in value):
        return value
    raise ValueError("must be a key (whsec_… or whsk_…) or a list of keys, newest first")


def secret_texts(secret: SecretStr | Sequence[SecretStr]) -> list[str]:
    """The configured key strings, newest first (for signing and for log redaction)."""
    if isinstance(secret, SecretStr):
        return [secret.get_secret_value()]
    return [s.get_secret_value() for s in secret]


def secret_problems(secret: SecretStr | Sequence[SecretStr]) -> Problems:
    """Every bad key of ``secret``, at ``()`` for a single key or ``(i,)`` in a list."""
    texts = secret_texts(secret)
    if not texts:
        return [((), "must not be empty")]
    at = (lambda i: ()) if isinstance(secret, SecretStr) else (lambda i: (i,))
    problems: Problems = []
    for i, text in enumerate(texts):
        message = _key_problem(text)
        if message is not None:
            problems.append((at(i), message))
    return problems


def signing_keys(secret: SecretStr | Sequence[SecretStr]) -> tuple[SigningKey, ...]:
    """The decoded keys (call only after :func:`secret_problems` found none)."""
    return tuple(parse_signing_key(text) for text in secret_texts(secret))


def _key_problem(text: str) -> str | None:
    if text.strip().startswith(PRIVATE_PREFIX):
        try:
            parse_signing_key(text)
        except ValueError as exc:
            return str(exc)  # keys' messages never quote the key
        return None
    # Standard Webhooks: "whsec_" + base64 of the HMAC key. Decoded now so a truncated paste
    # fails at start-up, not as signatures every receiver rejects.
    try:
        key = base64.b64decode(text.removeprefix("whsec_"), validate=True)
    except (binascii.Error, ValueError):
        key = b""
    if not text.startswith("whsec_") or not 24 <= len(key) <= 64:
        return _WHSEC_PROBLEM
    return None


def filter_problems(spec: object) -> Problems:
    """The problems of a ``filter`` (``(("disposition",), "unknown operator $neq")``)."""
    try:
        compile_filter(spec, "filter")
    except FilterSpecError as exc:
        return [_below("filter", problem) for problem in exc.problems]
    return []


def compiled_filter(spec: object) -> Filter:
    """The compiled ``filter`` (call only after :func:`filter_problems` found none)."""
    return MATCH_ALL if spec is None else compile_filter(spec, "filter")


def format_problems(
    name: str, template: str | None, tz: ZoneInfo | None, region: str | None
) -> tuple[FormatSpec | None, Problems]:
    """Compile ``format``/``template`` (test-rendering a template against the sample record),
    returning the spec or its one problem (``(("template",), "line 3: unexpected '}'")``)."""
    try:
        return compile_format(name, template, "subscriber", tz=tz, region=region), []
    except TemplateCompileError as exc:
        return None, [_below("subscriber", str(exc))]


def _below(prefix: str, problem: str) -> tuple[Loc, str]:
    """Split ``"<prefix>.a.b[1]: message"`` into ``(("a.b[1]",), "message")``. Rendering the
    path back (``render_loc``) gives the same text, whatever the keys contain."""
    where, _, message = problem.partition(": ")
    rest = where.removeprefix(prefix).removeprefix(".")
    loc: Loc = (rest,) if rest else ()
    return loc, message
