"""One subscriber's settings: where it is, how it is signed, which calls it wants (filter), in
what shape (format, template), at what pace, and its retries."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import (
    BeforeValidator,
    Field,
    PrivateAttr,
    SecretStr,
    field_validator,
    model_validator,
)

from relay.config import payload
from relay.config.base import (
    _HEADER_TOKEN,
    _RESERVED_HEADERS,
    HttpUrl,
    Name,
    _lower,
    _Problems,
    _Section,
)
from relay.config.durations import PositiveDuration
from relay.config.file import Loc
from relay.config.pace import (
    CircuitSettings,
    Ordering,
    SubscriberRateLimit,
    preset_for,
    rate_limit_or_none,
)
from relay.core.filters import MATCH_ALL, Filter
from relay.core.formats import ENVELOPE, FormatName, FormatSpec
from relay.core.keys import SigningKey


class SubscriberSettings(_Section):
    """One webhook receiver: where to POST, how to sign, and how hard to retry."""

    name: Name
    url: HttpUrl
    # One key or a list, newest first (issue 10): whsec_ (HMAC, v1) and whsk_ (ed25519, v1a).
    secret: Annotated[SecretStr | list[SecretStr], BeforeValidator(payload.secret_before)]
    filter: Any = None  # a filter spec (relay.core.filters); compiled below
    format: Annotated[FormatName, BeforeValidator(_lower)] = "envelope"
    template: str | None = None
    accounts: Annotated[list[str], Field(min_length=1)] | None = None
    # repr=False: values are often credentials (n8n header auth) and must not reach a log line.
    headers: dict[str, str] = Field(default_factory=dict, repr=False)
    timeout: PositiveDuration = 15.0
    max_in_flight: int = Field(default=4, ge=1, le=256)
    retry: list[PositiveDuration] = Field(
        default_factory=lambda: [5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0],
        min_length=1,
    )
    retry_on_4xx: bool = True
    max_retry_after: PositiveDuration = 3600.0
    enabled: bool = True
    # None: the preset for the URL's host, if any (relay.config.pace); "none": no limit.
    rate_limit: Annotated[SubscriberRateLimit | None, BeforeValidator(rate_limit_or_none)] = None
    circuit: CircuitSettings = Field(default_factory=CircuitSettings)
    ordering: Annotated[Ordering, BeforeValidator(_lower)] = "parallel"

    def pace(self) -> SubscriberRateLimit | None:
        """The rate limit in force: the configured one, else the host's preset, else None."""
        if self.rate_limit is None:
            return preset_for(self.url)
        return None if self.rate_limit.requests == 0 else self.rate_limit

    _keys: tuple[SigningKey, ...] = PrivateAttr(default=())
    _filter: Filter = PrivateAttr(default=MATCH_ALL)
    _format: FormatSpec = PrivateAttr(default=ENVELOPE)

    @field_validator("secret")
    @classmethod
    def _check_secret(cls, secret: SecretStr | list[SecretStr]) -> SecretStr | list[SecretStr]:
        if problems := payload.secret_problems(secret):
            raise _Problems(problems)
        return secret

    @field_validator("filter")
    @classmethod
    def _check_filter(cls, spec: Any) -> Any:
        if problems := payload.filter_problems(spec):
            raise _Problems(problems)
        return spec

    @model_validator(mode="after")
    def _compile(self) -> SubscriberSettings:
        # Kept compiled beside the settings. A template is compiled here with UTC and no phone
        # region (so a subscriber built on its own is complete) and again by Settings with the
        # upstream's time zone and region.
        spec, problems = payload.format_problems(self.format, self.template, None, None)
        if problems:
            raise _Problems(problems)
        assert spec is not None
        self._format = spec
        self._filter = payload.compiled_filter(self.filter)
        self._keys = payload.signing_keys(self.secret)
        return self

    @property
    def signing_keys(self) -> tuple[SigningKey, ...]:
        """The decoded ``secret`` keys, newest first: every one signs every delivery."""
        return self._keys

    @property
    def compiled_filter(self) -> Filter:
        """The compiled ``filter`` (``MATCH_ALL`` without one)."""
        return self._filter

    @property
    def format_spec(self) -> FormatSpec:
        """The compiled ``format`` (and ``template``)."""
        return self._format

    @field_validator("headers")
    @classmethod
    def _check_headers(cls, headers: dict[str, str]) -> dict[str, str]:
        problems: list[tuple[Loc, str]] = []
        seen: set[str] = set()
        for number, (name, value) in enumerate(headers.items(), start=1):
            # An invalid name is not echoed: "Authorization: Bearer …" pasted as a key is a
            # realistic mistake, and it would put the credential in the message.
            if not _HEADER_TOKEN.fullmatch(name):
                problems.append(((), f"header #{number} has a name that is not a valid HTTP token"))
                continue
            if name.lower() in _RESERVED_HEADERS:
                problems.append(((name,), "is set by the relay and cannot be configured"))
            elif name.lower() in seen:
                problems.append(((name,), "duplicate header (names are case-insensitive)"))
            seen.add(name.lower())
            if re.search(r"[\r\n\x00]", value):
                problems.append(((name,), "value must not contain line breaks"))
        if problems:
            raise _Problems(problems)
        return headers
