"""Receiver misbehaviour, one case each, against the real relay.

Each misbehaving attempt must end within the subscriber's timeout (read from the attempt's
recorded latency: a semantic bound with a margin for a busy machine, not a benchmark), keep at
most ``delivery.response_cap`` bytes of what the receiver said, and be recorded with a clear
error. Then the record is delivered, signed, under its one webhook-id, or (for a certificate that
never verifies) dead-lettered with that reason, never silently dropped.
"""

from __future__ import annotations

import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import trustme

from relay.core.status import QueueCounts
from relay.sim.receiver import ReceivedRequest, Receiver, Reply
from relay.sim.simulator import SimulatedWebFones
from tests.helpers import (
    KEY_A,
    Sub,
    ago,
    make_settings,
    new_secret,
    rids,
    running,
    sqlite_rows,
    verify_all,
    wait_until_async,
)

TIMEOUT = 0.5  # seconds: the subscriber's timeout in these tests
MARGIN = 0.5  # seconds of scheduling slack allowed on top of it
CAP = 1024  # delivery.response_cap

ReceiverFactory = Callable[..., Awaitable[tuple[Receiver, str]]]


def settings_for(tmp_path: Path, sim: SimulatedWebFones, url: str, secret: str) -> Any:
    sub = Sub("hook", url, secret, {"timeout": f"{TIMEOUT * 1000:g}ms", "retry": ["50ms"] * 3})
    return make_settings(tmp_path, sim.url, [sub], delivery={"response_cap": CAP})


def attempts(tmp_path: Path) -> list[tuple[Any, ...]]:
    return sqlite_rows(
        tmp_path / "state.db",
        "SELECT status, error, latency_ms, length(response) FROM attempts ORDER BY rowid",
    )


def answered_2xx(requests: list[ReceivedRequest]) -> bool:
    return any(200 <= r.status_sent < 300 for r in requests)


async def deliver_after(
    reply: Reply,
    sim: SimulatedWebFones,
    receiver_factory: ReceiverFactory,
    tmp_path: Path,
) -> tuple[Receiver, list[tuple[Any, ...]]]:
    """Script ``reply`` once, then let the relay deliver one record; return the attempts."""
    rx, url = await receiver_factory()
    rx.script(reply)
    secret = new_secret()
    record = sim.add_record(KEY_A, started_at=ago(10))
    async with running(settings_for(tmp_path, sim, url, secret)) as relay:
        assert relay.supervisor is not None
        store = relay.supervisor.store

        async def delivered() -> bool:
            hook = (await store.stats()).subscribers.get("hook", QueueCounts())
            return hook.delivered == 1

        await wait_until_async(delivered)
    assert set(rids(rx.requests)) == {record["rid"]}
    assert len({r.headers["webhook-id"] for r in rx.requests}) == 1
    for doc in verify_all(rx.requests, secret):
        assert doc["data"] == record
    rows = attempts(tmp_path)
    for status, error, latency_ms, kept in rows:
        assert latency_ms <= (TIMEOUT + MARGIN) * 1000, (status, error, latency_ms)
        assert kept <= CAP
    return rx, rows


@pytest.mark.parametrize(
    ("reply", "error"),
    [
        pytest.param(Reply.hang(), f"timeout after {TIMEOUT:g}s", id="no-response"),
        pytest.param(
            Reply.trickle_headers(0.05), f"timeout after {TIMEOUT:g}s", id="trickled-headers"
        ),
        pytest.param(Reply.reset(), "connection closed without a response", id="reset"),
        pytest.param(
            Reply.slow(TIMEOUT * 4, then=Reply.status(200)),
            f"timeout after {TIMEOUT:g}s",
            id="slow-past-timeout",
        ),
    ],
)
async def test_no_usable_answer_fails_the_attempt_within_the_timeout(
    sim, receiver_factory, tmp_path, reply: Reply, error: str
) -> None:
    _, rows = await deliver_after(reply, sim, receiver_factory, tmp_path)
    (status, first_error, _, _), *_, last = rows
    assert (status, first_error) == (None, error)
    assert last[0] == 200 and len(rows) == 2


@pytest.mark.parametrize("code", [301, 302, 307, 308])
async def test_redirect_is_a_failed_attempt_and_not_followed(
    sim, receiver_factory, tmp_path, code: int
) -> None:
    elsewhere, target = await receiver_factory()
    reply = Reply.redirect(f"{target}/elsewhere", code)
    _, rows = await deliver_after(reply, sim, receiver_factory, tmp_path)
    (status, error, _, _), (last_status, *_) = rows
    assert status == code and error == f"redirect to '{target}/elsewhere' not followed"
    assert last_status == 200
    assert elsewhere.requests == [], "the signed body must not go where the redirect points"


async def test_huge_response_body_is_cut_at_the_cap(sim, receiver_factory, tmp_path) -> None:
    rx, rows = await deliver_after(Reply.huge(50 * 1024 * 1024), sim, receiver_factory, tmp_path)
    # 200 is an answer: delivered on the first attempt, with only the first CAP bytes kept.
    [(status, error, _, kept)] = rows
    assert (status, error, kept) == (200, None, CAP)
    assert len(rx.requests) == 1


async def test_endless_response_body_ends_within_the_timeout(
    sim, receiver_factory, tmp_path
) -> None:
    rx, rows = await deliver_after(Reply.stream_forever(10), sim, receiver_factory, tmp_path)
    # The 200 status line arrived, so the receiver accepted the call: delivered, not retried,
    # even though the body never ended (the attempt still stops at the timeout).
    [(status, error, _, kept)] = rows
    assert (status, error) == (200, f"timeout after {TIMEOUT:g}s")
    assert kept <= CAP and len(rx.requests) == 1


@pytest.fixture(scope="module")
def untrusted_tls() -> ssl.SSLContext:
    """A server context whose certificate chains to a CA no system trusts."""
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(context)
    return context


async def test_certificate_that_does_not_verify_is_rejected(
    sim, receiver_factory, tmp_path, untrusted_tls
) -> None:
    rx, url = await receiver_factory(ssl_context=untrusted_tls)
    assert url.startswith("https://")
    sim.add_record(KEY_A, started_at=ago(10))
    async with running(settings_for(tmp_path, sim, url, new_secret())) as relay:
        assert relay.supervisor is not None
        store = relay.supervisor.store

        async def dead() -> bool:
            return len(await store.dead_letters("hook", 10)) == 1

        await wait_until_async(dead)
        [letter] = await store.dead_letters("hook", 10)
    assert letter.last_error is not None
    assert letter.last_error.startswith("TLS certificate did not verify")
    rows = attempts(tmp_path)
    assert len(rows) == 4  # the first attempt and three retries, each refused the same way
    for status, error, latency_ms, _ in rows:
        assert status is None and error.startswith("TLS certificate did not verify")
        assert latency_ms <= (TIMEOUT + MARGIN) * 1000
    assert rx.requests == [], "nothing was sent to a server that could not prove who it is"
