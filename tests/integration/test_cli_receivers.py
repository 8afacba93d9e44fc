"""The issue-10 commands as real processes: ``relay keygen``, ``relay send-test`` against
local receivers, and ``relay check-config --explain`` over a state a relay filled."""

from __future__ import annotations

import asyncio
import base64
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml
from nacl.signing import SigningKey
from standardwebhooks.webhooks import Webhook

from relay.sim.chat_receivers import SlackLike
from relay.sim.receiver import Reply
from tests.helpers import KEY_A, ago, new_secret
from tests.opsrelay import ops_relay, subscriber

ROOT = Path(__file__).resolve().parents[2]


def relay_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "relay", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )


async def relay_cli_async(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """The CLI as a child process while this test's event loop keeps serving receivers."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "relay",
        *args,
        cwd=ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def write_config(tmp_path: Path, subscribers: list[dict[str, Any]], **upstream: Any) -> Path:
    doc = {
        "state": str(tmp_path / "state.db"),
        "upstream": {
            "base_url": upstream.pop("base_url", "http://127.0.0.1:9"),
            "accounts": [{"name": "alpha", "api_key": KEY_A}],
            **upstream,
        },
        "subscribers": subscribers,
    }
    path = tmp_path / "relay.yaml"
    path.write_text(yaml.safe_dump(doc, allow_unicode=True))
    return path


def test_keygen_prints_a_secret_standardwebhooks_accepts() -> None:
    proc = relay_cli("keygen")
    assert proc.returncode == 0, proc.stderr
    [secret] = proc.stdout.split()
    assert secret.startswith("whsec_") and len(base64.b64decode(secret[6:])) == 32
    Webhook(secret)  # the reference library takes it as is
    assert relay_cli("keygen").stdout != proc.stdout


def test_keygen_ed25519_prints_a_matching_pair() -> None:
    proc = relay_cli("keygen", "--ed25519")
    assert proc.returncode == 0, proc.stderr
    private, public = proc.stdout.split()
    assert private.startswith("whsk_") and public.startswith("whpk_")
    seed = base64.b64decode(private.removeprefix("whsk_"))[:32]
    derived = SigningKey(seed).verify_key.encode()
    assert derived == base64.b64decode(public.removeprefix("whpk_"))


async def test_send_test_posts_a_slack_message_and_exits_0(tmp_path) -> None:
    slack = SlackLike()
    await slack.start()
    try:
        secret = new_secret()
        sub = {"name": "alerts", "url": slack.url("t"), "secret": secret, "format": "slack"}
        config = write_config(tmp_path, [sub])
        code, out, err = await relay_cli_async("send-test", "alerts", "--config", str(config))
    finally:
        await slack.stop()
    assert code == 0, out + err
    assert "format slack, 1 signature(s) (v1)" in out
    assert "receiver answered HTTP 200" in out and "response: ok" in out
    [accepted] = slack.accepted
    assert accepted.body["text"].startswith("Incoming call from B WHITTAKER")
    assert accepted.headers["webhook-id"].startswith("msg_test_")
    assert secret not in out + err


async def test_send_test_exits_1_and_escapes_the_answer(tmp_path, receiver_factory) -> None:
    rx, url = await receiver_factory()
    rx.script(Reply.status(500, body=b"boom\x1b[31m\r\nforged: line"))
    sub = {"name": "crm", "url": url + "/hook", "secret": new_secret()}
    sub["filter"] = {"call.missed": True}  # the (answered) sample would not pass it
    config = write_config(tmp_path, [sub])
    code, out, err = await relay_cli_async("send-test", "crm", "--config", str(config))
    assert code == 1, out + err
    assert "receiver answered HTTP 500" in out
    assert "boom\\x1b[31m\\r\\nforged: line" in out and "\x1b" not in out
    assert "note: the filter of crm would not pass this sample call" in out
    [request] = rx.requests
    Webhook(sub["secret"]).verify(request.body, request.headers)  # the envelope, signed
    code, out, err = await relay_cli_async("send-test", "nobody", "--config", str(config))
    assert code == 2 and "no subscriber named 'nobody'" in err


async def test_explain_shows_which_stored_records_each_filter_passes(
    sim, receiver_factory, tmp_path
) -> None:
    rx, url = await receiver_factory()
    missed = {"direction": "INCOMING", "disposition": {"$ne": "ANSWERED"}}
    relay = ops_relay(tmp_path, sim.url, [subscriber("all", url),
                                          subscriber("missed", url, filter=missed)])  # fmt: skip
    config = str(relay.config)
    relay.write()
    code, out, err = await relay_cli_async("check-config", "--config", config, "--explain",
                                           env=relay.env)  # fmt: skip
    assert code == 1 and "no state file" in err  # nothing stored yet: says so, creates nothing
    assert not relay.state.exists()
    made = [
        sim.add_record(KEY_A, started_at=ago(50), direction="INCOMING", disposition="BUSY"),
        sim.add_record(KEY_A, started_at=ago(40), direction="INCOMING", disposition="ANSWERED"),
        sim.add_record(KEY_A, started_at=ago(30), direction="OUTGOING", disposition="ANSWERED"),
    ]
    await relay.start()
    await rx.wait_count(4, timeout=60)  # 3 to "all", 1 to "missed"
    # While `relay run` owns the state, --explain reads a lock-free snapshot of it.
    code, out, err = await relay_cli_async(
        "check-config", "--config", config, "--explain", "--last", "2", env=relay.env
    )
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("config OK")
    rows = {line.split()[0]: line.split() for line in lines if line[:1].isdigit()}
    newest = [str(r["rid"]) for r in made][::-1][:2]
    assert list(rows) == newest  # the last two stored, newest first
    assert rows[newest[0]][-2:] == ["yes", "no"]  # outgoing: not a missed call
    assert rows[newest[1]][-2:] == ["yes", "no"]  # answered
    assert "missed: 0 of 2 pass (filter " in out and "all: 2 of 2 pass (no filter)" in out
    code, out, _ = await relay_cli_async("check-config", "--config", config, "--explain",
                                         env=relay.env)  # fmt: skip
    assert "missed: 1 of 3 pass" in out
    # The relay kept running and owning its state throughout.
    sim.add_record(KEY_A, started_at=ago(20), direction="INCOMING", disposition="NO ANSWER")
    await rx.wait_count(6, timeout=60)
    await relay.stop()
