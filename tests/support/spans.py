"""Spans for tests, in memory. OpenTelemetry keeps the first tracer provider a process
sets for good, so every test that collects spans shares one: the first installs it, each
adds an exporter of its own to it and turns the interceptors on while it runs."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from meterline.kernel import tracing


@contextmanager
def collected_spans() -> Iterator[InMemorySpanExporter]:
    """Tracing on, the spans ended from now on in the exporter given; off again after
    (stacks and pages made later make no spans)."""
    current = trace.get_tracer_provider()
    provider = current if isinstance(current, TracerProvider) else TracerProvider()
    spans = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    tracing.install(provider)
    try:
        yield spans
    finally:
        tracing.uninstall()
        spans.shutdown()  # what later tests trace is dropped, not kept here
