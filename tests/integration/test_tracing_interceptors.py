"""The tracing interceptors on a real gRPC server and channel on loopback, with an
in-memory exporter: a CLIENT span and its SERVER child per call, linked through the
`traceparent` metadata, each with the call's final status code (OK, a refusal, an
unexpected exception)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from meterline.kernel import tracing
from tests.support.spans import collected_spans

pytestmark = pytest.mark.integration


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    # One provider for the process (OpenTelemetry keeps the first): tests/support/spans.py.
    with collected_spans() as spans:
        yield spans  # stacks started later in this run make no spans


async def _ok(request: bytes, context: Any) -> bytes:
    return b"ok"


async def _refuse(request: bytes, context: Any) -> bytes:
    await context.abort(grpc.StatusCode.NOT_FOUND, "no such thing")
    raise AssertionError("unreachable")


async def _boom(request: bytes, context: Any) -> bytes:
    raise RuntimeError("a bug")


async def test_client_and_server_spans_with_their_codes(exporter: InMemorySpanExporter) -> None:
    handler = grpc.method_handlers_generic_handler(
        "test.Traced",
        {
            name: grpc.unary_unary_rpc_method_handler(behaviour)
            for name, behaviour in (("Ok", _ok), ("Refuse", _refuse), ("Boom", _boom))
        },
    )
    server = grpc.aio.server(interceptors=tracing.server_interceptors())
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    codes = {}
    try:
        async with grpc.aio.insecure_channel(
            f"127.0.0.1:{port}", interceptors=tracing.client_interceptors()
        ) as channel:
            for name in ("Ok", "Refuse", "Boom"):
                try:
                    await channel.unary_unary(f"/test.Traced/{name}")(b"x", timeout=10)
                    codes[name] = grpc.StatusCode.OK
                except grpc.aio.AioRpcError as error:
                    codes[name] = error.code()
    finally:
        await server.stop(0)
    assert codes == {
        "Ok": grpc.StatusCode.OK,
        "Refuse": grpc.StatusCode.NOT_FOUND,
        "Boom": grpc.StatusCode.UNKNOWN,
    }
    spans = exporter.get_finished_spans()
    for name, code in codes.items():
        (client,) = [
            s for s in spans if s.name == f"test.Traced/{name}" and s.kind is SpanKind.CLIENT
        ]
        (served,) = [
            s for s in spans if s.name == f"test.Traced/{name}" and s.kind is SpanKind.SERVER
        ]
        assert served.parent is not None
        assert served.parent.span_id == client.context.span_id  # through the metadata
        assert served.context.trace_id == client.context.trace_id
        for span in (client, served):
            assert span.attributes is not None
            assert span.attributes["rpc.grpc.status_code"] == code.value[0]
            assert span.attributes["rpc.method"] == name
        # A refusal is the caller's problem on the server side, an error on the client's.
        assert client.status.status_code is (StatusCode.UNSET if name == "Ok" else StatusCode.ERROR)
        assert served.status.status_code is (
            StatusCode.ERROR if name == "Boom" else StatusCode.UNSET
        )


def test_off_installs_nothing() -> None:
    assert tracing.configure_tracing("off", "meterline-test") is None
    assert not tracing.enabled()
    assert tracing.server_interceptors() == ()
    assert tracing.client_interceptors() == ()
