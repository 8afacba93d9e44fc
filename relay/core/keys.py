"""Signing keys: rotation (several keys per subscriber) and asymmetric ``v1a`` signatures.

Standard Webhooks lets ``webhook-signature`` carry several space-separated ``version,base64``
entries; a receiver accepts the request if any entry verifies with a key it holds. That is what
makes rotation painless: list the new key first and keep the old one until every receiver has
switched. Two kinds of key are accepted:

- ``whsec_<base64>``: a shared HMAC-SHA256 secret, signatures ``v1,<base64>``;
- ``whsk_<base64>``: an ed25519 private key, signatures ``v1a,<base64>``, so the receiver holds
  only the public ``whpk_<base64>`` key and cannot forge a request itself. The private key is the
  64-byte libsodium form (seed then public key), as other Standard Webhooks senders write it; a
  bare 32-byte seed is accepted too. The public key is the raw 32 bytes.

Each signature is over ``{webhook-id}.{webhook-timestamp}.{body}``. Entries come in the order
the keys are configured, which the configuration documents as newest first. No message here
ever includes key material.
"""

from __future__ import annotations

import base64
import binascii
import math
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from relay.core.signing import SECRET_PREFIX, decode_secret, sign

PRIVATE_PREFIX = "whsk_"
PUBLIC_PREFIX = "whpk_"
_SEED_BYTES = 32
_HMAC_KEY_BYTES = 32


@dataclass(frozen=True, slots=True)
class HmacKey:
    """A decoded ``whsec_`` secret."""

    key: bytes = field(repr=False)

    def signature(self, msg_id: str, timestamp: int, body: bytes) -> str:
        """``v1,<base64 HMAC-SHA256>``."""
        return sign(self.key, msg_id, timestamp, body)


@dataclass(frozen=True, slots=True)
class Ed25519Key:
    """A decoded ``whsk_`` private key."""

    private: Ed25519PrivateKey = field(repr=False, compare=False)

    def signature(self, msg_id: str, timestamp: int, body: bytes) -> str:
        """``v1a,<base64 ed25519 signature>``."""
        signed = self.private.sign(f"{msg_id}.{timestamp}.".encode() + body)
        return "v1a," + binascii.b2a_base64(signed, newline=False).decode("ascii")

    def public_key(self) -> str:
        """The matching ``whpk_`` key to give to receivers."""
        return PUBLIC_PREFIX + _b64(_raw_public(self.private))


SigningKey = HmacKey | Ed25519Key


def parse_signing_key(text: str) -> SigningKey:
    """Decode one ``whsec_`` or ``whsk_`` key. ``ValueError`` (never quoting the key) if it is
    neither, is not base64, or is the wrong length."""
    text = text.strip()
    if text.startswith(SECRET_PREFIX):
        return HmacKey(decode_secret(text))
    if text.startswith(PRIVATE_PREFIX):
        return Ed25519Key(_private_from(text[len(PRIVATE_PREFIX) :]))
    raise ValueError("signing key must be whsec_... (HMAC) or whsk_... (ed25519 private key)")


def parse_signing_keys(value: str | Sequence[str]) -> tuple[SigningKey, ...]:
    """Decode a subscriber's ``secret``: one key, or a non-empty list of keys, newest first.
    A ``ValueError`` names the list position (``secret[1]: ...``), never the key."""
    if isinstance(value, str):
        return (parse_signing_key(value),)
    if not value:
        raise ValueError("secret must be a key or a non-empty list of keys")
    keys: list[SigningKey] = []
    for i, text in enumerate(value):
        try:
            keys.append(parse_signing_key(text))
        except ValueError as exc:
            raise ValueError(f"secret[{i}]: {exc}") from None
    return tuple(keys)


def signature_value(keys: Sequence[SigningKey], msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header: one entry per key, in the given order, space-separated."""
    return " ".join(key.signature(msg_id, timestamp, body) for key in keys)


def signature_headers(
    keys: Sequence[SigningKey], msg_id: str, now: float, body: bytes
) -> dict[str, str]:
    """The three Standard Webhooks headers for an attempt at wall-clock time ``now``, signed
    with every key. The one way the relay builds them."""
    timestamp = math.floor(now)
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature_value(keys, msg_id, timestamp, body),
    }


def generate_hmac_secret(entropy: bytes | None = None) -> str:
    """A new ``whsec_`` secret of 32 random bytes (``entropy`` fixes them, for tests)."""
    raw = entropy if entropy is not None else secrets.token_bytes(_HMAC_KEY_BYTES)
    if len(raw) < 16:
        raise ValueError("an HMAC secret needs at least 16 bytes")
    return SECRET_PREFIX + _b64(raw)


def generate_ed25519_pair(seed: bytes | None = None) -> tuple[str, str]:
    """A new ed25519 key pair as ``(whsk_private, whpk_public)`` (``seed``: 32 bytes, for tests)."""
    raw_seed = seed if seed is not None else secrets.token_bytes(_SEED_BYTES)
    if len(raw_seed) != _SEED_BYTES:
        raise ValueError("an ed25519 seed is 32 bytes")
    private = Ed25519PrivateKey.from_private_bytes(raw_seed)
    public = _raw_public(private)
    return PRIVATE_PREFIX + _b64(raw_seed + public), PUBLIC_PREFIX + _b64(public)


def _private_from(encoded: str) -> Ed25519PrivateKey:
    try:
        raw = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("whsk_ key must be followed by base64") from None
    if len(raw) not in (_SEED_BYTES, 2 * _SEED_BYTES):
        raise ValueError("whsk_ key must hold 32 or 64 bytes")
    private = Ed25519PrivateKey.from_private_bytes(raw[:_SEED_BYTES])
    if len(raw) == 2 * _SEED_BYTES and raw[_SEED_BYTES:] != _raw_public(private):
        raise ValueError("whsk_ key is damaged: its public half does not match")
    return private


def _raw_public(private: Ed25519PrivateKey) -> bytes:
    return private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")
