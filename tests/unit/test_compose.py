"""docker-compose.yml (PostgreSQL and three relays, docs/SCALING.md) is what it says: parsed
here, since `docker compose config` needs a docker CLI with the compose plugin (run too, when
there is one), and its relay config loads into settings that share one PostgreSQL."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from relay.config import load_settings

ROOT = Path(__file__).resolve().parents[2]
ENV = {"POSTGRES_PASSWORD": "pw-test", "WEBFONES_API_KEY": "k" * 24, "CRM_WEBHOOK_SECRET": ""}


def _interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's ${NAME} and ${NAME:?message} forms, enough for this file."""
    return re.sub(r"\$\{(\w+)(?::\?[^}]*)?\}", lambda m: env[m.group(1)], text)


def test_compose_runs_three_relays_on_one_postgres() -> None:
    doc = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = doc["services"]
    assert set(services) == {"postgres", "relay-1", "relay-2", "relay-3"}
    assert services["postgres"]["healthcheck"]["test"]
    states = set()
    for name in ("relay-1", "relay-2", "relay-3"):
        relay = services[name]
        assert relay["depends_on"]["postgres"]["condition"] == "service_healthy"
        assert relay["volumes"] == ["./deploy/relay.yaml:/config/relay.yaml:ro"]
        states.add(relay["environment"]["RELAY_STATE"])
    [state] = states  # one state for all three
    assert state.startswith("postgresql://") and "@postgres:5432/" in state


def test_the_compose_config_loads_as_a_shared_state(tmp_path: Path) -> None:
    from tests.helpers import new_secret

    env = {**ENV, "CRM_WEBHOOK_SECRET": new_secret()}
    doc = yaml.safe_load(_interpolate((ROOT / "docker-compose.yml").read_text(), env))
    relay_env = {k: str(v) for k, v in doc["services"]["relay-1"]["environment"].items()}
    settings = load_settings(ROOT / "deploy" / "relay.yaml", relay_env)
    assert settings.state.startswith("postgresql://relay:pw-test@postgres:5432/relay")
    assert settings.cluster.lease_ttl == 15.0
    assert [a.name for a in settings.upstream.accounts] == ["main"]


@pytest.mark.skipif(shutil.which("docker") is None, reason="no docker CLI")
def test_docker_compose_config_accepts_it() -> None:
    probe = subprocess.run(["docker", "compose", "version"], capture_output=True, check=False)
    if probe.returncode != 0:
        pytest.skip("the docker CLI has no compose plugin")
    env = {"PATH": "/usr/bin:/bin:/usr/local/bin", **ENV}
    done = subprocess.run(
        ["docker", "compose", "-f", str(ROOT / "docker-compose.yml"), "config", "-q"],
        capture_output=True,
        env=env,
        check=False,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr.decode()
