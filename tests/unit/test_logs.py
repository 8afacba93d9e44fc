"""Log formats carry the call's stable ids, and no configured secret ever reaches a line."""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Iterator

import orjson
import pytest

from relay.ops.logs import setup_logging

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
