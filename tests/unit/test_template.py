"""The template format: filters, JSON and size checks, sandboxing, one-line compile errors."""

from __future__ import annotations

from typing import Any
from zoneinfo import ZoneInfo

import orjson
import pytest

from relay.core.callview import call_view
from relay.core.errors import RelayError
from relay.core.formats import (
    EnvelopeFields,
    RenderError,
    TemplateCompileError,
    compile_format,
    compile_template,
    render,
)
from relay.core.formats.template import render_template

NY = ZoneInfo("America/New_York")
ENV: EnvelopeFields = {"account": "acme", "received_at": 1751417700.5, "webhook_id": "msg_x"}
RECORD: dict[str, Any] = {
    "rid": 211159,
    "call_timestamp": "2025-07-01 20:54:53",
    "cidname_outside": 'José & <Co> "quoted"',
    "cidext_inside": "3203",
    "direction": "INCOMING",
    "cidnumber_outside": "(212) 555-0100",
    "cidnumber_inside": "(111) 111-1111, x3203",
    "disposition": "ANSWERED",
    "duration": 192,
    "billsec": 180,
    "nested": {"list": [1, 2]},
}


def out(text: str, record: dict[str, Any] | None = None, **kw: Any) -> Any:
    rec = RECORD if record is None else record
    compiled = compile_template(text, "subscribers[1].template", tz=NY, region="US", **kw)
    view = call_view(rec, "acme", NY, "US")
    return orjson.loads(render_template(compiled, rec, view, ENV))


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("record.cidnumber_outside | e164", "+12125550100"),
        ("'not a number' | e164", "not a number"),
        ("record.nope | e164", None),
        ("record.duration | duration_ms", 192000),
        ("'12.5' | duration_ms", 12500),
        ("'abc' | duration_ms", None),
        ("record.duration | mmss", "03:12"),
        ("3725 | mmss", "62:05"),
        ("-1 | mmss", None),
        ("record.call_timestamp | iso", "2025-07-01T20:54:53-04:00"),
        ("record.call_timestamp | epoch_ms", 1751417693000),
        ("record.call_timestamp | utc", "2025-07-02 00:54:53"),
        ("call.start_ms | utc", "2025-07-02 00:54:53"),
        ("call.start | epoch_ms", 1751417693000),
        ("'2025-07-02T00:54:53Z' | iso", "2025-07-01T20:54:53-04:00"),
        ("'garbage' | iso", None),
        ("record.nope | utc", None),
        ("true | iso", None),
        ("call.caller.number", "+12125550100"),
        ("call.callee.extension", "3203"),
        ("call.missed", False),
        ("account", "acme"),
        ("received_at", "2025-07-02T00:55:00.500Z"),
        ("webhook_id", "msg_x"),
        ("record.nested.list", [1, 2]),
        ("record.nope.deeper.still", None),
        ("record.cidname_outside", 'José & <Co> "quoted"'),
        ("record", RECORD),
    ],
)
def test_filters_and_context(expr: str, expected: Any) -> None:
    assert out('{"v": {{ ' + expr + " | tojson }}}") == {"v": expected}


def test_bare_values_print_as_json() -> None:
    assert out('{"a": {{ call.answered }}, "m": {{ call.missed }}, "n": {{ record.nope }}}') == {
        "a": True,
        "m": False,
        "n": None,
    }


def test_sandbox_hides_dunder_attributes() -> None:
    assert out('{"v": {{ record.__class__.__mro__ | tojson }}}') == {"v": None}


def test_output_is_compacted_and_deterministic() -> None:
    text = '{\n  "b": {{ record.rid }},\n  "a": [1, 2 ]\n}\n'
    compiled = compile_template(text, "t")
    view = call_view(RECORD, "acme", NY, "US")
    first = render_template(compiled, RECORD, view, ENV)
    assert first == b'{"b":211159,"a":[1,2]}'
    assert all(render_template(compiled, RECORD, view, ENV) == first for _ in range(5))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{{ record.rid ", "subscribers[1].template: line 1: unexpected end of template"),
        ('{"a": {% if %}}', "subscribers[1].template: line 1: "),
        ('{"a": {{ record.cidname_outside }}}', "subscribers[1].template: output is not JSON: "),
        ("", "subscribers[1].template: output is not JSON: "),
        ('{"a": NaN}', "subscribers[1].template: output is not JSON: NaN is not JSON"),
        ("{{ 1 // 0 }}", "subscribers[1].template: template failed: ZeroDivisionError"),
        ("{{ record.update({}) }}", "subscribers[1].template: template failed: SecurityError"),
        ("{{ [1] | random }}", "subscribers[1].template: line 1: No filter named 'random'"),
        ("{{ lipsum() }}", "subscribers[1].template: template failed: UndefinedError"),
        (
            '[{% for i in range(100000) %}"xxxxxxxxxx",{% endfor %}1]',
            "subscribers[1].template: output is larger than 65536 bytes",
        ),
    ],
)
def test_compile_errors_are_one_line_and_name_the_key(text: str, message: str) -> None:
    with pytest.raises(TemplateCompileError) as caught:
        compile_template(text, "subscribers[1].template")
    error = str(caught.value)
    assert error.startswith(message), error
    assert "\n" not in error and isinstance(caught.value, ValueError)
    assert isinstance(caught.value, RelayError)


def test_compile_template_fails_on_sample_record_only_when_template_is_wrong() -> None:
    # Works on the sample, fails on a real record whose field is not a mapping: RenderError.
    compiled = compile_template('{"x": {{ record.nested["k"] | tojson }}}', "t")
    view = call_view({"nested": "text"}, "a", NY, "US")
    assert render_template(compiled, {"nested": "text"}, view, ENV) == b'{"x":null}'
    bad = compile_template('{"x": {{ (record.duration or 1) // 1 }}}', "t")
    view = call_view({"duration": "soon"}, "a", NY, "US")
    with pytest.raises(RenderError, match="template failed: TypeError"):
        render_template(bad, {"duration": "soon"}, view, ENV)


def test_size_cap_after_rendering() -> None:
    compiled = compile_template('{"n": {{ record.cidname_outside | tojson }}}', "t", max_bytes=200)
    record = {**RECORD, "cidname_outside": "é" * 150}  # 150 chars, 300 bytes once encoded
    with pytest.raises(RenderError, match="larger than 200 bytes"):
        render_template(compiled, record, call_view(record, "a", NY, "US"), ENV)


def test_render_dispatch_and_hubspot_shape() -> None:
    text = """{
      "properties": {
        "hs_timestamp": {{ call.start_ms | tojson }},
        "hs_call_direction": {{ ("INBOUND" if call.direction == "inbound" else "OUTBOUND") | tojson }},
        "hs_call_duration": {{ record.billsec | duration_ms | tojson }},
        "hs_call_from_number": {{ call.caller.number | tojson }},
        "hs_call_title": {{ ("Call with " ~ (call.caller.name or "unknown")) | tojson }}
      }
    }"""  # noqa: E501
    spec = compile_format("template", text, "subscribers[4]", tz=NY, region="US")
    body = render(spec, RECORD, call_view(RECORD, "acme", NY, "US"), ENV)
    assert orjson.loads(body)["properties"] == {
        "hs_timestamp": 1751417693000,
        "hs_call_direction": "INBOUND",
        "hs_call_duration": 180000,
        "hs_call_from_number": "+12125550100",
        "hs_call_title": 'Call with José & <Co> "quoted"',
    }
