"""OpenTelemetry traces: one SERVER span per RPC on every service, one CLIENT span per
call a service makes to its peers, the trace context carried in gRPC metadata (W3C
`traceparent`, the SDK's default propagators), so one StartService is one trace across
the service manager, the rating service and the billing manager.

Off by default (`METERLINE_TRACES=off`): then no interceptor is installed and a call costs
nothing extra. `console` writes each span as one JSON line on stdout; `otlp` sends them to
an OpenTelemetry collector (`OTEL_EXPORTER_OTLP_ENDPOINT` and the other standard OTLP
variables, read by the exporter). Sampling follows the standard `OTEL_TRACES_SAMPLER`.

Written against the OpenTelemetry API rather than with opentelemetry-instrumentation-grpc:
that package's grpc.aio server interceptor fails on stream-stream handlers written as
coroutines (open-telemetry/opentelemetry-python-contrib#3066) and logs "Failed to detach
context" around streams (#2357), and our servers already wrap every handler once
(`request_guard`); two small interceptors here do what we need.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

import grpc
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
)
from opentelemetry.trace import SpanKind, Status, StatusCode

from meterline.kernel.request_guard import answer_of, behaviour_kind, responses_of

if TYPE_CHECKING:
    Handler = grpc.RpcMethodHandler[Any, Any]

TRACER = "meterline"

# The codes that are the server's failure, not the caller's (OpenTelemetry's semantic
# conventions for gRPC servers); a client span is an error on every code but OK.
_SERVER_ERRORS = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)

# Probes and tools, not work: a health check every few seconds (and the peers' client-side
# health watch streams) would bury the traces that matter.
_UNTRACED = ("/grpc.health.v1.Health/", "/grpc.reflection.")

_enabled = False


def enabled() -> bool:
    """Whether spans are made (a tracer provider was installed by `configure_tracing`)."""
    return _enabled


def _one_line(span: ReadableSpan) -> str:
    return str(span.to_json(indent=None)) + "\n"


def _exporter(kind: str) -> SpanExporter:
    if kind == "otlp":
        # Imported only when asked for: it loads the OTLP protobufs.
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter()
    return ConsoleSpanExporter(formatter=_one_line)


def configure_tracing(exporter: str, service_name: str) -> TracerProvider | None:
    """Install the process's tracer provider for `exporter` (off, console or otlp, checked
    by the settings) with `service_name` as the resource's service.name; None when
    tracing is off. Spans still queued are flushed when the process exits."""
    if exporter == "off":
        return None
    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: service_name}))
    if exporter == "console":
        # Written as each span ends: a console is for watching, not for throughput.
        provider.add_span_processor(SimpleSpanProcessor(_exporter(exporter)))
    else:
        provider.add_span_processor(BatchSpanProcessor(_exporter(exporter)))
    install(provider)
    return provider


def install(provider: trace.TracerProvider) -> None:
    """Make `provider` the process's and turn the interceptors on (tests install one with
    an in-memory exporter). Servers and channels made before keep what they had."""
    global _enabled
    trace.set_tracer_provider(provider)
    _enabled = True


def uninstall() -> None:
    """Servers and channels made from now on make no spans (OpenTelemetry keeps the first
    provider for good; tests turn tracing off again with this)."""
    global _enabled
    _enabled = False


def server_interceptors() -> Sequence[grpc.aio.ServerInterceptor]:  # type: ignore[type-arg]
    """What a server adds to its interceptors: a span per RPC, or nothing when off."""
    return (ServerSpans(),) if _enabled else ()


def client_interceptors() -> Sequence[Any]:
    """What a channel to a peer adds: a span per call, its context sent along."""
    return (ClientSpans(),) if _enabled else ()


def _tracer() -> trace.Tracer:
    return trace.get_tracer(TRACER)


def _rpc_attributes(method: str) -> dict[str, str]:
    service, _, name = method.lstrip("/").partition("/")
    return {"rpc.system": "grpc", "rpc.service": service, "rpc.method": name}


def _end(span: trace.Span, code: grpc.StatusCode, errors: frozenset[grpc.StatusCode]) -> None:
    span.set_attribute("rpc.grpc.status_code", code.value[0])
    if code in errors:
        span.set_status(Status(StatusCode.ERROR, code.name))
    span.end()


Context = grpc.aio.ServicerContext[Any, Any]


def _final_code(context: Context, error: BaseException | None) -> grpc.StatusCode:
    """The call's status: what the servicer set (abort sets it before it raises), else OK,
    or UNKNOWN for an exception that escaped it."""
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code
    if error is None:
        return grpc.StatusCode.OK
    if not isinstance(error, Exception):
        return grpc.StatusCode.CANCELLED  # the call was cancelled (the caller went away)
    return grpc.StatusCode.UNKNOWN


def _started(method: str, context: Context) -> tuple[trace.Span, otel_context.Context, object]:
    """A SERVER span for the call, child of the caller's context, made current: the span,
    the context made current and the token that undoes it."""
    carrier: dict[str, str] = {}
    for key, value in context.invocation_metadata() or ():
        if isinstance(value, str):
            carrier[key] = value
    parent = propagate.extract(carrier)
    span = _tracer().start_span(
        method.lstrip("/"), context=parent, kind=SpanKind.SERVER, attributes=_rpc_attributes(method)
    )
    current = trace.set_span_in_context(span, parent)
    return span, current, otel_context.attach(current)


def _restore(current: otel_context.Context, token: object) -> None:
    """Undo `_started`'s attach, unless the code runs in another context by now (an
    abandoned response stream closed by the garbage collector): there the task's
    context dies with it, and detaching would only log "Failed to detach context"."""
    if otel_context.get_current() is current:
        otel_context.detach(token)  # type: ignore[arg-type]


def _traced(behaviour: Any, method: str, response_streaming: bool) -> Any:
    """`behaviour` inside a SERVER span (a coroutine, or an async generator for response
    streams, whatever style the servicer is written in)."""
    if response_streaming:

        async def responses(request: Any, context: Context) -> AsyncIterator[Any]:
            span, current, token = _started(method, context)
            error: BaseException | None = None
            try:
                async for response in responses_of(behaviour(request, context)):
                    yield response
            except BaseException as raised:
                error = raised
                raise
            finally:
                _end(span, _final_code(context, error), _SERVER_ERRORS)
                _restore(current, token)

        return responses

    async def unary(request: Any, context: Context) -> Any:
        span, current, token = _started(method, context)
        error: BaseException | None = None
        try:
            return await answer_of(behaviour(request, context))
        except BaseException as raised:
            error = raised
            raise
        finally:
            _end(span, _final_code(context, error), _SERVER_ERRORS)
            _restore(current, token)

    return unary


class ServerSpans(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """A SERVER span around every RPC. Handlers are wrapped once each and remembered."""

    def __init__(self) -> None:
        self._wrapped: dict[str, tuple[Handler, Handler]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method
        if method.startswith(_UNTRACED):
            return handler
        known = self._wrapped.get(method)
        if known is not None and known[0] is handler:
            return known[1]
        kind = behaviour_kind(handler)
        behaviour = getattr(handler, kind)
        if behaviour is None:
            return handler
        wrapped: Handler = handler._replace(  # type: ignore[attr-defined]
            **{kind: _traced(behaviour, method, handler.response_streaming)}
        )
        self._wrapped[method] = (handler, wrapped)
        return wrapped


def _with_trace_context(metadata: Any) -> grpc.aio.Metadata:
    """The call's metadata plus the current trace context (`traceparent`, ...)."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    pairs = list(metadata) if metadata is not None else []
    return grpc.aio.Metadata(*pairs, *carrier.items())


class ClientSpans(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[type-arg]
    """A CLIENT span around every unary call on a peer channel (the service manager's
    calls are all unary), the span's context sent in the call's metadata."""

    async def intercept_unary_unary(
        self,
        continuation: Callable[[grpc.aio.ClientCallDetails, Any], Awaitable[Any]],
        client_call_details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        method = client_call_details.method
        name = method.decode() if isinstance(method, bytes) else str(method)
        with _tracer().start_as_current_span(
            name.lstrip("/"),
            kind=SpanKind.CLIENT,
            attributes=_rpc_attributes(name),
            record_exception=False,
            set_status_on_exception=False,
            end_on_exit=False,
        ) as span:
            details = client_call_details._replace(  # type: ignore[attr-defined]
                metadata=_with_trace_context(client_call_details.metadata)
            )
            try:
                call = await continuation(details, request)
                # The span lasts until the answer; the caller's own await of the call
                # gets the same answer (or error) again.
                await call
            except grpc.aio.AioRpcError as error:
                _end(span, error.code(), _ALL_ERRORS)
                raise
            except BaseException:
                _end(span, grpc.StatusCode.CANCELLED, _ALL_ERRORS)
                raise
            _end(span, grpc.StatusCode.OK, _ALL_ERRORS)
            return call


_ALL_ERRORS = frozenset(code for code in grpc.StatusCode if code is not grpc.StatusCode.OK)
