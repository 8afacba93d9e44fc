"""Probes, /metrics, the Grafana dashboard and the alert rules, against `relay run`."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from relay.ops.metrics import METRIC_NAMES
from relay.sim.receiver import Reply
from tests.helpers import KEY_A, ago, verify_all, wait_until_async
from tests.opsrelay import ops_relay, subscriber

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(found, name: str, **labels: str) -> float:
    return found[(name, tuple(sorted(labels.items())))]


async def test_probes_and_metrics_of_a_running_relay(sim, receiver_factory, tmp_path):
    ok, ok_url = await receiver_factory()
    bad, bad_url = await receiver_factory()
    bad.set_default(Reply.status(500))
    relay = await ops_relay(
        tmp_path,
        sim.url,
        # The flaky receiver never recovers: with the circuit kept closed its deliveries run
        # out of schedule and become the dead letters the metrics are checked against.
        [subscriber("crm", ok_url), subscriber("flaky", bad_url, circuit={"open_after": 1000})],
    ).start()
    made = [sim.add_record(KEY_A, started_at=ago(20)) for _ in range(4)]
    await ok.wait_count(4, timeout=60)
    verify_all(ok.requests, relay.secrets["SECRET_CRM"])

    # Liveness: no token needed; readiness: a bare yes/no without it, reasons with it.
    status, doc = await relay.call("GET", "/healthz")
    assert (status, doc) == (200, {"ok": True})
    status, doc = await relay.call("GET", "/readyz")
    assert status == 200 and doc == {"ready": True, "problems": []}
    # The Dockerfile's HEALTHCHECK command, verbatim.
    line = next(x for x in (ROOT / "Dockerfile").read_text().splitlines() if 'CMD ["python"' in x)
    argv = json.loads(line.split("CMD", 1)[1].strip())
    assert argv[0] == "python"
    env = {**os.environ, "RELAY_HEALTH_URL": relay.base + "/healthz"}
    done = subprocess.run([sys.executable, *argv[1:]], env=env, timeout=60, check=False)
    assert done.returncode == 0, shlex.join(argv)

    async def dead_letters() -> bool:
        return len((await relay.call("GET", "/dead-letters?subscriber=flaky"))[1]) == 4

    await wait_until_async(dead_letters, timeout=60)
    status, text = await relay.call("GET", "/metrics", raw=True)
    assert status == 200
    found = samples(text)
    assert value(found, "relay_ready") == 1.0
    assert value(found, "relay_records_ingested_total", account="alpha") == 4.0
    assert value(found, "relay_upstream_polls_total", account="alpha", outcome="ok") >= 1.0
    assert value(found, "relay_upstream_rate_limited_total", account="alpha") == 0.0
    assert value(found, "relay_account_status", account="alpha", status="ok") == 1.0
    assert value(found, "relay_poller_stuck", account="alpha") == 0.0
    assert value(found, "relay_poll_interval_seconds", account="alpha", mode="fixed") == 0.1
    assert value(found, "relay_cursor_lag_seconds", account="alpha") >= 19.0
    assert value(found, "relay_upstream_budget_spent", account="alpha") >= 1.0
    assert value(found, "relay_upstream_budget_limit", account="alpha") == 100000.0
    assert value(found, "relay_deliveries_total", subscriber="crm", outcome="delivered") == 4.0
    assert value(found, "relay_deliveries_total", subscriber="flaky", outcome="dead") == 4.0
    assert value(found, "relay_deliveries_total", subscriber="flaky", outcome="retry") == 8.0
    hist = "relay_delivery_attempt_duration_seconds"
    assert value(found, hist + "_count", subscriber="crm") == 4.0
    assert value(found, hist + "_bucket", subscriber="flaky", le="+Inf") == 12.0
    assert value(found, hist + "_sum", subscriber="crm") > 0.0
    assert value(found, "relay_queue_depth", subscriber="flaky", state="dead") == 4.0
    assert value(found, "relay_queue_depth", subscriber="crm", state="pending") == 0.0
    assert value(found, "relay_subscriber_disabled", subscriber="crm") == 0.0
    assert value(found, "relay_subscriber_paused", subscriber="crm") == 0.0
    assert value(found, "relay_subscriber_circuit_open", subscriber="crm") == 0.0
    assert any(name == "process_resident_memory_bytes" for name, _ in found)
    # Labels are config names and fixed enumerations only: no URL, no secret, no rid.
    names = {"alpha", "crm", "flaky"}
    for name, labels in found:
        for key, label in labels:
            if key in ("account", "subscriber"):
                assert label in names, (name, label)
        assert not any(str(r["rid"]) == label for r in made for _, label in labels)
    for secret in [KEY_A, *relay.secrets.values()]:
        assert secret not in text
    assert "127.0.0.1" not in text

    # A paused subscriber shows as paused; the token is needed for metrics.
    assert (await relay.call("POST", "/subscribers/crm/pause", {}))[0] == 200
    found = samples((await relay.call("GET", "/metrics", raw=True))[1])
    assert value(found, "relay_subscriber_paused", subscriber="crm") == 1.0
    async with aiohttp.ClientSession() as http, http.get(relay.base + "/metrics") as resp:
        assert resp.status == 401
    await relay.stop()


def exported_names() -> set[str]:
    names = set()
    for name in METRIC_NAMES:
        names.add(name)
        if name.endswith("_seconds") and "duration" in name:
            names.update({name + "_bucket", name + "_sum", name + "_count"})
    # Standard process metrics from prometheus-client's process collector.
    names.update({"process_resident_memory_bytes", "process_open_fds", "process_max_fds"})
    return names


def metric_refs(expr: str) -> set[str]:
    return set(re.findall(r"\b((?:relay|process)_[a-z_]+)\b", expr))


def test_dashboard_and_alerts_use_only_exported_metrics():
    exported = exported_names()
    dashboard = json.loads((ROOT / "docs" / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    rules = yaml.safe_load((ROOT / "docs" / "alerts.yml").read_text())
    alerts = [r for g in rules["groups"] for r in g["rules"]]
    assert {"RelayPollerStuck", "RelayQueueGrowing", "RelayUpstreamAuthFailed"} <= {
        a["alert"] for a in alerts
    }
    assert any("circuit_open" in a["expr"] for a in alerts)
    assert any("subscriber_disabled" in a["expr"] for a in alerts)
    for expr in exprs + [a["expr"] for a in alerts]:
        refs = metric_refs(expr)
        assert refs, expr
        assert refs <= exported, (expr, refs - exported)
    for alert in alerts:
        assert alert["annotations"]["summary"]
