"""Hostile configuration files (issue 8 §3 #11): a YAML "billion laughs" alias bomb is refused
at once with one clear line, while ordinary anchors and merge keys keep working. Real files,
the real CLI (in process, and the installed command under a memory limit)."""

from __future__ import annotations

import resource
import subprocess
import sys
from pathlib import Path

import pytest

from relay import cli
from relay.config.schema import load_settings


def bomb(levels: int, width: int = 9) -> str:
    """``levels`` lists of ``width`` aliases of the list before: width**levels strings."""
    lines = [f"l0: &l0 [{', '.join(['lol'] * width)}]"]
    for n in range(1, levels):
        lines.append(f"l{n}: &l{n} [{', '.join([f'*l{n - 1}'] * width)}]")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("levels", [6, 9])
def test_an_alias_bomb_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], levels: int
) -> None:
    path = tmp_path / "bomb.yaml"
    path.write_text(bomb(levels))
    assert len(path.read_bytes()) < 500
    assert cli.main(["check-config", "--config", str(path)]) == cli.EXIT_CONFIG
    err = capsys.readouterr().err
    assert err.splitlines() == [
        "config: invalid YAML: aliases expand the document to more than 100000 values"
    ]


def _limit_memory() -> None:
    limit = 512 * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


@pytest.mark.slow
def test_the_installed_command_refuses_a_bomb_within_a_memory_limit(tmp_path: Path) -> None:
    path = tmp_path / "bomb.yaml"
    path.write_text(bomb(10))  # 10**9 values expanded; about 450 bytes written
    done = subprocess.run(
        [sys.executable, "-m", "relay", "check-config", "--config", str(path)],
        capture_output=True,
        text=True,
        preexec_fn=_limit_memory,
        timeout=50,
    )
    assert done.returncode == 2, done.stderr[-500:]
    assert "aliases expand the document" in done.stderr


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("a: &a [*a]\n", "an alias refers to a node that contains it"),
        ("a: " + "[" * 80 + "]" * 80 + "\n", "nested more than 64 levels deep"),
        ("a: " + "[" * 5000 + "]" * 5000 + "\n", "nested"),
    ],
    ids=["self-reference", "deep", "very-deep"],
)
def test_self_references_and_deep_nesting_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, problem: str
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    assert cli.main(["check-config", "--config", str(path)]) == cli.EXIT_CONFIG
    [line] = capsys.readouterr().err.splitlines()
    assert line.startswith("config: invalid YAML") and problem in line


def test_ordinary_anchors_and_merge_keys_still_work(tmp_path: Path) -> None:
    # 2,000 subscribers sharing one anchored definition through merge keys.
    first = (
        "  - &sub {name: s0, url: 'http://127.0.0.1:9/0', timeout: 5s,\n"
        "      retry: [1s, 5s, 30s, 1m, 5m],\n"
        "      secret: whsec_MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=}\n"
    )
    rest = "".join(
        f"  - {{<<: *sub, name: s{i}, url: 'http://127.0.0.1:9/{i}'}}\n" for i in range(1, 2000)
    )
    path = tmp_path / "anchors.yaml"
    path.write_text(
        "upstream:\n  accounts: [{name: main, api_key: key-0123456789abcdef}]\n"
        "subscribers:\n" + first + rest
    )
    settings = load_settings(path, {})
    assert len(settings.subscribers) == 2000
    assert all(s.retry == [1.0, 5.0, 30.0, 60.0, 300.0] for s in settings.subscribers)
    assert settings.subscribers[1999].url == "http://127.0.0.1:9/1999"
