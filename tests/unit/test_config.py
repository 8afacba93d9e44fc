"""Configuration: durations, loading, ${VAR} expansion, RELAY_* overrides, and error lines."""

from __future__ import annotations

import base64
import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import TypeAdapter, ValidationError

from relay.config.durations import Duration, PositiveDuration, format_duration, parse_duration
from relay.config.schema import (
    AdminSettings,
    Settings,
    SubscriberSettings,
    expand_env_refs,
    load_settings,
    render_loc,
)
from relay.core.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parents[2] / "config.example.yaml"

# Every secret used below carries LEAKCHECK (or is one of these exact strings), so a scan of any
# error text for these values proves that nothing secret was echoed.
KEY_MAIN = "wfk-LEAKCHECK-main-6a1f0c"
KEY_SALES = "wfk-LEAKCHECK-sales-93be27"
SECRET_ZAP = "whsec_" + base64.b64encode(b"LEAKCHECK-zapier-signing-key-32b").decode()
SECRET_CRM = "whsec_" + base64.b64encode(b"LEAKCHECK-crm-signing-key-24b").decode()
N8N_TOKEN = "n8n-LEAKCHECK-header-token"
ADMIN_TOKEN = "admin-LEAKCHECK-token-0b5d"
SECRETS = [KEY_MAIN, KEY_SALES, SECRET_ZAP, SECRET_CRM, N8N_TOKEN, ADMIN_TOKEN]

BASE: dict[str, Any] = {
    "upstream": {
        "accounts": [
            {"name": "main", "api_key": KEY_MAIN},
            {"name": "sales", "api_key": KEY_SALES},
        ]
    },
    "subscribers": [
        {"name": "zapier", "url": "https://hooks.example.com/catch/1/", "secret": SECRET_ZAP},
        {
            "name": "crm",
            "url": "https://crm.example.com/hook",
            "secret": SECRET_CRM,
            "accounts": ["sales"],
            "headers": {"X-Auth": N8N_TOKEN},
        },
    ],
    "admin": {"listen": "0.0.0.0:8081", "token": ADMIN_TOKEN},
}

POLL_PROBLEM = 'must be "auto" or a duration like 5s, 500ms, 1m'
DROP = object()  # a patch value meaning "remove this key"


def patched(*patches: tuple[str, object]) -> dict[str, Any]:
    """A deep copy of BASE with each ``("a.b.0.c", value)`` applied (DROP removes the key)."""
    doc = copy.deepcopy(BASE)
    for path, value in patches:
        *parents, last = [int(p) if p.isdigit() else p for p in path.split(".")]
        node: Any = doc
        for part in parents:
            node = node[part]
        if value is DROP:
            del node[last]
        else:
            node[last] = value
    return doc


def write(tmp_path: Path, doc: Mapping[str, Any] | str) -> Path:
    path = tmp_path / "config.yaml"
    text = doc if isinstance(doc, str) else yaml.safe_dump(dict(doc), sort_keys=False)
    path.write_text(text, encoding="utf-8")
    return path


def problems_of(path: Path | None, environ: Mapping[str, str] | None = None) -> list[str]:
    """Load expecting failure; check the error is clean, and return its problem lines."""
    with pytest.raises(ConfigError) as info:
        load_settings(path, environ or {})
    error = info.value
    assert str(error) == "; ".join(error.problems)
    # pydantic's own error text quotes input values; it must not ride along as the context.
    assert error.__cause__ is None
    assert error.__context__ is None or error.__suppress_context__
    for line in error.problems:
        assert "\n" not in line
    for text in [str(error), *error.problems]:
        assert "LEAKCHECK" not in text
        for secret in SECRETS:
            assert secret not in text
    return error.problems


# -- durations ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        (0, 0.0),
        (30, 30.0),
        (1.5, 1.5),
        ("90", 90.0),
        ("0", 0.0),
        ("30s", 30.0),
        ("15m", 900.0),
        ("2h", 7200.0),
        ("1d", 86400.0),
        ("500ms", 0.5),
        ("1.5h", 5400.0),
        (".5s", 0.5),
        (" 10s ", 10.0),
        ("10 s", 10.0),
    ],
)
def test_parse_duration_accepts(value: object, seconds: float) -> None:
    assert parse_duration(value) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "value",
    [
        -1,
        -0.5,
        True,
        False,
        None,
        float("nan"),
        float("inf"),
        "",
        "   ",
        "s",
        "abc",
        "-5s",
        "10x",
        "5 mins",
        "1h30m",
        "1M",
        "1.",
        "1e3",
        "nan",
        "inf",
        "\u0663s",  # ARABIC-INDIC DIGIT THREE: \d would match it, float() would accept it
        [30],
        {"s": 30},
    ],
)
def test_parse_duration_rejects(value: object) -> None:
    with pytest.raises(ValueError, match=r"^must be a duration like 30s, 15m, 2h$"):
        parse_duration(value)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (0.5, "500ms"),
        (1.25, "1250ms"),
        (0.0005, "0.0005s"),
        (1, "1s"),
        (90, "90s"),
        (60, "1m"),
        (5400, "90m"),
        (7200, "2h"),
        (86400, "1d"),
        (7 * 86400, "7d"),
        (-30, "-30s"),
    ],
)
def test_format_duration(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
    if seconds >= 0:
        assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("kind", "value", "ok"),
    [
        (Duration, 0, True),
        (Duration, "0s", True),
        (PositiveDuration, "1ms", True),
        (PositiveDuration, 0, False),
        (PositiveDuration, "0s", False),
        (PositiveDuration, "-1s", False),
    ],
)
def test_duration_types(kind: Any, value: object, ok: bool) -> None:
    adapter: TypeAdapter[float] = TypeAdapter(kind)
    if ok:
        assert adapter.validate_python(value) == parse_duration(value)
    else:
        with pytest.raises(ValidationError):
            adapter.validate_python(value)


# -- a valid configuration ----------------------------------------------------------------------

FULL = f"""
state: sqlite:///var/lib/relay/state.db
upstream:
  base_url: https://api.example.net:2343/
  timezone: America/Chicago
  poll_interval: 10s
  lookback: 3h
  recent_window: 15m
  sweep_interval: 10m
  start_from: 2025-07-01 14:53:43
  rate_limit: {{requests: 500, per: 10m}}
  timeout: 20s
  max_response_bytes: 1048576
  max_clock_skew: 30m
  accounts:
    - {{name: main, api_key: "{KEY_MAIN}", auth: bearer}}
    - {{name: sales, api_key: "{KEY_SALES}"}}
subscribers:
  - name: crm
    url: http://crm.internal:8080/hook?x=1
    secret: "{SECRET_CRM}"
    accounts: [sales]
    headers: {{X-Auth: "{N8N_TOKEN}"}}
    timeout: 5s
    max_in_flight: 16
    retry: [1s, 1m, 1h]
    retry_on_4xx: false
    max_retry_after: 10m
    enabled: true
  - name: off
    url: https://off.example.com/
    secret: "{SECRET_ZAP}"
    enabled: false
delivery: {{grace_period: 0, lease_margin: 1m, response_cap: 0, retention: 1d, batch_size: 10}}
admin: {{listen: "[::1]:9000", token: "{ADMIN_TOKEN}"}}
log: {{level: debug, format: JSON}}
"""


def test_full_config_round_trip(tmp_path: Path) -> None:
    s = load_settings(write(tmp_path, FULL), {})
    up = s.upstream
    assert s.state == "sqlite:///var/lib/relay/state.db"
    assert up.base_url == "https://api.example.net:2343"  # trailing slash stripped
    assert up.timezone == "America/Chicago"
    assert (up.poll_interval, up.lookback, up.recent_window) == (10.0, 10800.0, 900.0)
    assert (up.sweep_interval, up.timeout, up.max_clock_skew) == (600.0, 20.0, 1800.0)
    # YAML would read this unquoted value as a datetime; it stays the text that was written.
    assert up.start_from == "2025-07-01 14:53:43"
    assert (up.rate_limit.requests, up.rate_limit.per) == (500, 600.0)
    assert up.max_response_bytes == 1048576
    assert [(a.name, a.auth) for a in up.accounts] == [("main", "bearer"), ("sales", "x-api-key")]
    assert up.accounts[0].api_key.get_secret_value() == KEY_MAIN
    crm, off = s.subscribers
    assert crm.secret.get_secret_value() == SECRET_CRM
    assert crm.headers == {"X-Auth": N8N_TOKEN}
    assert (crm.timeout, crm.max_in_flight, crm.retry) == (5.0, 16, [1.0, 60.0, 3600.0])
    assert (crm.retry_on_4xx, crm.max_retry_after, crm.accounts) == (False, 600.0, ["sales"])
    assert not off.enabled
    d = s.delivery
    assert (d.grace_period, d.lease_margin, d.response_cap, d.retention, d.batch_size) == (
        0.0,
        60.0,
        0,
        86400.0,
        10,
    )
    assert s.admin.address() == ("::1", 9000)
    assert s.admin.token is not None and s.admin.token.get_secret_value() == ADMIN_TOKEN
    assert (s.log.level, s.log.format) == ("DEBUG", "json")
    assert s.subscribers_for("sales") == [crm]
    assert s.subscribers_for("main") == []  # crm is sales-only, "off" is disabled
    signing_keys = [SECRET_CRM.removeprefix("whsec_"), SECRET_ZAP.removeprefix("whsec_")]
    assert sorted(s.secret_values()) == sorted(
        [KEY_MAIN, KEY_SALES, SECRET_CRM, N8N_TOKEN, SECRET_ZAP, ADMIN_TOKEN, *signing_keys]
    )
    # Nothing secret in the repr (which is what ends up in a careless log line).
    for secret in SECRETS:
        assert secret not in repr(s)


def test_defaults(tmp_path: Path) -> None:
    doc = {"upstream": {"accounts": [{"name": "main", "api_key": KEY_MAIN}]}}
    s = load_settings(write(tmp_path, doc), {})
    up = s.upstream
    assert s.state == "./relay-state.db"
    assert up.base_url == "https://api.webfones.com:2343"
    assert (up.timezone, up.start_from) == ("UTC", "now")
    assert (up.poll_interval, up.lookback, up.recent_window, up.sweep_interval) == (
        "auto",
        7200.0,
        600.0,
        300.0,
    )
    assert (up.rate_limit.requests, up.rate_limit.per) == (900, 900.0)
    assert (up.timeout, up.max_response_bytes, up.max_clock_skew) == (30.0, 134217728, 3600.0)
    assert up.accounts[0].auth == "x-api-key"
    assert s.subscribers == []
    d = s.delivery
    assert (d.grace_period, d.lease_margin, d.response_cap, d.retention, d.batch_size) == (
        10.0,
        30.0,
        4096,
        604800.0,
        256,
    )
    assert (s.admin.listen, s.admin.token, s.admin.address()) == (None, None, None)
    assert (s.log.level, s.log.format) == ("INFO", "text")


def test_subscriber_defaults(tmp_path: Path) -> None:
    s = load_settings(write(tmp_path, BASE), {})
    zap = s.subscribers[0]
    assert (zap.accounts, zap.headers, zap.timeout, zap.max_in_flight) == (None, {}, 15.0, 4)
    assert zap.retry == [5.0, 300.0, 1800.0, 7200.0, 18000.0, 36000.0, 36000.0]
    assert (zap.retry_on_4xx, zap.max_retry_after, zap.enabled) == (True, 3600.0, True)
    assert s.subscribers_for("main") == [zap]
    assert s.subscribers_for("sales") == s.subscribers


def test_empty_sections_mean_defaults(tmp_path: Path) -> None:
    text = yaml.safe_dump(BASE) + "delivery:\nlog:\n"
    s = load_settings(write(tmp_path, text), {})
    assert (s.delivery.batch_size, s.log.level) == (256, "INFO")


@pytest.mark.parametrize(
    ("value", "expected"),
    [("auto", "auto"), ("AUTO", "auto"), (" Auto ", "auto"), ("2s", 2.0), (3, 3.0), ("500ms", 0.5)],
)
def test_poll_interval_is_auto_or_a_duration(
    tmp_path: Path, value: object, expected: object
) -> None:
    s = load_settings(write(tmp_path, patched(("upstream.poll_interval", value))), {})
    assert s.upstream.poll_interval == expected


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("automatic", POLL_PROBLEM),
        ("5 mins", POLL_PROBLEM),
        (True, POLL_PROBLEM),
        (-1, POLL_PROBLEM),
        ("0s", "must be greater than 0s"),
    ],
)
def test_a_bad_poll_interval_is_one_line(tmp_path: Path, value: object, problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(write(tmp_path, patched(("upstream.poll_interval", value))), {})
    assert caught.value.problems == [f"upstream.poll_interval: {problem}"]


def test_poll_interval_auto_from_the_environment(tmp_path: Path) -> None:
    s = load_settings(write(tmp_path, BASE), {"RELAY_UPSTREAM__POLL_INTERVAL": "auto"})
    assert s.upstream.poll_interval == "auto"


def test_settings_are_immutable(tmp_path: Path) -> None:
    s = load_settings(write(tmp_path, BASE), {})
    with pytest.raises(ValidationError):
        s.upstream.poll_interval = 1.0  # type: ignore[misc]


# -- ${VAR} references and RELAY_* overrides ----------------------------------------------------


@pytest.mark.parametrize(
    ("text", "environ", "expanded"),
    [
        ("${A}", {"A": "1"}, "1"),
        ("x-${A}-${B}-y", {"A": "1", "B": "2"}, "x-1-2-y"),
        ("${A:-fallback}", {}, "fallback"),
        ("${A:-fallback}", {"A": ""}, "fallback"),  # as in the shell, empty counts as unset
        ("${A:-fallback}", {"A": "set"}, "set"),
        ("${A:-}", {}, ""),
        ("${A:-a:b}", {}, "a:b"),
        ("${A}", {"A": ""}, ""),
        ("${A}", {"A": "${B}"}, "${B}"),  # substituted text is not expanded again
        ("$A and $ and {A}", {"A": "1"}, "$A and $ and {A}"),  # only ${...} is a reference
    ],
)
def test_expand_env_refs(text: str, environ: dict[str, str], expanded: str) -> None:
    assert expand_env_refs({"k": [text]}, environ) == ({"k": [expanded]}, [])


def test_expand_env_refs_collects_every_problem() -> None:
    data = {"a": {"b": ["${X}", "${Y} ${Z}"]}, "c": "${bad name}", "d": "${UNCLOSED", "e": 5}
    _, problems = expand_env_refs(data, {"Y": "y"})
    assert problems == [
        "a.b[0]: environment variable X is not set",
        "a.b[1]: environment variable Z is not set",
        "c: malformed reference (use ${NAME} or ${NAME:-default})",
        "d: malformed reference (use ${NAME} or ${NAME:-default})",
    ]


def test_references_are_expanded(tmp_path: Path) -> None:
    doc = patched(
        ("upstream.accounts.0.api_key", "${WF_KEY_MAIN}"),
        ("subscribers.0.secret", "${ZAP_SECRET}"),
        ("subscribers.1.headers.X-Auth", "Bearer ${N8N_TOKEN}"),
        ("upstream.poll_interval", "${POLL:-7s}"),
        ("subscribers.0.max_in_flight", "${ZAP_CONCURRENCY:-8}"),
    )
    environ = {"WF_KEY_MAIN": KEY_MAIN, "ZAP_SECRET": SECRET_ZAP, "N8N_TOKEN": N8N_TOKEN}
    s = load_settings(write(tmp_path, doc), environ)
    assert s.upstream.accounts[0].api_key.get_secret_value() == KEY_MAIN
    assert s.subscribers[0].secret.get_secret_value() == SECRET_ZAP
    assert s.subscribers[1].headers == {"X-Auth": f"Bearer {N8N_TOKEN}"}
    assert (s.upstream.poll_interval, s.subscribers[0].max_in_flight) == (7.0, 8)


def test_environment_overrides_beat_yaml(tmp_path: Path) -> None:
    doc = patched(("upstream.poll_interval", "5s"), ("log", {"format": "text"}))
    environ = {
        "RELAY_STATE": "/data/x.db",
        "RELAY_UPSTREAM__POLL_INTERVAL": "10s",
        "RELAY_UPSTREAM__RATE_LIMIT__REQUESTS": "100",
        "RELAY_LOG__FORMAT": "json",
        "relay_log__level": "warning",  # names are case-insensitive
        "RELAY_DELIVERY__BATCH_SIZE": "32",
        "RELAY_UPSTREAM__ACCOUNTS": f'[{{"name": "solo", "api_key": "{KEY_SALES}"}}]',
        "RELAY_SUBSCRIBERS": (
            f'[{{"name": "env", "url": "https://e.example.com/", "secret": "{SECRET_CRM}"}}]'
        ),
        "RELAY_CONFIG": "/etc/relay.yaml",  # not a setting (the CLI's, say): ignored
    }
    s = load_settings(write(tmp_path, doc), environ)
    assert s.state == "/data/x.db"
    assert s.upstream.poll_interval == 10.0
    assert s.upstream.rate_limit.requests == 100
    assert (s.log.format, s.log.level) == ("json", "WARNING")
    assert s.delivery.batch_size == 32
    assert [a.name for a in s.upstream.accounts] == ["solo"]
    assert [sub.name for sub in s.subscribers] == ["env"]
    # Untouched YAML keys survive a nested override of their section.
    assert s.admin.listen == "0.0.0.0:8081"


def test_no_file_everything_from_environment() -> None:
    environ = {"RELAY_UPSTREAM__ACCOUNTS": f'[{{"name": "main", "api_key": "{KEY_MAIN}"}}]'}
    s = load_settings(None, environ)
    assert [a.name for a in s.upstream.accounts] == ["main"]


def test_direct_construction_reads_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RELAY_LOG__FORMAT", "json")
    s = Settings.model_validate(patched(("log", {"format": "text"})))
    assert s.log.format == "json"


def test_load_settings_defaults_to_os_environ(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WF_KEY", KEY_MAIN)
    monkeypatch.setenv("RELAY_UPSTREAM__TIMEOUT", "3s")
    s = load_settings(write(tmp_path, patched(("upstream.accounts.0.api_key", "${WF_KEY}"))))
    assert s.upstream.accounts[0].api_key.get_secret_value() == KEY_MAIN
    assert s.upstream.timeout == 3.0


# -- invalid configurations ---------------------------------------------------------------------

URL_PROBLEM = "subscribers[0].url: must be http(s) URL"
SECRET_PROBLEM = "subscribers[0].secret: must be whsec_ followed by base64 (24-64 bytes)"
START_PROBLEM = (
    'upstream.start_from: must be "now" or a time like 2025-07-01 14:53:43 (YYYY-MM-DD HH:MM:SS)'
)
DURATION_PROBLEM = "must be a duration like 30s, 15m, 2h"
REFERENCE_HINT = "malformed reference (use ${NAME} or ${NAME:-default})"


def _whsec(size: int) -> str:
    return "whsec_" + base64.b64encode(b"LEAKCHECK".ljust(size, b"!")).decode()


def case(name: str, expected: str | list[str], *patches: tuple[str, object], **env: str) -> Any:
    """One invalid config: BASE with ``patches`` applied, RELAY_*/other variables in ``env``."""
    lines = [expected] if isinstance(expected, str) else expected
    return pytest.param(patched(*patches), env, lines, id=name)


INVALID = [
    case("typo", "upstream.pol_interval: unknown key", ("upstream.pol_interval", "5s")),
    case("top-typo", "stat: unknown key", ("stat", "x.db")),
    case("settings-option", "_cli_parse_args: unknown key", ("_cli_parse_args", True)),
    case("null-typo", "upstream.pol_interval: unknown key", ("upstream.pol_interval", None)),
    case("no-upstream", "upstream.accounts: required", ("upstream", DROP)),
    case("empty-upstream", "upstream.accounts: required", ("upstream", None)),
    case("no-accounts", "upstream.accounts: must not be empty", ("upstream.accounts", [])),
    case(
        "missing-key",
        "upstream.accounts[0].api_key: required",
        ("upstream.accounts.0.api_key", DROP),
    ),
    case(
        "empty-key",
        "upstream.accounts[0].api_key: must not be empty",
        ("upstream.accounts.0.api_key", ""),
    ),
    case(
        "key-newline",
        "upstream.accounts[1].api_key: must not contain spaces or control characters",
        ("upstream.accounts.1.api_key", KEY_SALES + "\n"),
    ),
    case(
        "missing-env",
        "subscribers[0].secret: environment variable WF_SECRET is not set",
        ("subscribers.0.secret", "${WF_SECRET}"),
    ),
    case(
        "missing-envs",
        [
            "upstream.accounts[0].api_key: environment variable WF_KEY_MAIN is not set",
            "subscribers[1].headers.X-Auth: environment variable N8N_TOKEN is not set",
        ],
        ("upstream.accounts.0.api_key", "${WF_KEY_MAIN}"),
        ("subscribers.1.headers.X-Auth", "Bearer ${N8N_TOKEN}"),
        ("admin.token", "${ADMIN_TOKEN}"),
        ADMIN_TOKEN=ADMIN_TOKEN,
    ),
    case(
        "bad-reference",
        f"subscribers[0].secret: {REFERENCE_HINT}",
        ("subscribers.0.secret", "${WF SECRET}"),
    ),
    case("secret-not-whsec", SECRET_PROBLEM, ("subscribers.0.secret", _whsec(32)[6:])),
    case("secret-short", SECRET_PROBLEM, ("subscribers.0.secret", _whsec(16))),
    case("secret-long", SECRET_PROBLEM, ("subscribers.0.secret", _whsec(65))),
    case("secret-not-base64", SECRET_PROBLEM, ("subscribers.0.secret", "whsec_LEAKCHECK-!!")),
    case("secret-empty", SECRET_PROBLEM, ("subscribers.0.secret", "")),
    case("url-scheme", URL_PROBLEM, ("subscribers.0.url", "ftp://example.com/x")),
    case("url-no-host", URL_PROBLEM, ("subscribers.0.url", "https:///path")),
    case("url-no-scheme", URL_PROBLEM, ("subscribers.0.url", "hooks.zapier.com/x")),
    case("url-space", URL_PROBLEM, ("subscribers.0.url", "https://a.example/x y")),
    case("url-port", URL_PROBLEM, ("subscribers.0.url", "https://a.example:99999/")),
    case(
        "base-url",
        "upstream.base_url: must be http(s) URL",
        ("upstream.base_url", "api.webfones.com:2343"),
    ),
    case(
        "base-url-query",
        "upstream.base_url: must be http(s) URL without a query or fragment",
        ("upstream.base_url", "https://api.webfones.com/?k=1"),
    ),
    case(
        "duplicate-accounts",
        "upstream.accounts[1].name: duplicate account name 'main'",
        ("upstream.accounts.1.name", "main"),
    ),
    case(
        "duplicate-subscribers",
        "subscribers[1].name: duplicate subscriber name 'zapier'",
        ("subscribers.1.name", "zapier"),
    ),
    case(
        "unknown-account",
        "subscribers[1].accounts: unknown account 'nope'",
        ("subscribers.1.accounts", ["sales", "nope"]),
    ),
    case(
        "no-subscriber-accounts",
        "subscribers[1].accounts: must not be empty",
        ("subscribers.1.accounts", []),
    ),
    case(
        "window",
        "upstream.recent_window: must not exceed lookback (2h)",
        ("upstream.recent_window", "3h"),
    ),
    case(
        "timezone",
        "upstream.timezone: unknown time zone",
        ("upstream.timezone", "Mars/Olympus_Mons"),
    ),
    case(
        "timezone-path",
        "upstream.timezone: unknown time zone",
        ("upstream.timezone", "../../etc/passwd"),
    ),
    case("start-word", START_PROBLEM, ("upstream.start_from", "yesterday")),
    case("start-date", START_PROBLEM, ("upstream.start_from", "2025-07-01")),
    case("start-iso", START_PROBLEM, ("upstream.start_from", "2025-07-01T14:53:43")),
    case("start-month", START_PROBLEM, ("upstream.start_from", "2025-13-01 00:00:00")),
    case(
        "duration",
        f"upstream.poll_interval: {POLL_PROBLEM}",
        ("upstream.poll_interval", "5 mins"),
    ),
    case("zero-duration", "upstream.timeout: must be greater than 0s", ("upstream.timeout", 0)),
    case(
        "retry-item",
        f"subscribers[0].retry[1]: {DURATION_PROBLEM}",
        ("subscribers.0.retry", ["5s", "soon"]),
    ),
    case("retry-empty", "subscribers[0].retry: must not be empty", ("subscribers.0.retry", [])),
    case(
        "reserved-header",
        "subscribers[1].headers.Content-Type: is set by the relay and cannot be configured",
        ("subscribers.1.headers", {"Content-Type": "text/plain", "X-Auth": N8N_TOKEN}),
    ),
    case(
        "reserved-header-case",
        "subscribers[1].headers.WEBHOOK-SIGNATURE: is set by the relay and cannot be configured",
        ("subscribers.1.headers", {"WEBHOOK-SIGNATURE": N8N_TOKEN}),
    ),
    case(
        "header-name-with-credential",
        "subscribers[1].headers: header #1 has a name that is not a valid HTTP token",
        ("subscribers.1.headers", {f"Authorization: Bearer {N8N_TOKEN}": "x"}),
    ),
    case(
        "header-value-newline",
        "subscribers[1].headers.X-Auth: value must not contain line breaks",
        ("subscribers.1.headers.X-Auth", N8N_TOKEN + "\r\nX-Evil: 1"),
    ),
    case(
        "header-duplicate",
        "subscribers[1].headers.x-auth: duplicate header (names are case-insensitive)",
        ("subscribers.1.headers", {"X-Auth": N8N_TOKEN, "x-auth": N8N_TOKEN}),
    ),
    case(
        "admin-no-token",
        "admin.token: required when listen is not a loopback address",
        ("admin.token", DROP),
    ),
    case(
        "admin-all-hosts-no-token",
        "admin.token: required when listen is not a loopback address",
        ("admin", {"listen": ":8081"}),
    ),
    case(
        "admin-listen",
        "admin.listen: must be host:port, e.g. 127.0.0.1:8080 or [::1]:8080",
        ("admin.listen", "8081"),
    ),
    case("admin-blank-token", "admin.token: must not be empty", ("admin.token", "  ")),
    case(
        "log-level",
        "log.level: must be 'DEBUG', 'INFO', 'WARNING' or 'ERROR'",
        ("log", {"level": "verbose"}),
    ),
    case(
        "auth",
        "upstream.accounts[0].auth: must be 'x-api-key' or 'bearer'",
        ("upstream.accounts.0.auth", "basic"),
    ),
    case(
        "account-name",
        "upstream.accounts[0].name: must contain only letters, digits, '_', '.' and '-'",
        ("upstream.accounts.0.name", "main line"),
    ),
    case(
        "in-flight",
        "subscribers[0].max_in_flight: must be greater than or equal to 1",
        ("subscribers.0.max_in_flight", 0),
    ),
    case(
        "batch-size",
        "delivery.batch_size: must be a whole number",
        ("delivery", {"batch_size": "lots"}),
    ),
    case(
        "max-response",
        "upstream.max_response_bytes: must be greater than or equal to 1024",
        ("upstream.max_response_bytes", 10),
    ),
    case(
        "state",
        "state: must be a file path, sqlite:///path or a postgresql:// URL",
        ("state", "redis://localhost/0"),
    ),
    case("section-type", "log: must be a mapping", ("log", "debug")),
    case("list-type", "subscribers: must be a list", ("subscribers", {"name": "x"})),
    case(
        "several",
        [
            "upstream.pol_interval: unknown key",
            URL_PROBLEM,
            SECRET_PROBLEM,
            f"subscribers[1].timeout: {DURATION_PROBLEM}",
        ],
        ("upstream.pol_interval", "5s"),
        ("subscribers.0.url", "ftp://example.com/x"),
        ("subscribers.0.secret", "whsec_nope"),
        ("subscribers.1.timeout", "forever"),
    ),
    case(
        "env-typo",
        "upstream.pol_interval: unknown key",
        RELAY_UPSTREAM__POL_INTERVAL="5s",
    ),
    case(
        "env-bad-value",
        f"upstream.poll_interval: {POLL_PROBLEM}",
        RELAY_UPSTREAM__POLL_INTERVAL="fast",
    ),
    case(
        "env-bad-json",
        "subscribers: a RELAY_SUBSCRIBERS override is not valid JSON",
        RELAY_SUBSCRIBERS=f'[{{"secret": "{SECRET_ZAP}"',
    ),
    case(
        "env-bad-secret",
        SECRET_PROBLEM,
        RELAY_SUBSCRIBERS='[{"name": "e", "url": "https://e.x/", "secret": "whsec_LEAKCHECK"}]',
    ),
]


@pytest.mark.parametrize(("doc", "environ", "expected"), INVALID)
def test_invalid_config(
    tmp_path: Path, doc: dict[str, Any], environ: dict[str, str], expected: list[str]
) -> None:
    assert problems_of(write(tmp_path, doc), environ) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            f"upstream:\n  accounts:\n    - name: main\n   api_key: {KEY_MAIN}\n",
            "config: invalid YAML at line 4: "
            "expected <block end>, but found '<block mapping start>'",
        ),
        (
            f'upstream: "{KEY_MAIN}\n',
            "config: invalid YAML at line 2: found unexpected end of stream",
        ),
        (
            "upstream: {}\nupstream: {}\n",
            "config: invalid YAML at line 2: duplicate key 'upstream'",
        ),
        ("- upstream\n- log\n", "config: the top level must be a mapping of keys"),
        ("just text\n", "config: the top level must be a mapping of keys"),
        ("", "upstream.accounts: required"),  # an empty file is an empty mapping
        ("# only a comment\n", "upstream.accounts: required"),
    ],
)
def test_unreadable_yaml(tmp_path: Path, text: str, expected: str) -> None:
    assert problems_of(write(tmp_path, text)) == [expected]


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    assert problems_of(path) == [f"config: cannot read {path}: No such file or directory"]


def test_directory_instead_of_file(tmp_path: Path) -> None:
    assert problems_of(tmp_path) == [f"config: cannot read {tmp_path}: Is a directory"]


# -- smaller pieces -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("loc", "text"),
    [
        ((), ""),
        (("state",), "state"),
        (("upstream", "accounts", 0, "api_key"), "upstream.accounts[0].api_key"),
        (("subscribers", 1, "retry", 2), "subscribers[1].retry[2]"),
    ],
)
def test_render_loc(loc: tuple[str | int, ...], text: str) -> None:
    assert render_loc(loc) == text


@pytest.mark.parametrize(
    ("listen", "address"),
    [
        ("127.0.0.1:8081", ("127.0.0.1", 8081)),
        ("127.9.9.9:8081", ("127.9.9.9", 8081)),
        ("localhost:8081", ("localhost", 8081)),
        ("[::1]:0", ("::1", 0)),
    ],
)
def test_loopback_admin_needs_no_token(listen: str, address: tuple[str, int]) -> None:
    assert AdminSettings(listen=listen).address() == address


@pytest.mark.parametrize(
    "state",
    ["relay.db", "/var/lib/relay/state.db", "sqlite:///relay.db", "postgresql://u:p@db/relay"],
)
def test_state_forms(tmp_path: Path, state: str) -> None:
    assert load_settings(write(tmp_path, patched(("state", state))), {}).state == state


def test_postgres_password_is_a_secret(tmp_path: Path) -> None:
    doc = patched(("state", "postgresql://relay:pg-LEAKCHECK-pw@db:5432/relay"))
    assert "pg-LEAKCHECK-pw" in load_settings(write(tmp_path, doc), {}).secret_values()


def test_example_config_loads() -> None:
    environ = {
        "WEBFONES_API_KEY_MAIN": KEY_MAIN,
        "WEBFONES_API_KEY_SALES": KEY_SALES,
        "ZAPIER_WEBHOOK_SECRET": SECRET_ZAP,
        "N8N_WEBHOOK_SECRET": SECRET_CRM,
        "N8N_TOKEN": N8N_TOKEN,
        "CRM_WEBHOOK_SECRET": _whsec(48),
        "SLACK_WEBHOOK_SECRET": _whsec(32),
        "ADMIN_TOKEN": ADMIN_TOKEN,
    }
    s = load_settings(EXAMPLE, environ)
    assert [a.name for a in s.upstream.accounts] == ["main", "sales"]
    assert [sub.name for sub in s.subscribers] == ["zapier", "n8n", "crm", "slack-missed"]
    assert [sub.name for sub in s.subscribers_for("main")] == ["zapier", "n8n", "slack-missed"]
    assert [sub.name for sub in s.subscribers_for("sales")] == [
        "zapier",
        "n8n",
        "crm",
        "slack-missed",
    ]
    assert s.subscribers[2].format_spec.name == "template"
    assert s.subscribers[3].compiled_filter.spec == {"call.missed": True}
    assert s.subscribers[1].headers == {"X-N8N-Auth": N8N_TOKEN}
    assert set(environ.values()) <= set(s.secret_values())
    # Each documented default is the real default (the example spells every one out).
    defaults = load_settings(
        None, {"RELAY_UPSTREAM__ACCOUNTS": '[{"name": "main", "api_key": "k"}]'}
    )
    assert s.upstream.model_dump(exclude={"accounts"}) == defaults.upstream.model_dump(
        exclude={"accounts"}
    )
    assert s.delivery == defaults.delivery
    assert s.log == defaults.log
    assert s.state == defaults.state
    fields = {"name", "url", "secret"}
    default_sub = SubscriberSettings(name="x", url="https://x.example/", secret=SECRET_ZAP)
    assert s.subscribers[0].model_dump(exclude=fields) == default_sub.model_dump(exclude=fields)


def test_example_config_names_every_missing_secret() -> None:
    problems = problems_of(EXAMPLE, {})
    assert len(problems) == 8
    assert all("is not set" in line for line in problems)


# -- issue 8 §4: a default derived from another setting follows it --------------------------------


@pytest.mark.parametrize(
    ("upstream", "recent_window"),
    [
        ({"lookback": 60}, 60.0),  # lookback alone, shorter than the 10m default
        ({"lookback": "5m"}, 300.0),
        ({"lookback": "10m"}, 600.0),
        ({"lookback": "3h"}, 600.0),
        ({}, 600.0),
        ({"lookback": 60, "recent_window": "30s"}, 30.0),  # written: kept as written
    ],
)
def test_recent_window_defaults_to_the_smaller_of_10m_and_lookback(
    tmp_path: Path, upstream: dict[str, Any], recent_window: float
) -> None:
    accounts = [{"name": "main", "api_key": KEY_MAIN}]
    doc = {"upstream": {"accounts": accounts, **upstream}}
    assert load_settings(write(tmp_path, doc), {}).upstream.recent_window == recent_window


def test_lookback_alone_passes_check_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from relay import cli

    doc = {"upstream": {"lookback": 60, "accounts": [{"name": "main", "api_key": KEY_MAIN}]}}
    assert cli.main(["check-config", "--config", str(write(tmp_path, doc))]) == cli.EXIT_OK
    assert "recent_window" not in capsys.readouterr().err


def test_a_recent_window_set_by_the_environment_is_checked(tmp_path: Path) -> None:
    doc = {"upstream": {"lookback": 60, "accounts": [{"name": "main", "api_key": KEY_MAIN}]}}
    with pytest.raises(ConfigError) as exc:
        load_settings(write(tmp_path, doc), {"RELAY_UPSTREAM__RECENT_WINDOW": "2m"})
    assert exc.value.problems == ["upstream.recent_window: must not exceed lookback (1m)"]
