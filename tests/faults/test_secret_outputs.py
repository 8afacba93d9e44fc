"""Credentials in the state URL never reach an output (issue 8 §3 #5): ``relay check-config``
prints the state with its password masked, and ``relay status`` / ``relay run`` that cannot use
it name it masked on stderr. Real config files, the real CLI entry point."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from relay.cli import main

PASSWORD = "pg-Pa55word-that-must-not-show"
STATE = f"postgresql://relay:{PASSWORD}@127.0.0.1:9/relay"
CONFIG = f"""
state: "{STATE}"
upstream:
  base_url: http://127.0.0.1:9
  accounts: [{{name: main, api_key: key-0123456789abcdef}}]
"""


@pytest.fixture
def config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in [n for n in os.environ if n.startswith("RELAY_")]:
        monkeypatch.delenv(name)
    path = tmp_path / "relay.yaml"
    path.write_text(CONFIG)
    return path


def test_check_config_masks_the_state_password(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["check-config", "--config", str(config)]) == 0
    out = capsys.readouterr()
    assert PASSWORD not in out.out + out.err
    assert "state postgresql://relay:***@127.0.0.1:9/relay" in out.out


@pytest.mark.parametrize("command", ["status", "dead-letters", "enable-subscriber"])
def test_offline_commands_mask_the_state_password(
    config: Path, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    argv = [command, "--config", str(config)] + (["crm"] if command == "enable-subscriber" else [])
    assert main(argv) == 1
    out = capsys.readouterr()
    assert PASSWORD not in out.out + out.err
    assert "postgresql://relay:***@127.0.0.1:9/relay" in out.err


def test_run_masks_the_state_password(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        assert main(["run", "--config", str(config)]) == 1
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in handlers:
            root.addHandler(handler)
        root.setLevel(level)
    out = capsys.readouterr()
    assert PASSWORD not in out.out + out.err
    assert "cannot use state postgresql://relay:***@127.0.0.1:9/relay" in out.err
