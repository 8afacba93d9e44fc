"""Bad configuration through the real CLI, and secrets kept out of every output and log.

tests/test_config.py covers the loader in depth; here every key of the schema gets invalid values
through ``relay check-config`` and ``relay run``: exit code 2 and exactly one line on stderr that
starts with the key's path. Each run is also scanned for every configured secret. Then a relay
runs at DEBUG against failures (403s, an upstream and a receiver that echo credentials back) and
everything it printed, stored and served is scanned too.
"""

from __future__ import annotations

import copy
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import yaml
from pydantic import BaseModel

from relay import cli
from relay.config.schema import Settings
from relay.sim.receiver import Reply
from relay.sim.simulator import Fault
from tests.helpers import (
    GENEROUS,
    KEY_A,
    ago,
    new_secret,
    start_relay_process,
    stop_relay_process,
    wait_until_async,
)

API_KEY = "SECRET-APIKEY-0123456789abcdef"
SIGNING = new_secret()
HEADER_VALUE = "Bearer SECRET-HEADER-0123456789"
ADMIN_TOKEN = "SECRET-ADMIN-0123456789abcdef"
SECRETS = [API_KEY, SIGNING, SIGNING.removeprefix("whsec_"), HEADER_VALUE, ADMIN_TOKEN]

BASE: dict[str, Any] = {
    "state": "state.db",
    "upstream": {
        "base_url": "http://127.0.0.1:9",
        "accounts": [{"name": "alpha", "api_key": API_KEY}],
    },
    "subscribers": [
        {
            "name": "crm",
            "url": "http://127.0.0.1:9/hook",
            "secret": SIGNING,
            "headers": {"Authorization": HEADER_VALUE},
        }
    ],
    "admin": {"listen": "127.0.0.1:8080", "token": ADMIN_TOKEN},
    "log": {"level": "INFO"},
}

DELETE = object()
Path_ = tuple[str | int, ...]


def case(key: str, *changes: tuple[Path_, Any], id: str) -> Any:
    return pytest.param(key, list(changes), id=id)


def at(path: str) -> Path_:
    """``"subscribers.0.retry"`` -> ``("subscribers", 0, "retry")``."""
    return tuple(int(p) if p.isdigit() else p for p in path.split("."))


def one(key: str, value: Any, id: str, path: str | None = None) -> Any:
    return case(key, (at(path or key.replace("[", ".").replace("]", "")), value), id=id)


# (the key path the one line must name, changes to BASE)
CASES = [
    one("state", "", "state-empty"),
    one("state", "ftp://host/state.db", "state-scheme"),
    one("upstream", "everything", "upstream-not-mapping"),
    one("upstream.base_url", "ftp://api.example.com", "base-url-scheme"),
    one("upstream.base_url", "https://api.example.com/?q=1", "base-url-query"),
    one("upstream.timezone", "Mars/Olympus_Mons", "timezone"),
    one("upstream.poll_interval", "5 mins", "poll-interval-text"),
    one("upstream.poll_interval", "0s", "poll-interval-zero"),
    one("upstream.poll_interval", -1, "poll-interval-negative"),
    one("upstream.poll_interval", True, "poll-interval-bool"),
    one("upstream.auto_max_polls_per_second", 0, "auto-max-polls-zero"),
    one("upstream.auto_max_polls_per_second", "fast", "auto-max-polls-text"),
    one("upstream.lookback", "forever", "lookback"),
    one("upstream.recent_window", "3h", "recent-window-over-lookback"),
    one("upstream.sweep_interval", "0", "sweep-interval"),
    one("upstream.start_from", "yesterday", "start-from-text"),
    one("upstream.start_from", "2025-02-30 00:00:00", "start-from-no-such-day"),
    one("upstream.rate_limit", "lots", "rate-limit-not-mapping"),
    one("upstream.rate_limit.requests", 0, "rate-limit-requests-zero"),
    one("upstream.rate_limit.requests", "many", "rate-limit-requests-text"),
    one("upstream.rate_limit.per", "0s", "rate-limit-per"),
    one("upstream.timeout", "-1s", "upstream-timeout"),
    one("upstream.max_response_bytes", 100, "max-response-bytes-small"),
    one("upstream.max_response_bytes", "1GB", "max-response-bytes-text"),
    one("upstream.max_clock_skew", "soon", "max-clock-skew"),
    one("upstream.accounts", [], "accounts-empty"),
    one("upstream.accounts", "alpha", "accounts-not-list"),
    one("upstream.accounts", DELETE, "accounts-missing"),
    one("upstream.accounts[0].name", "has space", "account-name"),
    one("upstream.accounts[0].name", DELETE, "account-name-missing"),
    one("upstream.accounts[0].api_key", "", "api-key-empty"),
    one("upstream.accounts[0].api_key", API_KEY + " trailing", "api-key-space"),
    one("upstream.accounts[0].auth", "basic", "account-auth"),
    case(
        "upstream.accounts[1].name",
        (at("upstream.accounts.1"), {"name": "alpha", "api_key": API_KEY}),
        id="account-duplicate",
    ),
    one("subscribers", "all", "subscribers-not-list"),
    one("subscribers[0].name", "a/b", "subscriber-name"),
    one("subscribers[0].url", "ftp://hooks.example.com", "subscriber-url-scheme"),
    one("subscribers[0].url", "localhost:8080/hook", "subscriber-url-no-scheme"),
    one("subscribers[0].secret", "hunter2-" + API_KEY, "secret-no-prefix"),
    one("subscribers[0].secret", "whsec_AAAA", "secret-short"),
    one("subscribers[0].secret", DELETE, "secret-missing"),
    one("subscribers[0].secret", [], "secret-list-empty"),
    one(
        "subscribers[0].secret[1]",
        [SIGNING, "whsk_AAAA"],
        "secret-list-item",
        path="subscribers.0.secret",
    ),
    one("subscribers[0].secret", 5, "secret-not-a-key"),
    one(
        "subscribers[0].filter.disposition",
        {"disposition": {"$neq": "A"}},
        "filter-operator",
        path="subscribers.0.filter",
    ),
    one("subscribers[0].filter", ["direction"], "filter-not-mapping"),
    one("subscribers[0].format", "xml", "format-unknown"),
    one("subscribers[0].template", '{"a": 1}', "template-without-format"),
    case(
        "subscribers[0].template",
        (at("subscribers.0.format"), "template"),
        (at("subscribers.0.template"), '{"a": {{ record.rid }'),
        id="template-syntax",
    ),
    case(
        "subscribers[0].template",
        (at("subscribers.0.format"), "template"),
        (at("subscribers.0.template"), '{"a": {{ record.rid }} '),
        id="template-not-json",
    ),
    case(
        "subscribers[0].template",
        (at("subscribers.0.format"), "template"),
        id="template-missing",
    ),
    one("upstream.phone_region", "USA", "phone-region"),
    one("upstream.max_record_bytes", 100, "max-record-bytes-small"),
    one("subscribers[0].accounts", [], "subscriber-accounts-empty"),
    one("subscribers[0].accounts", ["nope"], "subscriber-accounts-unknown"),
    one("subscribers[0].headers", "x", "headers-not-mapping"),
    one("subscribers[0].headers", {HEADER_VALUE: "x"}, "header-name-is-a-secret"),
    one("subscribers[0].headers.Content-Type", "x", "header-reserved"),
    one("subscribers[0].headers.Authorization", HEADER_VALUE + "\nX: y", "header-line-break"),
    one("subscribers[0].timeout", "0", "subscriber-timeout"),
    one("subscribers[0].max_in_flight", 0, "max-in-flight-zero"),
    one("subscribers[0].max_in_flight", 1000, "max-in-flight-large"),
    one("subscribers[0].retry", [], "retry-empty"),
    one("subscribers[0].retry[1]", ["1s", "soon"], "retry-item", path="subscribers.0.retry"),
    one("subscribers[0].retry_on_4xx", "perhaps", "retry-on-4xx"),
    one("subscribers[0].max_retry_after", "0s", "max-retry-after"),
    one("subscribers[0].enabled", "perhaps", "enabled"),
    case(
        "subscribers[1].name",
        (at("subscribers.1"), {"name": "crm", "url": "http://h/x", "secret": SIGNING}),
        id="subscriber-duplicate",
    ),
    one("delivery", "fast", "delivery-not-mapping"),
    one("delivery.grace_period", "soon", "grace-period"),
    one("delivery.lease_margin", "0s", "lease-margin"),
    one("delivery.response_cap", -1, "response-cap-negative"),
    one("delivery.response_cap", 2_000_000, "response-cap-large"),
    one("delivery.retention", "0", "retention"),
    one("delivery.dead_letter_retention", "0s", "dead-letter-retention"),
    one("delivery.quarantine_retention", "forever", "quarantine-retention"),
    one("delivery.orphan_retention", -1, "orphan-retention"),
    one("delivery.batch_size", 0, "batch-size-zero"),
    one("delivery.batch_size", 10_001, "batch-size-large"),
    one("admin", "on", "admin-not-mapping"),
    one("admin.listen", "8080", "admin-listen-no-host"),
    one("admin.listen", "127.0.0.1:99999", "admin-listen-port"),
    one("admin.token", "  ", "admin-token-blank"),
    one("admin.allowed_hosts", "relay.example", "admin-allowed-hosts-not-list"),
    one("admin.max_connections", 0, "admin-max-connections-zero"),
    one("admin.idle_timeout", "0s", "admin-idle-timeout-zero"),
    case(
        "admin.token",
        (at("admin.listen"), "0.0.0.0:8080"),
        (at("admin.token"), DELETE),
        id="admin-token-required",
    ),
    one("admin.sign_in_limit", "strict", "sign-in-limit-not-mapping"),
    one("admin.sign_in_limit.failures", 0, "sign-in-failures-zero"),
    one("admin.sign_in_limit.every", "0s", "sign-in-every-zero"),
    one("admin.sign_in_limit.global_failures", 0, "sign-in-global-failures-zero"),
    one("admin.sign_in_limit.global_every", "never", "sign-in-global-every"),
    one("cluster", "big", "cluster-not-mapping"),
    one("cluster.lease_ttl", "0s", "cluster-lease-ttl-zero"),
    one("subscribers[0].ordering", "random", "ordering"),
    one("subscribers[0].rate_limit", "fast", "subscriber-rate-limit-text"),
    one("subscribers[0].rate_limit.requests", 0, "subscriber-rate-limit-requests-zero"),
    case(
        "subscribers[0].rate_limit.per",
        (at("subscribers.0.rate_limit"), {"requests": 5, "per": "0s"}),
        id="subscriber-rate-limit-per-zero",
    ),
    case(
        "subscribers[0].rate_limit.burst",
        (at("subscribers.0.rate_limit"), {"requests": 5, "burst": 0}),
        id="subscriber-rate-limit-burst-zero",
    ),
    one("subscribers[0].circuit", "on", "circuit-not-mapping"),
    one("subscribers[0].circuit.open_after", 0, "circuit-open-after-zero"),
    one("subscribers[0].circuit.disable_after", "soon", "circuit-disable-after"),
    one("log", "verbose", "log-not-mapping"),
    one("log.level", "LOUD", "log-level"),
    one("log.format", "xml", "log-format"),
    # Typos are reported, never silently ignored.
    one("subscriber", [], "unknown-top-level"),
    one("upstream.pol_interval", "5s", "unknown-upstream"),
    one("upstream.rate_limit.request", 10, "unknown-rate-limit"),
    one("upstream.accounts[0].apikey", API_KEY, "unknown-account"),
    one("subscribers[0].retries", ["1s"], "unknown-subscriber"),
    one("delivery.grace", "1s", "unknown-delivery"),
    one("admin.tokn", ADMIN_TOKEN, "unknown-admin"),
    one("log.lvl", "DEBUG", "unknown-log"),
    # ${VAR} references that cannot be resolved name the variable.
    one("upstream.accounts[0].api_key", "${RELAY_TEST_NO_SUCH_KEY}", "env-missing-api-key"),
    one("subscribers[0].secret", "${RELAY_TEST_NO_SUCH_SECRET}", "env-missing-secret"),
    one("subscribers[0].headers.Authorization", "Bearer ${NO_SUCH_TOKEN}", "env-missing-header"),
    one("admin.token", "${RELAY_TEST_NO_SUCH_TOKEN", "env-malformed"),
]


def apply(doc: dict[str, Any], path: Path_, value: Any) -> None:
    *parents, last = path
    node: Any = doc
    for part in parents:
        node = node.setdefault(part, {}) if isinstance(node, dict) else node[part]
    if value is DELETE:
        del node[last]
    elif isinstance(node, list) and isinstance(last, int) and last == len(node):
        node.append(value)
    else:
        node[last] = value


@pytest.fixture(autouse=True)
def no_relay_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("RELAY_"):
            monkeypatch.delenv(name)


def write(tmp_path: Path, doc: dict[str, Any]) -> Path:
    path = tmp_path / "relay.yaml"
    path.write_text(yaml.safe_dump(doc, allow_unicode=True))
    return path


def assert_no_secrets(*texts: str) -> None:
    for text in texts:
        for secret in SECRETS:
            assert secret not in text


@pytest.mark.parametrize(("key", "changes"), CASES)
@pytest.mark.parametrize("command", ["check-config", "run"])
def test_invalid_value_names_its_key(tmp_path, capsys, command, key, changes) -> None:
    doc = copy.deepcopy(BASE)
    for path, value in changes:
        apply(doc, path, value)
    assert cli.main([command, "--config", str(write(tmp_path, doc))]) == cli.EXIT_CONFIG
    out, err = capsys.readouterr()
    assert out == ""
    [line] = err.splitlines()
    assert line.startswith(f"{key}: "), line
    assert_no_secrets(out, err)


def schema_keys(model: type[BaseModel], prefix: str = "") -> Iterator[str]:
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        yield key
        inner = field.annotation
        for arg in (*getattr(inner, "__args__", ()), inner):
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                item = "[0]" if "list" in str(inner) else ""
                yield from schema_keys(arg, f"{key}{item}.")


def test_every_key_of_the_schema_has_an_invalid_case() -> None:
    covered = {p.values[0].split("[1]")[0].split("[0].headers.")[0] for p in CASES}
    covered |= {k.replace("[1]", "[0]") for k in covered}
    missing = sorted(set(schema_keys(Settings)) - covered)
    assert missing == []


def test_the_base_config_is_valid(tmp_path, capsys) -> None:
    assert cli.main(["check-config", "--config", str(write(tmp_path, BASE))]) == cli.EXIT_OK
    out, err = capsys.readouterr()
    assert out.startswith("config OK") and err == ""
    assert_no_secrets(out)


def test_several_problems_are_each_one_line(tmp_path, capsys) -> None:
    doc = copy.deepcopy(BASE)
    doc["upstream"]["poll_interval"] = "often"
    doc["subscribers"][0]["timeout"] = "never"
    doc["typo"] = 1
    assert cli.main(["check-config", "-c", str(write(tmp_path, doc))]) == cli.EXIT_CONFIG
    err = capsys.readouterr().err
    assert sorted(line.split(":")[0] for line in err.splitlines()) == [
        "subscribers[0].timeout",
        "typo",
        "upstream.poll_interval",
    ]


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("state: a\nstate: b\n", "config: invalid YAML at line 2: duplicate key 'state'"),
        (f"upstream: [{API_KEY}\n", "config: invalid YAML"),
        ("- just\n- a list\n", "config: the top level must be a mapping of keys"),
    ],
    ids=["duplicate-key", "broken-yaml", "not-a-mapping"],
)
def test_unreadable_yaml_is_one_line(tmp_path, capsys, text: str, problem: str) -> None:
    path = tmp_path / "relay.yaml"
    path.write_text(text)
    assert cli.main(["check-config", "-c", str(path)]) == cli.EXIT_CONFIG
    err = capsys.readouterr().err
    [line] = err.splitlines()
    assert line.startswith(problem)
    assert_no_secrets(err)


def test_missing_config_file_is_one_line(tmp_path, capsys) -> None:
    assert cli.main(["run", "-c", str(tmp_path / "nope.yaml")]) == cli.EXIT_CONFIG
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("config: cannot read") and "nope.yaml" in line


def relay_command() -> list[str]:
    script = Path(sys.executable).with_name("relay")
    return [str(script)] if script.exists() else [sys.executable, "-m", "relay"]


@pytest.mark.parametrize("command", ["check-config", "run"])
def test_the_installed_command_exits_2(tmp_path, command) -> None:
    doc = copy.deepcopy(BASE)
    doc["upstream"]["accounts"][0]["api_key"] = "${RELAY_TEST_NO_SUCH_KEY}"
    proc = subprocess.run(
        [*relay_command(), command, "--config", str(write(tmp_path, doc))],
        capture_output=True,
        text=True,
        timeout=GENEROUS,
        env={k: v for k, v in os.environ.items() if not k.startswith("RELAY_")},
    )
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.splitlines() == [
        "upstream.accounts[0].api_key: environment variable RELAY_TEST_NO_SUCH_KEY is not set"
    ]


# -- secrets at run time ------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
async def test_no_secret_reaches_any_log_or_output_at_debug(sim, receiver_factory, tmp_path):
    rx, url = await receiver_factory()
    broken_key = "SECRET-BROKEN-KEY-0123456789"
    # The upstream and the receiver both echo credentials back in their error bodies.
    sim.fail_next(Fault.status(500, body=orjson.dumps({"error": f"bad key {KEY_A}"})), key=KEY_A)
    sim.fail_next(
        Fault.status(403, body=orjson.dumps({"error": f"Invalid API key {broken_key}"})),
        key=broken_key,
    )
    echo = f"{HEADER_VALUE} {SIGNING} {KEY_A}".encode()
    rx.script(Reply.status(500, body=echo), Reply.status(401, body=echo))
    record = sim.add_record(KEY_A, started_at=ago(10))
    port = free_port()
    doc: dict[str, Any] = {
        "state": str(tmp_path / "state.db"),
        "upstream": {
            "base_url": sim.url,
            "poll_interval": "50ms",
            "start_from": "2000-01-01 00:00:00",
            "accounts": [
                {"name": "alpha", "api_key": "${TEST_API_KEY}"},
                {"name": "broken", "api_key": broken_key, "auth": "bearer"},
            ],
        },
        "subscribers": [
            {
                "name": "crm",
                "url": url,
                "secret": "${TEST_SECRET}",
                "headers": {"Authorization": HEADER_VALUE},
                "retry": ["50ms", "50ms", "50ms"],
            }
        ],
        "admin": {"listen": f"127.0.0.1:{port}", "token": ADMIN_TOKEN},
    }
    config = write(tmp_path, doc)
    log = tmp_path / "relay.log"
    env = {**os.environ, "TEST_API_KEY": KEY_A, "TEST_SECRET": SIGNING}
    proc = await start_relay_process(config, env, log, "--log-level", "DEBUG")
    served: list[str] = []
    try:
        await rx.wait_for(lambda reqs: any(r.status_sent == 200 for r in reqs), timeout=GENEROUS)
        async with aiohttp.ClientSession() as http:
            auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}

            async def broken_account_reported() -> bool:
                async with http.get(f"http://127.0.0.1:{port}/status", headers=auth) as resp:
                    text = await resp.text()
                served[:] = [text]
                return resp.status == 200 and "auth_failed" in text

            await wait_until_async(broken_account_reported)
            for path in ("/healthz", "/dead-letters", "/status"):
                async with http.get(f"http://127.0.0.1:{port}{path}") as resp:
                    served.append(await resp.text())
    finally:
        assert await stop_relay_process(proc) == 0
    status = subprocess.run(
        [*relay_command(), "status", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=GENEROUS,
        env=env,
    )
    assert status.returncode == 0 and "auth_failed" in status.stdout
    text = log.read_text()
    assert "DEBUG" in text and "authentication failed" in text and "HTTP 500" in text
    assert str(record["rid"]) in text
    for output in (text, status.stdout, status.stderr, *served):
        for secret in [*SECRETS, KEY_A, broken_key]:
            assert secret not in output


def test_check_config_shows_what_auto_works_out_to(tmp_path, capsys) -> None:
    doc = copy.deepcopy(BASE)
    doc["upstream"]["poll_interval"] = "auto"
    assert cli.main(["check-config", "-c", str(write(tmp_path, doc))]) == cli.EXIT_OK
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("config OK")
    # The default budget (900 per 15 min), one account per key: 909/891 s / 0.9.
    assert out[1] == "poll_interval auto: each account polled every 1.13s (1 account(s) per key)"
    assert_no_secrets("\n".join(out))
