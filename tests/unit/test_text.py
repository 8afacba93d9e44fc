"""The output-safety helpers: URL credentials masked (issue 8 #5), control characters escaped
(#14). Table-driven, awkward inputs included."""

from __future__ import annotations

import pytest

from relay.core.text import escape_controls, mask_credentials


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("", ""),
        ("./relay-state.db", "./relay-state.db"),
        ("sqlite:////var/lib/relay/state.db", "sqlite:////var/lib/relay/state.db"),
        ("postgresql://relay@db/relay", "postgresql://relay@db/relay"),
        ("postgresql://relay:s3cret@db:5432/relay", "postgresql://relay:***@db:5432/relay"),
        ("postgresql://:s3cret@db/relay", "postgresql://:***@db/relay"),
        ("postgres://u:p@ss:w@rd@db/x", "postgres://u:***@db/x"),  # unencoded "@" in it
        ("postgresql://u:%40%3A@db/x?sslmode=require", "postgresql://u:***@db/x?sslmode=require"),
        (
            "postgresql://db/relay?user=u&password=s3cret&x=1",
            "postgresql://db/relay?user=u&password=***&x=1",
        ),
        (
            "could not connect to postgresql://u:pw@h/db and https://a:b@hook.example/x",
            "could not connect to postgresql://u:***@h/db and https://a:***@hook.example/x",
        ),
        ("https://hook.example/path?a=b@c", "https://hook.example/path?a=b@c"),
        ("http://[::1]:8080/x", "http://[::1]:8080/x"),
        ("émoji 📞 postgresql://ü:ß@h/d", "émoji 📞 postgresql://ü:***@h/d"),
    ],
)
def test_mask_credentials(text: str, masked: str) -> None:
    assert mask_credentials(text) == masked


@pytest.mark.parametrize(
    ("text", "escaped"),
    [
        ("", ""),
        ("plain & <ok> 📞 ünïcode", "plain & <ok> 📞 ünïcode"),
        ("line\r\nforged 2026-01-01 INFO ok", "line\\r\\nforged 2026-01-01 INFO ok"),
        ("\x1b[31mred\x1b[0m", "\\x1b[31mred\\x1b[0m"),
        ("tab\there\x00nul\x7fdel", "tab\\there\\x00nul\\x7fdel"),
        ("c1\x9bcsi", "c1\\x9bcsi"),
        ("sep\u2028para\u2029", "sep\\u2028para\\u2029"),
        ("bidi\u202eevil\u2066", "bidi\\u202eevil\\u2066"),
        ("back\\slash", "back\\slash"),
    ],
)
def test_escape_controls(text: str, escaped: str) -> None:
    assert escape_controls(text) == escaped
