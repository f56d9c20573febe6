"""Tracing settings and trace ids in the logs: METERLINE_TRACES (or the standard
OTEL_TRACES_EXPORTER) picks the exporter, off by default; a record written inside a span
carries its trace id in both log formats, and none outside."""

from __future__ import annotations

import json
import logging

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

from meterline.kernel.config import ConfigError, load_settings
from meterline.kernel.logs import JsonFormatter, TextFormatter, TraceIds

pytestmark = pytest.mark.unit


def test_traces_are_off_unless_asked_for() -> None:
    assert load_settings({}).traces == "off"
    assert load_settings({"METERLINE_TRACES": "Console"}).traces == "console"
    assert load_settings({"OTEL_TRACES_EXPORTER": "otlp"}).traces == "otlp"
    assert load_settings({"OTEL_TRACES_EXPORTER": "none"}).traces == "off"
    # Ours wins over the standard one.
    both = {"METERLINE_TRACES": "off", "OTEL_TRACES_EXPORTER": "otlp"}
    assert load_settings(both).traces == "off"
    with pytest.raises(ConfigError, match="METERLINE_TRACES='jaeger' is not one of"):
        load_settings({"METERLINE_TRACES": "jaeger"})
    with pytest.raises(ConfigError, match="OTEL_TRACES_EXPORTER='zipkin'"):
        load_settings({"OTEL_TRACES_EXPORTER": "zipkin"})


def _record() -> logging.LogRecord:
    record = logging.LogRecord("meterline.x", logging.INFO, __file__, 1, "hello %s", ("s1",), None)
    TraceIds().filter(record)
    return record


def test_a_record_inside_a_span_names_its_trace() -> None:
    # A provider of our own (not the process's): the span is made current by hand.
    span = TracerProvider().get_tracer("test").start_span("rpc")
    trace_id = trace.format_trace_id(span.get_span_context().trace_id)
    with trace.use_span(span, end_on_exit=True):
        record = _record()
    text = TextFormatter().format(record)
    assert text.endswith(f"meterline.x: hello s1 trace={trace_id}")
    entry = json.loads(JsonFormatter().format(record))
    assert entry["trace_id"] == trace_id
    assert entry["span_id"] == trace.format_span_id(span.get_span_context().span_id)


def test_a_record_outside_a_span_has_no_trace() -> None:
    record = _record()
    assert "trace=" not in TextFormatter().format(record)
    assert "trace_id" not in json.loads(JsonFormatter().format(record))
