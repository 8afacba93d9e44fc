"""One delivery attempt (:class:`relay.delivery.sender.Sender`) against a real local receiver:
what it sends, and how every kind of answer becomes an :class:`AttemptOutcome`. Signatures are
checked with the independent ``standardwebhooks`` package."""

from __future__ import annotations

import socket
import time
from collections.abc import AsyncIterator

import pytest
from standardwebhooks.webhooks import Webhook

from relay.config.schema import SubscriberSettings
from relay.core.models import Delivery
from relay.core.signing import webhook_id
from relay.delivery.sender import Sender
from relay.http1.client import Http1Client
from relay.sim.receiver import Reply
from tests.helpers import Sub, make_settings, new_secret

BODY = b'{"type":"call.record","data":{"rid":7}}'
DELIVERY = Delivery(id=1, subscriber="crm", account="alpha", rid=7, body=BODY, attempts=0)


@pytest.fixture
async def client() -> AsyncIterator[Http1Client]:
    c = Http1Client()
    try:
        yield c
    finally:
        c.close()


def subscriber(tmp_path, url: str, secret: str, **extra: object) -> SubscriberSettings:
    settings = make_settings(tmp_path, "http://127.0.0.1:9", [Sub("crm", url, secret, extra)])
    return settings.subscribers[0]


async def test_sends_the_body_signed_with_fixed_headers(tmp_path, receiver_factory, client) -> None:
    rx, url = await receiver_factory()
    secret = new_secret()
    sub = subscriber(tmp_path, url, secret, headers={"X-Api-Key": "crm-key"})
    outcome = await Sender(client, sub, 4096).send(DELIVERY)
    assert outcome.status == 200 and outcome.attempt.error is None
    assert outcome.webhook_id == webhook_id("alpha", 7, "crm")
    [req] = rx.requests
    assert req.body == BODY
    assert req.headers["x-api-key"] == "crm-key"
    assert req.headers["content-type"] == "application/json"
    assert req.headers["webhook-id"] == outcome.webhook_id
    Webhook(secret).verify(req.body, dict(req.headers))  # raises unless authentic and fresh
    assert abs(int(req.headers["webhook-timestamp"]) - time.time()) < 300


@pytest.mark.parametrize(
    ("reply", "status", "error", "retry_after"),
    [
        (Reply.status(500, body=b"boom"), 500, "HTTP 500", None),
        (Reply.status(429, {"Retry-After": "7"}), 429, "HTTP 429", 7.0),
        (Reply.status(503, {"Retry-After": "2"}), 503, "HTTP 503", 2.0),
        (Reply.status(400, {"Retry-After": "9"}), 400, "HTTP 400", None),  # only 429/503
        (Reply.redirect("https://elsewhere.example/"), 307, "redirect to", None),
        (Reply.status(204), 204, None, None),
    ],
)
async def test_each_answer_becomes_an_outcome(
    tmp_path, receiver_factory, client, reply, status, error, retry_after
) -> None:
    rx, url = await receiver_factory()
    rx.script(reply)
    outcome = await Sender(client, subscriber(tmp_path, url, new_secret()), 4096).send(DELIVERY)
    assert outcome.status == status
    if error is None:
        assert outcome.attempt.error is None
    else:
        assert outcome.attempt.error is not None and error in outcome.attempt.error
    assert outcome.retry_after == (None if retry_after is None else pytest.approx(retry_after))


async def test_response_excerpt_is_capped(tmp_path, receiver_factory, client) -> None:
    rx, url = await receiver_factory()
    rx.script(Reply.status(500, body=b"x" * 10_000))
    outcome = await Sender(client, subscriber(tmp_path, url, new_secret()), 64).send(DELIVERY)
    assert outcome.status == 500
    assert len(outcome.attempt.response) <= 64


async def test_a_receiver_slower_than_the_timeout_ends_the_attempt(
    tmp_path, receiver_factory, client
) -> None:
    rx, url = await receiver_factory()
    rx.script(Reply.hang())
    sub = subscriber(tmp_path, url, new_secret(), timeout="200ms")
    outcome = await Sender(client, sub, 4096).send(DELIVERY)
    assert outcome.status is None
    assert outcome.attempt.error == "timeout after 0.2s"


async def test_nothing_listening_is_a_connection_error(tmp_path, client) -> None:
    with socket.socket() as s:  # a port that was free a moment ago and has no listener
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sub = subscriber(tmp_path, f"http://127.0.0.1:{port}/hook", new_secret())
    outcome = await Sender(client, sub, 4096).send(DELIVERY)
    assert outcome.status is None
    assert outcome.attempt.error is not None and outcome.attempt.error.startswith("cannot connect")
