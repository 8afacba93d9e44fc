"""Log formats carry the call's stable ids, and no configured secret ever reaches a line."""

from __future__ import annotations

import base64
import io
import logging
import time
from collections.abc import Iterator

import orjson
import pytest

from relay.core.fastlog import WRITE_NOW
from relay.ops.logs import flush_logs, setup_logging

SECRET = "whsec_c2VjcmV0LXZhbHVlLXRoYXQtbXVzdC1uZXZlci1sZWFr"


@pytest.fixture
def restore_root() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for h in list(root.handlers):
        root.removeHandler(h)
    for h in handlers:
        root.addHandler(h)
    root.setLevel(level)


FIELDS = {
    "account": "main",
    "rid": 211159,
    "subscriber": "crm",
    "webhook_id": "msg_x",
    "attempt": 2,
}


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_call_lines_carry_ids(fmt: str, restore_root: None) -> None:
    out = io.StringIO()
    setup_logging("INFO", fmt, [SECRET], stream=out)
    logging.getLogger("relay.delivery.claimer").info("delivered", extra=FIELDS)
    line = out.getvalue().strip()
    if fmt == "json":
        doc = orjson.loads(line)
        assert doc["msg"] == "delivered" and doc["level"] == "INFO"
        assert {k: doc[k] for k in FIELDS} == FIELDS
    else:
        assert "delivered account=main rid=211159 subscriber=crm webhook_id=msg_x attempt=2" in line


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_secrets_are_redacted_everywhere(fmt: str, restore_root: None) -> None:
    out = io.StringIO()
    setup_logging("DEBUG", fmt, [SECRET], stream=out)
    log = logging.getLogger("relay.test")
    log.warning("message with %s inside", SECRET)
    log.error("field", extra={"error": f"bad key {SECRET}"})
    try:
        raise ValueError(f"exception quoting {SECRET}")
    except ValueError:
        log.exception("traceback")
    text = out.getvalue()
    assert SECRET not in text
    assert text.count("[redacted]") >= 3


def test_timestamp_cache_changes_with_the_second() -> None:
    from relay.ops.logs import _SecondStamp

    stamp = _SecondStamp("%H:%M:%S", time.gmtime)
    assert [stamp(t) for t in (3600.1, 3600.9, 3601.0, 3600.5)] == [
        "01:00:00",
        "01:00:00",
        "01:00:01",
        "01:00:00",
    ]


# -- issue 8 #6: a secret in an exception's text, in every spelling it reaches a line in ----------

# A secret with the characters that JSON and repr() escape.
AWKWARD = 'pa"ss\\word-0123456789'


def _log_exception(text: str) -> None:
    try:
        raise ValueError(text)
    except ValueError as exc:
        # Tracebacks show str(); reprs of exceptions (and of their args) show repr().
        logging.getLogger("relay.test").exception("failed: %r", exc, extra={"error": repr(exc)})


@pytest.mark.parametrize("fmt", ["text", "json"])
@pytest.mark.parametrize(
    "secret",
    [AWKWARD, "it's-a-secret-0123", "ünïcode-sécret-📞-0123", "tab\tand\nnewline-0123"],
    ids=["quote-backslash", "apostrophe", "unicode", "controls"],
)
def test_secret_in_exception_text_is_redacted_in_every_form(
    fmt: str, secret: str, restore_root: None
) -> None:
    out = io.StringIO()
    setup_logging("INFO", fmt, [secret], stream=out)
    _log_exception(f"server said: {secret}")
    text = out.getvalue()
    forms = {secret, repr(secret)[1:-1], orjson.dumps(secret).decode()[1:-1]}
    forms.add(orjson.dumps(repr(secret)[1:-1]).decode()[1:-1])
    for form in forms:
        assert form not in text, (form, text)
    assert "[redacted]" in text
    if fmt == "json":
        for line in text.splitlines():
            orjson.loads(line)  # still valid JSON


def test_url_password_and_basic_token_are_secrets(restore_root: None) -> None:
    from relay.config.schema import Settings

    settings = Settings.model_validate(
        {
            "upstream": {"accounts": [{"name": "a", "api_key": "key-0123456789abcdef"}]},
            "subscribers": [
                {
                    "name": "crm",
                    "url": "https://hook-user:hook%40Pass-0123@hooks.example/in",
                    "secret": SECRET,
                }
            ],
        }
    )
    token = base64.b64encode(b"hook-user:hook@Pass-0123").decode()
    assert {"hook%40Pass-0123", "hook@Pass-0123", token} <= set(settings.secret_values())
    out = io.StringIO()
    setup_logging("INFO", "json", settings.secret_values(), stream=out)
    log = logging.getLogger("relay.test")
    log.warning("receiver echoed Authorization: Basic %s", token)
    log.warning("decoded password hook@Pass-0123 in an error")
    log.warning("posting to https://other:plain-pw-0123@x.example/ failed")  # not configured
    text = out.getvalue()
    for leaked in ("hook@Pass-0123", "hook%40Pass-0123", token, "plain-pw-0123"):
        assert leaked not in text
    assert "https://other:***@x.example/" in text


# -- lines without a LogRecord (relay.core.fastlog), as `relay run` writes "delivered" ---------

ODD = {
    "account": "main",
    "rid": 211159,
    "subscriber": f"crm {SECRET} \x1b[31m",  # a secret and an escape in a name: both handled
    "webhook_id": "msg_2b7c3xq",
    "attempt": 2,
    "status": 200,
    "latency_ms": 3.4,
}


def _without_stamp(line: str, fmt: str) -> object:
    if fmt == "json":
        doc = orjson.loads(line)
        doc.pop("ts")
        return doc
    return line[24:]  # "2026-11-29 08:40:13.123 " differs between the two


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_fast_line_is_the_formatters_line(fmt: str, restore_root: None) -> None:
    from relay.core import fastlog

    out = io.StringIO()
    setup_logging("INFO", fmt, [SECRET], stream=out, threaded=True)
    log = logging.getLogger("relay.delivery.claimer")
    assert fastlog.log_fast(log, logging.INFO, "delivered", dict(ODD))
    assert fastlog.log_fast(log, logging.INFO, "delivered", dict(ODD))  # cached parts
    fastlog.install(None)  # the same record the usual way
    assert not fastlog.log_fast(log, logging.INFO, "delivered", dict(ODD))
    log.info("delivered", extra=dict(ODD))
    flush_logs()
    lines = out.getvalue().splitlines()
    assert len(lines) == 3
    assert SECRET not in out.getvalue() and "\x1b" not in out.getvalue()
    assert _without_stamp(lines[0], fmt) == _without_stamp(lines[2], fmt)
    assert _without_stamp(lines[1], fmt) == _without_stamp(lines[2], fmt)


def test_fast_lines_give_way_to_other_handlers(restore_root: None) -> None:
    from relay.core import fastlog

    out = io.StringIO()
    setup_logging("INFO", "text", [SECRET], stream=out, threaded=True)
    log = logging.getLogger("relay.delivery.claimer")
    assert fastlog.log_fast(log, logging.INFO, "delivered", dict(FIELDS))
    assert not fastlog.log_fast(log, logging.DEBUG, "delivered", dict(FIELDS))  # level off
    for where in (logging.getLogger(), logging.getLogger("relay.delivery"), log):
        other = logging.Handler()  # caplog's, or an embedding's: it must see the records
        where.addHandler(other)
        try:
            assert not fastlog.log_fast(log, logging.INFO, "delivered", dict(FIELDS))
        finally:
            where.removeHandler(other)
    log.addFilter(lambda record: True)
    try:
        assert not fastlog.log_fast(log, logging.INFO, "delivered", dict(FIELDS))
    finally:
        log.filters.clear()
    setup_logging("INFO", "text", [SECRET], stream=out)  # no writer thread: the usual way
    assert not fastlog.log_fast(log, logging.INFO, "delivered", dict(FIELDS))


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_a_line_marked_write_now_is_in_the_log_when_the_call_returns(
    fmt: str, restore_root: None
) -> None:
    """As a warning is: a kill right after it (a lease taken, then SIGKILL) cannot lose it, nor
    the lines before it. The mark itself is not part of the line."""
    out = io.StringIO()
    setup_logging("INFO", fmt, [SECRET], stream=out, threaded=True)
    [handler] = logging.getLogger().handlers
    try:
        log = logging.getLogger("relay.ingest.lease")
        log.info("before", extra={"account": "main"})
        log.info("account lease taken", extra={"account": "main", WRITE_NOW: True})
        lines = out.getvalue().splitlines()
        assert [("before" in x, "lease taken" in x) for x in lines] == [
            (True, False),
            (False, True),
        ]
        assert WRITE_NOW not in out.getvalue()
    finally:
        handler.close()  # its writer thread too
