"""Key rotation and ed25519 signing, verified with independent libraries (standardwebhooks for
HMAC, PyNaCl for ed25519), never with our own verifier."""

from __future__ import annotations

import base64
import time

import nacl.exceptions
import nacl.signing
import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from relay.core.keys import (
    Ed25519Key,
    HmacKey,
    generate_ed25519_pair,
    generate_hmac_secret,
    parse_signing_key,
    parse_signing_keys,
    signature_headers,
)

BODY = '{"type":"call.record","data":{"rid":1,"name":"José & <Co>"}}'.encode()
OLD = generate_hmac_secret(b"o" * 32)
NEW = generate_hmac_secret(b"n" * 32)
PRIVATE, PUBLIC = generate_ed25519_pair(b"s" * 32)


def nacl_verify(public: str, headers: dict[str, str], body: bytes) -> bool:
    key = nacl.signing.VerifyKey(base64.b64decode(public.removeprefix("whpk_")))
    message = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    for entry in headers["webhook-signature"].split(" "):
        version, _, sig = entry.partition(",")
        if version != "v1a":
            continue
        try:
            key.verify(message, base64.b64decode(sig))
            return True
        except nacl.exceptions.BadSignatureError:
            continue
    return False


def test_rotation_every_secret_verifies_newest_first() -> None:
    keys = parse_signing_keys([NEW, OLD])
    headers = signature_headers(keys, "msg_abc", time.time(), BODY)
    entries = headers["webhook-signature"].split(" ")
    assert len(entries) == 2 and all(e.startswith("v1,") for e in entries)
    assert (
        entries[0]
        == signature_headers(parse_signing_keys(NEW), "msg_abc", time.time(), BODY)[
            "webhook-signature"
        ]
    )
    for secret in (NEW, OLD):
        assert Webhook(secret).verify(BODY, headers, json_parse=False) is None
    stranger = generate_hmac_secret(b"x" * 32)
    with pytest.raises(WebhookVerificationError):
        Webhook(stranger).verify(BODY, headers, json_parse=False)


def test_ed25519_verifies_with_pynacl_and_hmac_alongside() -> None:
    keys = parse_signing_keys([PRIVATE, NEW])
    headers = signature_headers(keys, "msg_abc", time.time(), BODY)
    assert headers["webhook-signature"].startswith("v1a,")
    assert nacl_verify(PUBLIC, headers, BODY)
    assert not nacl_verify(PUBLIC, headers, BODY + b" ")
    _, other_public = generate_ed25519_pair(b"t" * 32)
    assert not nacl_verify(other_public, headers, BODY)
    # The HMAC receiver skips the v1a entry and still verifies its own.
    assert Webhook(NEW).verify(BODY, headers, json_parse=False) is None


def test_ed25519_only_is_ignored_by_hmac_verifiers() -> None:
    headers = signature_headers(parse_signing_keys(PRIVATE), "msg_1", time.time(), BODY)
    with pytest.raises(WebhookVerificationError):
        Webhook(NEW).verify(BODY, headers, json_parse=False)


def test_generated_pair_matches_and_is_libsodium_shaped() -> None:
    private, public = generate_ed25519_pair()
    raw = base64.b64decode(private.removeprefix("whsk_"))
    assert len(raw) == 64
    # PyNaCl derives the same public key from the seed half.
    signing = nacl.signing.SigningKey(raw[:32])
    assert base64.b64decode(public.removeprefix("whpk_")) == bytes(signing.verify_key)
    key = parse_signing_key(private)
    assert isinstance(key, Ed25519Key) and key.public_key() == public
    # A bare 32-byte seed is accepted too.
    seed_only = "whsk_" + base64.b64encode(raw[:32]).decode()
    assert parse_signing_key(seed_only).public_key() == public  # type: ignore[union-attr]


def test_generated_secrets_are_random_and_usable() -> None:
    a, b = generate_hmac_secret(), generate_hmac_secret()
    assert a != b and a.startswith("whsec_")
    assert isinstance(parse_signing_key(a), HmacKey)
    headers = signature_headers(parse_signing_keys(a), "m", time.time(), BODY)
    assert Webhook(a).verify(BODY, headers, json_parse=False) is None
    assert generate_ed25519_pair()[0] != generate_ed25519_pair()[0]


SECRET_TEXT = "whsk_" + base64.b64encode(b"q" * 63).decode()


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("nope", "signing key must be whsec_"),
        ("whsk_!!!", "whsk_ key must be followed by base64"),
        (SECRET_TEXT, "whsk_ key must hold 32 or 64 bytes"),
        ("whsk_" + base64.b64encode(b"s" * 32 + b"z" * 32).decode(), "public half does not match"),
        ([], "non-empty list"),
        ([NEW, "whsec_"], "secret[1]: signing secret must be whsec_"),
    ],
)
def test_bad_keys_never_echo_the_key(value: str | list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")) as e:
        parse_signing_keys(value)
    text = str(e.value)
    for secret in [value] if isinstance(value, str) else value:
        assert len(secret) < 8 or secret not in text


def test_keys_repr_hides_material() -> None:
    assert "key" not in repr(parse_signing_key(NEW)).replace("HmacKey", "").lower()
    assert repr(parse_signing_key(PRIVATE)) == "Ed25519Key()"


def test_generation_input_checks() -> None:
    with pytest.raises(ValueError):
        generate_hmac_secret(b"short")
    with pytest.raises(ValueError):
        generate_ed25519_pair(b"short")
