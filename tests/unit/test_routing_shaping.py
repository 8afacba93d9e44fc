"""The two seams that wire filters and formats in: :class:`relay.ingest.routing.Router` (who
gets a record) and :class:`relay.delivery.shaping.Shaper` (what body they get)."""

from __future__ import annotations

from typing import Any
from zoneinfo import ZoneInfo

import orjson
import pytest

from relay.config.schema import Settings
from relay.core.envelope import build_body
from relay.core.errors import RenderError
from relay.core.formats import SAMPLE_RECORD, compile_format
from relay.delivery.shaping import Shaper
from relay.ingest import routing
from relay.ingest.routing import Router

UTC = ZoneInfo("UTC")
SECRET = "whsec_" + "QUFB" * 8


def subscribers(**filters: Any) -> Settings:
    subs = [{"name": "all", "url": "http://h/x", "secret": SECRET}]
    subs += [
        {"name": name, "url": "http://h/x", "secret": SECRET, "filter": spec}
        for name, spec in filters.items()
    ]
    return Settings.model_validate(
        {"upstream": {"accounts": [{"name": "acme", "api_key": "k"}]}, "subscribers": subs}
    )


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        ({"direction": "INCOMING", "disposition": "BUSY"}, None),  # every filter passes
        ({"direction": "INCOMING", "disposition": "ANSWERED"}, ("all", "inbound")),
        ({"direction": "OUTGOING"}, ("all",)),
        ({}, ("all",)),
        ({"direction": None, "disposition": None, "cidnumber_outside": "☎ & <x>"}, ("all",)),
    ],
)
def test_route_names_the_subscribers_whose_filters_pass(record, expected) -> None:
    settings = subscribers(
        inbound={"call.direction": "inbound"},
        missed={"direction": "INCOMING", "disposition": {"$ne": "ANSWERED"}},
    )
    assert Router("acme", settings.subscribers, UTC, "US").route(record) == expected


def test_no_filter_means_no_routing_work(monkeypatch) -> None:
    router = Router("acme", subscribers().subscribers, UTC, "US")
    assert not router.filtering
    assert router.route({"direction": "INCOMING"}) is None


def test_a_field_filter_never_computes_the_call_view(monkeypatch) -> None:
    def fail(*args: object) -> None:
        raise AssertionError("call view computed for a filter over record fields")

    monkeypatch.setattr(routing.LazyCallView, "__getitem__", fail)
    settings = subscribers(missed={"direction": "INCOMING", "disposition": {"$ne": "ANSWERED"}})
    router = Router("acme", settings.subscribers, UTC, "US")
    assert router.route({"direction": "OUTGOING"}) == ("all",)


STORED = build_body("acme", 1_751_403_293.123, SAMPLE_RECORD)


def test_envelope_is_the_stored_body_itself() -> None:
    shaper = Shaper(compile_format("envelope", None, "s"), UTC, "US")
    assert shaper.body(STORED, "acme", "msg_1") is STORED


@pytest.mark.parametrize("name", ["record", "slack", "teams", "discord"])
def test_other_formats_render_the_same_bytes_every_time(name: str) -> None:
    shaper = Shaper(compile_format(name, None, "s"), UTC, "US")
    first = shaper.body(STORED, "acme", "msg_1")
    assert first == shaper.body(STORED, "acme", "msg_1")
    assert first != STORED
    if name == "record":
        assert orjson.loads(first) == SAMPLE_RECORD


def test_template_sees_the_envelope_fields_as_stored() -> None:
    template = (
        '{"at": {{ received_at | tojson }}, "id": {{ webhook_id | tojson }}, '
        '"account": {{ account | tojson }}}'
    )
    shaper = Shaper(compile_format("template", template, "s", tz=UTC), UTC, "US")
    body = orjson.loads(shaper.body(STORED, "acme", "msg_1"))
    assert body == {"at": orjson.loads(STORED)["timestamp"], "id": "msg_1", "account": "acme"}


@pytest.mark.parametrize("stored", [b"not json", b'{"data": 5}', b"[]"])
def test_a_stored_body_without_a_record_is_a_render_error(stored: bytes) -> None:
    shaper = Shaper(compile_format("slack", None, "s"), UTC, "US")
    with pytest.raises(RenderError):
        shaper.body(stored, "acme", "msg_1")


def test_a_record_orjson_refuses_still_renders() -> None:
    stored = build_body("acme", 0.0, {"rid": 2**70, "name": "\ud800"})
    shaper = Shaper(compile_format("record", None, "s"), UTC, "US")
    assert b"1180591620717411303424" in shaper.body(stored, "acme", "msg_1")


def test_view_as_dict_is_what_dataclasses_asdict_gives() -> None:
    import dataclasses

    from relay.core.callview import call_view

    for record in (SAMPLE_RECORD, {}, {"direction": "OUTGOING", "cidnumber_outside": "+44 20"}):
        view = call_view(record, "acme", UTC, "US")
        assert view.as_dict() == dataclasses.asdict(view)
        assert list(view.as_dict()) == list(dataclasses.asdict(view))
