"""Configuration: the settings schema and how a YAML file plus the environment becomes one.

Loading is four steps (see :func:`load_settings`): read the YAML file; expand ``${NAME}`` and
``${NAME:-default}`` references from the environment; let ``RELAY_*`` environment variables
override any key (``RELAY_UPSTREAM__POLL_INTERVAL=10s``; list-valued keys take JSON); validate.
Every problem becomes one line ``<key path>: <message>`` in a
:class:`~relay.core.errors.ConfigError`.

Messages never contain a configured value: API keys, webhook secrets and header values arrive
through the same strings as everything else, so no value is ever echoed back.
"""

from __future__ import annotations

import base64
import os
import re
from collections.abc import Mapping
from contextvars import ContextVar
from datetime import datetime
from typing import Annotated, Any, Literal
from urllib.parse import unquote, urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from relay.config import payload
from relay.config.admin import AdminSettings, SignInLimitSettings

# Re-exported: the sections live in their own modules, and callers import them from here.
from relay.config.base import (
    Name,
    _check_http_url,
    _check_region,
    _check_state,
    _drop_nulls,
    _lower,
    _Problems,
    _raise_duplicates,
    _Section,
    _upper,
)
from relay.config.cluster import ClusterSettings
from relay.config.durations import Duration, PollInterval, PositiveDuration, format_duration
from relay.config.file import Loc, expand_env_refs, read_yaml, render_loc
from relay.config.subscriber import SubscriberSettings
from relay.core.errors import ConfigError

# The sections that live in their own modules are re-exported: callers import them from here.
__all__ = [
    "AccountSettings",
    "AdminSettings",
    "DeliverySettings",
    "LogSettings",
    "RateLimitSettings",
    "Settings",
    "SignInLimitSettings",
    "SubscriberSettings",
    "UpstreamSettings",
    "load_settings",
    "url_secrets",
    "validation_problems",
]

_TIMESTAMP = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2}")
_TIMESTAMP_FORMAT = "%Y-%m-%d %H:%M:%S"


class AccountSettings(_Section):
    """One WebFones account to poll, with its API key."""

    name: Name
    api_key: SecretStr
    auth: Annotated[Literal["x-api-key", "bearer"], BeforeValidator(_lower)] = "x-api-key"

    @field_validator("api_key")
    @classmethod
    def _check_api_key(cls, key: SecretStr) -> SecretStr:
        value = key.get_secret_value()
        if not value:
            raise ValueError("must not be empty")
        # The key goes into an HTTP header; a stray newline from a YAML block scalar would too.
        if re.search(r"[\s\x00-\x1f\x7f]", value):
            raise ValueError("must not contain spaces or control characters")
        return key


class RateLimitSettings(_Section):
    """Client-side request budget per API key (the API allows 1000 per 15 minutes)."""

    requests: int = Field(default=900, ge=1)
    per: PositiveDuration = 900.0


DEFAULT_RECENT_WINDOW = 600.0


class UpstreamSettings(_Section):
    """Where and how the WebFones call-log API is polled."""

    base_url: str = "https://api.webfones.com:2343"
    timezone: str = "UTC"
    poll_interval: PollInterval = "auto"  # or seconds: relay.core.cadence
    # With poll_interval auto: all accounts of this instance together poll at most this often.
    auto_max_polls_per_second: float = Field(default=200.0, gt=0, le=100_000)
    lookback: PositiveDuration = 7200.0
    recent_window: PositiveDuration = DEFAULT_RECENT_WINDOW  # or lookback, if that is shorter
    sweep_interval: PositiveDuration = 300.0
    start_from: str = "now"
    rate_limit: RateLimitSettings = Field(default_factory=RateLimitSettings)
    timeout: PositiveDuration = 30.0
    max_response_bytes: int = Field(default=128 * 1024 * 1024, ge=1024)
    # A webhook body above this is quarantined, not delivered. The ceiling keeps one body within
    # what the store's shared body cache holds (relay.store.bodies.MAX_BYTES).
    max_record_bytes: int = Field(default=1024 * 1024, ge=1024, le=32 * 1024 * 1024)
    max_clock_skew: PositiveDuration = 3600.0
    # Default region for numbers written without +: WebFones is a North American PBX. "none"
    # turns guessing off (only +-written numbers become E.164).
    phone_region: Annotated[str | None, AfterValidator(_check_region)] = "US"
    accounts: list[AccountSettings] = Field(min_length=1)

    @field_validator("base_url")
    @classmethod
    def _check_base_url(cls, value: str) -> str:
        _check_http_url(value)
        parts = urlsplit(value)
        if parts.query or parts.fragment:
            raise ValueError("must be http(s) URL without a query or fragment")
        return value.rstrip("/")

    @field_validator("timezone")
    @classmethod
    def _check_timezone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError("unknown time zone") from None
        return value

    @field_validator("start_from")
    @classmethod
    def _check_start_from(cls, value: str) -> str:
        if value.strip().lower() == "now":
            return "now"
        try:
            if _TIMESTAMP.fullmatch(value):
                datetime.strptime(value, _TIMESTAMP_FORMAT)  # a real date and time?
                return value
        except ValueError:
            pass
        raise ValueError('must be "now" or a time like 2025-07-01 14:53:43 (YYYY-MM-DD HH:MM:SS)')

    @field_validator("accounts")
    @classmethod
    def _unique_accounts(cls, accounts: list[AccountSettings]) -> list[AccountSettings]:
        _raise_duplicates([a.name for a in accounts], "account")
        return accounts

    @model_validator(mode="after")
    def _check_windows(self) -> UpstreamSettings:
        # A default derived from another setting follows it: recent_window is "10m, or the whole
        # lookback if that is shorter". Only a recent_window the user wrote can be wrong here.
        if "recent_window" not in self.model_fields_set:
            # Frozen model, and this runs inside its own validation: set the field directly.
            object.__setattr__(self, "recent_window", min(DEFAULT_RECENT_WINDOW, self.lookback))
        elif self.recent_window > self.lookback:
            limit = format_duration(self.lookback)
            raise _Problems([(("recent_window",), f"must not exceed lookback ({limit})")])
        return self


class DeliverySettings(_Section):
    """How deliveries are claimed, leased and kept."""

    grace_period: Duration = 10.0
    lease_margin: PositiveDuration = 30.0
    response_cap: int = Field(default=4096, ge=0, le=1024 * 1024)
    retention: PositiveDuration = 7 * 86400.0
    dead_letter_retention: PositiveDuration = 30 * 86400.0
    quarantine_retention: PositiveDuration = 30 * 86400.0
    orphan_retention: PositiveDuration = 7 * 86400.0
    batch_size: int = Field(default=256, ge=1, le=10000)


class LogSettings(_Section):
    """Log level and output format."""

    level: Annotated[Literal["DEBUG", "INFO", "WARNING", "ERROR"], BeforeValidator(_upper)] = "INFO"
    format: Annotated[Literal["text", "json"], BeforeValidator(_lower)] = "text"


# Which environment the RELAY_* overrides come from. load_settings sets it for one call so tests
# can pass a dict; direct Settings(...) construction reads os.environ, as pydantic-settings does.
_ENVIRON: ContextVar[Mapping[str, str] | None] = ContextVar("relay_config_environ", default=None)


class _EnvSource(EnvSettingsSource):
    """pydantic-settings' own env source (prefix, ``__`` nesting, JSON lists) over any mapping."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        self._environ = environ  # set first: the base __init__ calls _load_env_vars
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        # Names are matched case-insensitively (case_sensitive=False), i.e. lower-cased.
        return {name.lower(): value for name, value in self._environ.items()}


_AccountIndex = tuple[
    list[tuple[int, SubscriberSettings]], dict[str, list[tuple[int, SubscriberSettings]]]
]


def _subscribers_by_account(subscribers: list[SubscriberSettings]) -> _AccountIndex:
    everyone: list[tuple[int, SubscriberSettings]] = []
    named: dict[str, list[tuple[int, SubscriberSettings]]] = {}
    for i, sub in enumerate(subscribers):
        if not sub.enabled:
            continue
        if sub.accounts is None:
            everyone.append((i, sub))
            continue
        for account in dict.fromkeys(sub.accounts):
            named.setdefault(account, []).append((i, sub))
    return everyone, named


class Settings(BaseSettings):
    """The whole relay configuration. Build it with :func:`load_settings`."""

    model_config = SettingsConfigDict(
        env_prefix="RELAY_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
        case_sensitive=False,
    )

    state: Annotated[str, AfterValidator(_check_state)] = "./relay-state.db"
    upstream: UpstreamSettings
    subscribers: list[SubscriberSettings] = Field(default_factory=list)
    delivery: DeliverySettings = Field(default_factory=DeliverySettings)
    admin: AdminSettings = Field(default_factory=AdminSettings)
    log: LogSettings = Field(default_factory=LogSettings)
    cluster: ClusterSettings = Field(default_factory=ClusterSettings)
    # subscribers_for's index: (position, subscriber) for all-account subscribers, and by name.
    _by_account: _AccountIndex | None = PrivateAttr(default=None)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Environment beats the YAML file (passed in as init kwargs). No .env files or secrets
        # directories: one documented way in, so nobody wonders where a value came from.
        environ = _ENVIRON.get()
        return _EnvSource(settings_cls, os.environ if environ is None else environ), init_settings

    @model_validator(mode="before")
    @classmethod
    def _sections(cls, data: object) -> object:
        data = _drop_nulls(cls, data)
        # Without an upstream section the useful message is what is missing inside it.
        if isinstance(data, dict) and "upstream" not in data:
            data = {**data, "upstream": {}}
        return data

    @field_validator("subscribers")
    @classmethod
    def _unique_subscribers(cls, subscribers: list[SubscriberSettings]) -> list[SubscriberSettings]:
        _raise_duplicates([s.name for s in subscribers], "subscriber")
        return subscribers

    @model_validator(mode="after")
    def _known_accounts(self) -> Settings:
        known = {a.name for a in self.upstream.accounts}
        problems: list[tuple[Loc, str]] = [
            (("subscribers", index, "accounts"), f"unknown account '{name}'")
            for index, sub in enumerate(self.subscribers)
            for name in sub.accounts or []
            if name not in known
        ]
        if problems:
            raise _Problems(problems)
        return self

    @model_validator(mode="after")
    def _compile_templates(self) -> Settings:
        # Templates read times in the upstream zone and numbers in its region: compile (and
        # test-render) them again with those.
        tz, region = ZoneInfo(self.upstream.timezone), self.upstream.phone_region
        problems: list[tuple[Loc, str]] = []
        for index, sub in enumerate(self.subscribers):
            if sub.format == "template":
                spec, found = payload.format_problems(sub.format, sub.template, tz, region)
                problems += [(("subscribers", index, *loc), msg) for loc, msg in found]
                if spec is not None:
                    sub._format = spec
        if problems:
            raise _Problems(problems)
        return self

    def subscribers_for(self, account: str) -> list[SubscriberSettings]:
        """The enabled subscribers that receive ``account``'s records (in config order)."""
        if self._by_account is None:
            # Built once, on first use: asked for each of N accounts, a scan of N subscribers
            # each made start-up quadratic (half a minute at 10,000 + 10,000).
            self._by_account = _subscribers_by_account(self.subscribers)
        everyone, named = self._by_account
        return [s for _, s in sorted(everyone + named.get(account, []), key=lambda p: p[0])]

    def secret_values(self) -> list[str]:
        """Every secret string in the config, for log redaction and leak tests.

        Besides the values configured as secrets: each signing key without its ``whsec_`` /
        ``whsk_`` prefix, the password of every URL (state, upstream, subscribers) as written and
        percent-decoded, and the Basic-auth token a URL's credentials become on the wire.
        """
        values = [a.api_key.get_secret_value() for a in self.upstream.accounts]
        for sub in self.subscribers:
            for key in payload.secret_texts(sub.secret):  # every key of a rotation list
                values += [key, key.removeprefix("whsec_").removeprefix("whsk_")]
            values.extend(sub.headers.values())
            values.extend(url_secrets(sub.url))
        if self.admin.token is not None:
            values.append(self.admin.token.get_secret_value())
        values.extend(url_secrets(self.upstream.base_url))
        if "://" in self.state:
            values.extend(url_secrets(self.state))
        return [v for v in dict.fromkeys(values) if v]


def url_secrets(url: str) -> list[str]:
    """The secret parts of a URL: its password (as written and decoded) and the Basic-auth
    token ``base64(user:password)`` that a client sends for it. Empty without credentials."""
    try:
        parts = urlsplit(url)
        username, password = parts.username, parts.password
    except ValueError:
        return []
    if password is None:
        return []
    userinfo = f"{unquote(username or '')}:{unquote(password)}"
    token = base64.b64encode(userinfo.encode("utf-8")).decode("ascii")
    return [password, unquote(password), token]


# -- loading ------------------------------------------------------------------------------------


def load_settings(
    path: str | os.PathLike[str] | None, environ: Mapping[str, str] | None = None
) -> Settings:
    """Read, expand, override and validate the configuration; raise ConfigError if it is wrong.

    ``path`` None means no file: everything comes from ``RELAY_*`` variables and defaults.
    ``environ`` defaults to ``os.environ``; it feeds both ``${NAME}`` references and overrides
    (``RELAY_*`` values are taken literally, not expanded).
    """
    environ = os.environ if environ is None else environ
    raw: dict[str, Any] = {} if path is None else read_yaml(path)
    data, problems = expand_env_refs(raw, environ)
    # str(): a YAML key such as `1:` must be reported, not break the ** call. Keys starting with
    # "_" would reach BaseSettings' own options (_cli_parse_args, _build_sources…), not fields.
    data = {str(key): value for key, value in data.items()}
    problems += [f"{key}: unknown key" for key in data if key.startswith("_")]
    if problems:
        raise ConfigError(problems)
    token = _ENVIRON.set(environ)
    try:
        return Settings(**data)
    # "from None": pydantic's own text quotes input values, which may be secrets; it must not
    # ride along in a traceback as __context__.
    except ValidationError as exc:
        raise ConfigError(validation_problems(exc)) from None
    except SettingsError as exc:
        field = re.search(r'field "(\w+)"', str(exc))
        name = field[1] if field else "settings"
        raise ConfigError([f"{name}: a RELAY_{name.upper()} override is not valid JSON"]) from None
    finally:
        _ENVIRON.reset(token)


# Pydantic error types whose stock message is worth replacing with a plainer one.
_MESSAGES = {
    "missing": "required",
    "too_short": "must not be empty",
    "extra_forbidden": "unknown key",
    "model_type": "must be a mapping",
    "model_attributes_type": "must be a mapping",
    "dict_type": "must be a mapping",
    "list_type": "must be a list",
    "string_type": "must be a string",
    "bool_type": "must be true or false",
    "bool_parsing": "must be true or false",
    "int_type": "must be a whole number",
    "int_parsing": "must be a whole number",
    "int_from_float": "must be a whole number",
    "float_type": "must be a number",
    "float_parsing": "must be a number",
}


def validation_problems(exc: ValidationError) -> list[str]:
    """One ``<key path>: <message>`` line per error, built without ever looking at the input."""
    lines: list[str] = []
    for error in exc.errors(include_input=False, include_url=False):
        loc = tuple(error["loc"])
        cause = error.get("ctx", {}).get("error")
        if isinstance(cause, _Problems):
            lines.extend(_line((*loc, *sub), message) for sub, message in cause.problems)
        else:
            lines.append(_line(loc, _message(error["type"], error["msg"])))
    return lines


def _message(kind: str, msg: str) -> str:
    if kind in _MESSAGES:
        return _MESSAGES[kind]
    for prefix in ("Value error, ", "Assertion failed, "):
        msg = msg.removeprefix(prefix)
    if msg.startswith("Input should be "):
        msg = "must be " + msg.removeprefix("Input should be ")
    return msg


def _line(loc: Loc, message: str) -> str:
    return f"{render_loc(loc) or 'config'}: {' '.join(message.split())}"
