"""What every settings section shares: the base model, name and URL checks, the one-line
problems a validator raises, and duplicate-name checks."""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated
from urllib.parse import urlsplit

import phonenumbers
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    model_validator,
)

from relay.config.file import Loc, render_loc

_NAME = re.compile(r"[A-Za-z0-9_.-]+")
_HEADER_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 "token"
# Set by the relay on every delivery; a static header must not replace or duplicate them.
# transfer-encoding and connection are added because they would corrupt the HTTP framing.
_RESERVED_HEADERS = frozenset(
    {
        "content-type",
        "webhook-id",
        "webhook-timestamp",
        "webhook-signature",
        "user-agent",
        "host",
        "content-length",
        "transfer-encoding",
        "connection",
    }
)


class _Problems(ValueError):
    """Several problems found by one validator, each at a path below the model that raised it.

    Pydantic gives a validator's error the validator's own location; cross-field checks know
    better (``subscribers[2].accounts``), so the renderer appends these paths.
    """

    def __init__(self, problems: list[tuple[Loc, str]]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{render_loc(loc)}: {msg}" for loc, msg in problems))


# -- small validators ---------------------------------------------------------------------------


def _check_name(value: str) -> str:
    if not value:
        raise ValueError("must not be empty")
    if not _NAME.fullmatch(value):
        raise ValueError("must contain only letters, digits, '_', '.' and '-'")
    return value


def _check_http_url(value: str) -> str:
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        raise ValueError("must be http(s) URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname or re.search(r"\s", value):
        raise ValueError("must be http(s) URL")
    return value


def _check_state(value: str) -> str:
    if not value.strip():
        raise ValueError("must not be empty")
    scheme, sep, rest = value.partition("://")
    if not sep:
        return value  # a plain file path
    scheme = scheme.lower()
    if scheme == "sqlite" and rest.startswith("/") and len(rest) > 1:
        return value
    if scheme in ("postgres", "postgresql") and rest:
        return value
    raise ValueError("must be a file path, sqlite:///path or a postgresql:// URL")


def _check_region(value: str | None) -> str | None:
    if value is None or value.strip().lower() == "none":
        return None
    if value.strip().upper() not in phonenumbers.SUPPORTED_REGIONS:
        raise ValueError('must be a two-letter region code such as US or GB, or "none"')
    return value.strip().upper()


def _upper(value: object) -> object:
    return value.upper() if isinstance(value, str) else value


def _lower(value: object) -> object:
    return value.lower() if isinstance(value, str) else value


def _drop_nulls(model: type[BaseModel], data: object) -> object:
    """Treat ``key: null`` as absent unless None is the field's own default.

    An empty YAML section (``log:`` with every line commented out) reads as null; meaning "use
    the defaults" is kinder than "must be a mapping".
    """
    if not isinstance(data, dict):
        return data
    fields = model.model_fields
    # An unknown key stays, null or not, so that its typo is still reported.
    keep = {k for k, v in data.items() if v is not None or k not in fields}
    return {k: v for k, v in data.items() if k in keep or fields[k].default is None}


Name = Annotated[str, AfterValidator(_check_name)]
HttpUrl = Annotated[str, AfterValidator(_check_http_url)]


class _Section(BaseModel):
    """Base of every config section: immutable, and unknown keys are errors (typos surface)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _nulls_are_absent(cls, data: object) -> object:
        return _drop_nulls(cls, data)


# -- the schema ---------------------------------------------------------------------------------


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _is_loopback(host: str) -> bool:
    return host == "localhost" or (_is_ip(host) and ipaddress.ip_address(host).is_loopback)


def _raise_duplicates(names: list[str], what: str) -> None:
    seen: set[str] = set()
    problems: list[tuple[Loc, str]] = []
    for index, name in enumerate(names):
        if name in seen:
            problems.append(((index, "name"), f"duplicate {what} name '{name}'"))
        seen.add(name)
    if problems:
        raise _Problems(problems)
