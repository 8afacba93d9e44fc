"""The phone-number fast path gives exactly what phonenumbers gives, on generated numbers.

The generator writes the North American shapes a PBX uses and their near misses (area codes
starting 0 or 1, odd separators, ``+`` without ``1``, long or upper-case extensions, full-width
digits), in regions the fast path serves and regions it must leave alone. Whatever the fast
path answers must equal :func:`relay.core.phones.slow_parse` (phonenumbers itself); and for the
common shapes it must answer, or it would be a fast path in name only.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from relay.core.phones import FAST_REGIONS, fast_parse, parse_number, slow_parse

UNHANDLED = None  # fast_parse: "ask phonenumbers"
REGIONS = st.sampled_from(["US", "CA", None, "GB", "JM", "DE", "PR", "AU"])
DIGIT = st.sampled_from("0123456789")


def digits(n: int, first: str = "0123456789") -> st.SearchStrategy[str]:
    return st.tuples(st.sampled_from(first), st.text(DIGIT, min_size=n - 1, max_size=n - 1)).map(
        "".join
    )


SEP = st.sampled_from(["", " ", "-", ".", "  ", "/", "\u2011", "–"])
PREFIX = st.sampled_from(["", "", "1", "1 ", "1-", "1.", "+1", "+1 ", "+1-", "+", "+44 ", "011 1 "])
EXTENSION = st.one_of(
    st.just(""),
    st.tuples(
        st.sampled_from([", x", " x", "x", ",x", ", X", " ext ", " ext. ", "#", ",  x", ", x "]),
        st.text(DIGIT, min_size=0, max_size=9),
    ).map("".join),
)


@st.composite
def written_numbers(draw: st.DrawFn) -> str:
    area = draw(digits(3))
    if draw(st.booleans()):
        area = f"({area})" + draw(st.sampled_from(["", " ", "-"]))
    else:
        area += draw(SEP)
    number = draw(PREFIX) + area + draw(digits(3)) + draw(SEP) + draw(digits(4)) + draw(EXTENSION)
    if draw(st.integers(0, 20)) == 0:
        number = number.replace("5", "５")  # a full-width digit: phonenumbers reads it, we do not
    return number


@settings(max_examples=800, deadline=None)
@given(written_numbers(), REGIONS)
def test_fast_path_agrees_with_phonenumbers(text: str, region: str | None) -> None:
    fast = fast_parse(text, region)
    if fast is not UNHANDLED:
        assert fast == slow_parse(text, region), text
    assert parse_number.__wrapped__(text, region) == slow_parse(text, region)


@settings(max_examples=500, deadline=None)
@given(
    digits(3, "23456789"),
    digits(3),
    digits(4),
    st.sampled_from(["(%s) %s-%s", "%s-%s-%s", "%s.%s.%s", "+1 %s %s %s", "1-%s-%s-%s"]),
    st.sampled_from(["", ", x3203", " x7", "x123456"]),
    st.sampled_from(sorted(FAST_REGIONS)),
)
def test_common_shapes_take_the_fast_path(
    area: str, exchange: str, line: str, shape: str, ext: str, region: str
) -> None:
    text = shape % (area, exchange, line) + ext
    fast = fast_parse(text, region)
    assert fast is not UNHANDLED, text
    assert fast == slow_parse(text, region)


TEL_PARTS = st.sampled_from(
    [
        "tel:",
        ";phone-context=",
        "example.com",
        "+1",
        "\uff0b",
        "+",
        "1",
        "555",
        "-",
        " ",
        ";isub=",
        "x",
    ]
)


@settings(max_examples=800, deadline=None)
@given(
    st.one_of(
        written_numbers(),
        st.lists(TEL_PARTS, max_size=8).map("".join),
        st.text(max_size=40),
        st.tuples(st.text(max_size=8), written_numbers(), st.text(max_size=8)).map("".join),
    )
)
def test_no_default_region_and_no_plus_sign_is_refused_as_phonenumbers_does(text: str) -> None:
    # The shortcut for `phone_region: none`: no plus sign anywhere, no number. Whatever the
    # text, parse_number answers what phonenumbers answers.
    assert parse_number.__wrapped__(text, None) == slow_parse(text, None), text


def test_no_default_region_examples() -> None:
    for text in ("+1 (555) 017-7737", "\uff0b1 555 017 7737", "tel:017-7737;phone-context=+1555"):
        assert parse_number.__wrapped__(text, None) == slow_parse(text, None) is not None, text
    for text in ("(555) 017-7737", "1-555-017-7737", "tel:017-7737;phone-context=example.com"):
        assert slow_parse(text, None) is None, text
        assert parse_number.__wrapped__(text, None) is None, text


def test_fast_path_examples() -> None:
    assert fast_parse("(111) 111-1111, x3203", "US") is UNHANDLED  # area code 111: phonenumbers
    assert fast_parse("(555) 010-1000, x7102", "US") == ("+15550101000", "7102")
    assert fast_parse("+1 555 017 7737", None) == ("+15550177737", None)
    assert fast_parse("555-017-7737", None) is UNHANDLED  # no region: phonenumbers says no
    assert fast_parse("555-017-7737", "GB") is UNHANDLED  # a British national number
    assert parse_number("555-017-7737", "GB") == ("+445550177737", None)
    assert parse_number("(111) 111-1111, x3203", "US") == ("+11111111111", "3203")
    assert parse_number("9" * 400, "US") is None
