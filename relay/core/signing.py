"""Standard Webhooks signatures (https://www.standardwebhooks.com), pure and fast.

A delivery carries three headers: ``webhook-id`` (stable per record and subscriber, so a receiver
can de-duplicate retries), ``webhook-timestamp`` (integer Unix seconds of this attempt) and
``webhook-signature`` (``v1,`` + base64 HMAC-SHA256 over ``{id}.{timestamp}.{body}``, keyed with
the subscriber's decoded ``whsec_`` secret). The headers of a delivery are built by
:func:`relay.core.keys.signature_headers`, which signs with every configured key (rotation,
ed25519); this module holds the HMAC primitive, the stable message id and the verifier the demo
receiver uses. Nothing here ever puts a secret in a message.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Mapping
from functools import lru_cache

from relay.core.errors import RelayError

SECRET_PREFIX = "whsec_"
DEFAULT_TOLERANCE = 300.0  # seconds; the Standard Webhooks recommendation


class SignatureError(RelayError):
    """A webhook failed verification. The message says why, never with the key or body."""


def decode_secret(secret: str) -> bytes:
    """Decode a ``whsec_<base64>`` signing secret into the HMAC key bytes.

    Surrounding whitespace and missing padding are tolerated (as the reference libraries do);
    anything else malformed, or an empty key, raises ``ValueError`` with a message that does not
    echo the secret.
    """
    secret = secret.strip()  # a secret read from a file or env var often ends in a newline
    if not secret.startswith(SECRET_PREFIX):
        raise ValueError("signing secret must be whsec_ followed by base64")
    encoded = secret[len(SECRET_PREFIX) :]
    try:
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except (binascii.Error, ValueError):
        # `from None`: the chained decoder error could quote part of the secret.
        raise ValueError("signing secret must be whsec_ followed by base64") from None
    if not key:
        raise ValueError("signing secret must be whsec_ followed by base64")
    return key


@lru_cache(maxsize=256)
def _keyed(key: bytes) -> hmac.HMAC:
    # Keying HMAC hashes the inner and outer pads; copying an already-keyed object skips that
    # on every signature. One entry per subscriber key, so a small cache holds them all.
    return hmac.new(key, digestmod=hashlib.sha256)


def sign(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """Return ``"v1," + base64(HMAC-SHA256(key, f"{msg_id}.{timestamp}." + body))``.

    The body is fed to the HMAC as is (no concatenated copy, no decode/re-encode), so a large
    body costs one pass of SHA-256 and nothing else.
    """
    digest = _digest(key, msg_id, timestamp, body)
    return "v1," + binascii.b2a_base64(digest, newline=False).decode("ascii")


def _digest(key: bytes, msg_id: str, timestamp: int, body: bytes) -> bytes:
    mac = _keyed(key).copy()
    mac.update(f"{msg_id}.{timestamp}.".encode())
    mac.update(body)
    return mac.digest()


def verify(
    key: bytes,
    headers: Mapping[str, str],
    body: bytes,
    now: float,
    tolerance: float = DEFAULT_TOLERANCE,
) -> None:
    """Check a received webhook; raise :class:`SignatureError` unless it is authentic and fresh.

    Header names are matched case-insensitively. The timestamp must be an integer within
    ``tolerance`` seconds of ``now`` in either direction (replay protection). The signature
    header may list several space-separated ``version,base64`` entries (key rotation); it passes
    if any ``v1`` entry matches, compared in constant time. Used by the demo receiver.
    """
    lowered = {name.lower(): value for name, value in headers.items()}
    msg_id = _required(lowered, "webhook-id")
    raw_timestamp = _required(lowered, "webhook-timestamp")
    signatures = _required(lowered, "webhook-signature")
    stripped = raw_timestamp.strip()
    # A length cap keeps int() away from its huge-number guard (and absurd values out).
    if not (stripped.isascii() and stripped.isdigit() and len(stripped) <= 15):
        raise SignatureError("webhook-timestamp is not an integer")
    timestamp = int(stripped)
    if timestamp < now - tolerance:
        raise SignatureError("webhook-timestamp too old")
    if timestamp > now + tolerance:
        raise SignatureError("webhook-timestamp too new")
    expected = _digest(key, msg_id, timestamp, body)
    for entry in signatures.split(" "):
        version, _, encoded = entry.partition(",")
        if version != "v1":
            continue  # other schemes (e.g. v1a asymmetric) are not ours to check
        try:
            candidate = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            continue
        if hmac.compare_digest(expected, candidate):
            return
    raise SignatureError("no matching signature")


def _required(headers: Mapping[str, str], name: str) -> str:
    value = headers.get(name)
    if not value:
        raise SignatureError(f"missing {name} header")
    return value


# Every pair of lower-case base32 digits, indexed by the 10 bits they encode.
_B32_PAIRS = tuple(
    a + b for a in "abcdefghijklmnopqrstuvwxyz234567" for b in "abcdefghijklmnopqrstuvwxyz234567"
)
_ID_SHIFTS = tuple(range(120, -1, -10))  # 13 pairs = 26 digits = the first 130 bits


def webhook_id(account: str, rid: int, subscriber: str) -> str:
    """A stable message id for one record to one subscriber: ``msg_`` + 26 base32 characters.

    The same (account, rid, subscriber) always yields the same id, across retries, replays and
    restarts, so receivers can de-duplicate on it. 26 base32 characters keep 130 bits of the
    SHA-256, and the alphabet (lower-case letters and digits 2-7) is safe in any log or URL.
    The text is exactly ``base64.b32encode(digest)[:26].lower()``, computed ten bits at a time
    because the stdlib's base32 is pure Python and costs more than the hash on the hot path.
    """
    digest = hashlib.sha256(f"{account}\x00{rid}\x00{subscriber}".encode()).digest()
    bits = int.from_bytes(digest[:17], "big") >> 6  # 136 bits read, the first 130 kept
    return "msg_" + "".join([_B32_PAIRS[(bits >> s) & 0x3FF] for s in _ID_SHIFTS])
