"""Signing checked against the independent `standardwebhooks` reference implementation."""

from __future__ import annotations

import base64
import re
import time
import traceback
from datetime import UTC, datetime

import pytest
from standardwebhooks.webhooks import Webhook

from relay.core import keys
from relay.core.signing import (
    SignatureError,
    decode_secret,
    sign,
    verify,
    webhook_id,
)

KEY = bytes(range(32))
SECRET = "whsec_" + base64.b64encode(KEY).decode()
NOW = 1_751_403_293.75
BODY = b'{"type":"call.record","account":"acme","data":{"rid":1}}'


def signature_headers(key: bytes, msg_id: str, now: float, body: bytes) -> dict[str, str]:
    """The relay's one header builder, with a single HMAC key."""
    return keys.signature_headers((keys.HmacKey(key),), msg_id, now, body)


@pytest.mark.parametrize(
    ("key", "msg_id", "timestamp", "body"),
    [
        (KEY, "msg_ylxt4nkor6bioox275gvppazcf", 1_751_403_293, BODY),
        (KEY, "msg_1", 0, b""),
        (b"k", "msg_2", 1, b"{}"),
        (b"\xff" * 64, "msg_3", 2_000_000_000, b"x" * 100_000),
        (b"\x00" * 100, "msg_4", 1_700_000_000, '{"name":"Zoë ☎ 日本"}'.encode()),
        (KEY, "msg_with.dots.inside", 1_751_403_293, b"a.b.c\n"),
    ],
)
def test_sign_matches_reference(key: bytes, msg_id: str, timestamp: int, body: bytes) -> None:
    reference = Webhook(key).sign(msg_id, datetime.fromtimestamp(timestamp, UTC), body.decode())
    assert sign(key, msg_id, timestamp, body) == reference


def test_headers_verify_with_reference() -> None:
    # The reference verifier reads the real clock, so these headers are made for the real now.
    headers = signature_headers(KEY, "msg_abc", time.time(), BODY)
    assert Webhook(SECRET).verify(BODY, headers, json_parse=False) is None


def test_signature_headers_shape() -> None:
    headers = signature_headers(KEY, "msg_abc", NOW, BODY)
    assert headers == {
        "webhook-id": "msg_abc",
        "webhook-timestamp": "1751403293",  # whole seconds, floored
        "webhook-signature": sign(KEY, "msg_abc", 1_751_403_293, BODY),
    }


@pytest.mark.parametrize(
    ("secret", "key"),
    [
        (SECRET, KEY),
        ("whsec_" + base64.b64encode(b"abcd").decode(), b"abcd"),
        ("whsec_" + base64.b64encode(b"abcde").decode().rstrip("="), b"abcde"),  # unpadded
        ("whsec_QUJDRA", b"ABCD"),
        (" whsec_QUJDRA==\n", b"ABCD"),  # pasted from a file: surrounding space is ignored
    ],
)
def test_decode_secret(secret: str, key: bytes) -> None:
    assert decode_secret(secret) == key
    assert decode_secret(secret) == Webhook(secret.strip())._whsecret


@pytest.mark.parametrize(
    "secret",
    [
        "",
        "whsec_",
        "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",  # no prefix
        "WHSEC_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        "whsec_not base64!",
        "whsec_MfKQ9r8G*KYqrTwjUPD8ILPZIo2LaLaSw",
        "whsec_QUJDR",  # impossible length
        "whsec_QU JD",
    ],
)
def test_decode_secret_rejects_without_echoing(secret: str) -> None:
    with pytest.raises(
        ValueError, match=r"^signing secret must be whsec_ followed by base64$"
    ) as e:
        decode_secret(secret)
    # Nothing printed with the error (chained causes included) may quote the secret.
    printed = "".join(traceback.format_exception(e.value))
    assert secret.removeprefix("whsec_") == "" or secret.removeprefix("whsec_") not in printed


def test_verify_accepts_own_signature() -> None:
    verify(KEY, signature_headers(KEY, "msg_abc", NOW, BODY), BODY, NOW)


def test_verify_accepts_any_matching_entry_and_any_header_case() -> None:
    good = sign(KEY, "msg_abc", int(NOW), BODY)
    other = sign(b"other key", "msg_abc", int(NOW), BODY)
    headers = {
        "Webhook-Id": "msg_abc",
        "WEBHOOK-TIMESTAMP": str(int(NOW)),
        "webhook-signature": f"v1a,AAAA {other} v1,@@@ {good}",
    }
    verify(KEY, headers, BODY, NOW)


def _headers(**changes: str | None) -> dict[str, str]:
    headers = signature_headers(KEY, "msg_abc", NOW, BODY)
    for name, value in changes.items():
        header = name.replace("_", "-")
        if value is None:
            del headers[header]
        else:
            headers[header] = value
    return headers


@pytest.mark.parametrize(
    ("key", "headers", "body", "now", "reason"),
    [
        (KEY, _headers(), BODY + b" ", NOW, "no matching signature"),
        (KEY, _headers(), b"", NOW, "no matching signature"),
        (b"wrong key", _headers(), BODY, NOW, "no matching signature"),
        (KEY, _headers(webhook_id="msg_other"), BODY, NOW, "no matching signature"),
        (KEY, _headers(), BODY, NOW + 301, "too old"),
        (KEY, _headers(), BODY, NOW - 301, "too new"),
        (KEY, _headers(webhook_id=None), BODY, NOW, "missing webhook-id"),
        (KEY, _headers(webhook_timestamp=None), BODY, NOW, "missing webhook-timestamp"),
        (KEY, _headers(webhook_signature=None), BODY, NOW, "missing webhook-signature"),
        (KEY, _headers(webhook_signature=""), BODY, NOW, "missing webhook-signature"),
        (KEY, _headers(webhook_timestamp="soon"), BODY, NOW, "not an integer"),
        (KEY, _headers(webhook_timestamp="1751403293.5"), BODY, NOW, "not an integer"),
        (KEY, _headers(webhook_timestamp="9" * 5000), BODY, NOW, "not an integer"),
        (KEY, _headers(webhook_signature="v1"), BODY, NOW, "no matching signature"),
        (KEY, _headers(webhook_signature="v2,abc v1,"), BODY, NOW, "no matching signature"),
    ],
)
def test_verify_rejects(
    key: bytes, headers: dict[str, str], body: bytes, now: float, reason: str
) -> None:
    with pytest.raises(SignatureError, match=reason):
        verify(key, headers, body, now)


def test_verify_tolerance_edges() -> None:
    headers = _headers()
    verify(KEY, headers, BODY, int(NOW) + 300)  # exactly at the tolerance: still accepted
    verify(KEY, headers, BODY, int(NOW) - 300)
    verify(KEY, headers, BODY, NOW + 1000, tolerance=2000)


def test_webhook_id_is_stable_and_safe() -> None:
    # Pinned: receivers de-duplicate on this id, so it must never change between versions.
    assert webhook_id("acme", 211159, "crm") == "msg_ylxt4nkor6bioox275gvppazcf"
    ids = {
        webhook_id(account, rid, subscriber)
        for account, rid, subscriber in [
            ("acme", 1, "crm"),
            ("acme", 2, "crm"),
            ("acme", 1, "crm2"),
            ("acme2", 1, "crm"),
            ("acme", 11, "crm"),
            ("acme1", 1, "crm"),  # would collide with ("acme", 11, ...) without a separator
            ("", 0, ""),
        ]
    }
    assert len(ids) == 7
    assert all(re.fullmatch(r"msg_[a-z2-7]{26}", i) for i in ids)
