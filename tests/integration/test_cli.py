"""The `relay` command surface: help everywhere, config checking, and the demo end to end."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from relay.cli import main
from tests.helpers import GENEROUS

ROOT = Path(__file__).resolve().parents[2]

SUBCOMMANDS = [
    "run",
    "check-config",
    "demo",
    "status",
    "inspect",
    "redeliver",
    "dead-letters",
    "enable-subscriber",
    "backup",
    "keygen",
    "send-test",
]


@pytest.mark.parametrize("argv", [["--help"]] + [[c, "--help"] for c in SUBCOMMANDS])
def test_every_command_has_help(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 0
    assert "usage: relay" in capsys.readouterr().out


EXAMPLE_ENV = {
    "WEBFONES_API_KEY_MAIN": "main-key-0123456789",
    "WEBFONES_API_KEY_SALES": "sales-key-0123456789",
    "ZAPIER_WEBHOOK_SECRET": "whsec_" + "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=",
    "N8N_WEBHOOK_SECRET": "whsec_" + "ZmVkY2JhOTg3NjU0MzIxMGZlZGNiYTk4NzY1NDMyMTA=",
    "N8N_TOKEN": "n8n-token-abcdef123456",
    "CRM_WEBHOOK_SECRET": "whsec_" + "YWJjZGVmMDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODk=",
    "SLACK_WEBHOOK_SECRET": "whsec_" + "c2xhY2stc2lnbmluZy1rZXktMDEyMzQ1Njc4OWFi",
    "ADMIN_TOKEN": "admin-token-abcdef123456",
}


def test_check_config_accepts_the_example(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name, value in EXAMPLE_ENV.items():
        monkeypatch.setenv(name, value)
    assert main(["check-config", "--config", str(ROOT / "config.example.yaml")]) == 0
    out = capsys.readouterr()
    assert out.out.startswith("config OK: 2 account(s), 4 subscriber(s)")
    for secret in EXAMPLE_ENV.values():
        assert secret not in out.out + out.err


def test_bad_config_exits_2_with_one_line_per_problem(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "relay.yaml"
    cfg.write_text(
        "upstream:\n"
        "  pol_interval: 5s\n"
        "  accounts: [{name: main, api_key: secret-key-123456}]\n"
        "subscribers:\n"
        "  - {name: a, url: 'ftp://x', secret: 'whsec_bm90LWJhc2U2NA'}\n"
    )
    for command in ("check-config", "run"):
        assert main([command, "--config", str(cfg)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert "upstream.pol_interval: unknown key" in err
        assert "subscribers[0].url: must be http(s) URL" in err
        assert any(line.startswith("subscribers[0].secret: ") for line in err)
        assert len(err) == 3
        assert "secret-key-123456" not in "\n".join(err)


def test_demo_delivers_every_simulated_call_with_valid_signatures() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "relay", "demo", "--duration", "3", "--rate", "4", "--seed", "3"],
        capture_output=True,
        text=True,
        timeout=GENEROUS,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    summary = re.search(
        r"(\d+) calls produced; crm received (\d+), slack received (\d+) as Slack messages, "
        r"missed received (\d+) of (\d+) missed calls .*rejected signatures: (\d+); "
        r"refused by Slack as malformed: (\d+)",
        proc.stdout,
    )
    assert summary, proc.stdout
    produced, crm, slack, missed, want_missed, rejected, malformed = map(int, summary.groups())
    assert produced > 0
    assert crm == produced and slack == produced
    assert missed == want_missed
    assert rejected == 0 and malformed == 0
    assert len(re.findall(r"^\d\d:\d\d:\d\d  crm ", proc.stdout, re.M)) == produced
    assert len(re.findall(r"^\d\d:\d\d:\d\d  slack  \S.* call ", proc.stdout, re.M)) == produced
    missed_lines = re.findall(r"^\d\d:\d\d:\d\d  missed .*", proc.stdout, re.M)
    assert len(missed_lines) == missed
    assert all(" INCOMING " in line and " ANSWERED " not in line for line in missed_lines)


def test_demo_without_duration_runs_until_ctrl_c() -> None:
    """The README's first command runs `relay demo` with no options: it must run, then stop
    cleanly on Ctrl-C."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "relay", "demo", "--rate", "5", "--seed", "4"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        assert proc.stdout is not None
        lines = []
        for line in proc.stdout:  # wait for the first delivered call, however long it takes
            lines.append(line)
            if re.match(r"^\d\d:\d\d:\d\d  (crm|slack|missed) ", line):
                break
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=GENEROUS)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "calls produced" in out, "".join(lines) + out + err
    assert "rejected signatures: 0" in out
