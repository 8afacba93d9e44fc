"""Making text safe to show: URL credentials masked, control characters escaped.

Pure string functions used by every output path (CLI, logs, status, stored excerpts), so that
one rule decides what an operator's terminal or a log pipeline ever sees.
"""

from __future__ import annotations

import re

MASK = "***"

# scheme://user:password@ (the password is whatever runs up to the last "@" before the host).
_URL_CREDENTIALS = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^:/?#@\s]*):[^/?#\s]*@")
# libpq also takes the password as a query parameter: postgresql://db/relay?password=…
_QUERY_PASSWORD = re.compile(r"(?i)(?P<head>[?&]password=)[^&#\s]*")
# C0 controls, DEL, C1 controls, and the Unicode line/paragraph separators and bidi overrides
# that can make a terminal or a log viewer show something other than what is there.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_SHORT = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}


def mask_credentials(text: str) -> str:
    """Replace the password of every ``scheme://user:password@host`` URL in ``text`` (and a
    ``password=`` query parameter) with ***.

    ``postgresql://relay:s3cret@db/relay`` -> ``postgresql://relay:***@db/relay``; text without
    such a URL comes back unchanged.
    """
    if "://" not in text:
        return text
    text = _URL_CREDENTIALS.sub(lambda m: f"{m['head']}:{MASK}@", text)
    return _QUERY_PASSWORD.sub(lambda m: f"{m['head']}{MASK}", text)


def escape_controls(text: str) -> str:
    r"""Escape control characters (``\r``, ``\n``, ESC…) as ``\r``, ``\n``, ``\x1b``…, so that
    text from outside (an error body, a receiver's answer) cannot forge a log line or drive a
    terminal. Printable text, including non-ASCII, is unchanged; a backslash is not doubled, so
    escaped text is for reading, not for decoding back."""
    if _CONTROL.search(text) is None:
        return text
    return _CONTROL.sub(_escape_one, text)


def _escape_one(match: re.Match[str]) -> str:
    char = match[0]
    if char in _SHORT:
        return _SHORT[char]
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"
