"""The one error catalogue: each domain error becomes one gRPC status code with its
public sentence and a google.rpc.ErrorInfo; a store that cannot be reached becomes
UNAVAILABLE (`store_errors`); anything else unexpected becomes INTERNAL, with the detail
only in the log."""

from __future__ import annotations

import functools
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, NoReturn, TypeVar

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2

from meterline.kernel import errors, metrics
from meterline.kernel.money import AmountError
from meterline.kernel.store_errors import as_unavailable, one_line

log = logging.getLogger(__name__)

ERROR_DOMAIN = "meterline.dev"

_CODES: tuple[tuple[type[errors.MeterlineError], grpc.StatusCode], ...] = (
    (errors.InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (errors.PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
    (errors.NotFound, grpc.StatusCode.NOT_FOUND),
    (errors.AlreadyExists, grpc.StatusCode.ALREADY_EXISTS),
    (errors.FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.ResourceExhausted, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.Unavailable, grpc.StatusCode.UNAVAILABLE),
)


def status_code_for(error: errors.MeterlineError) -> grpc.StatusCode:
    for kind, code in _CODES:
        if isinstance(error, kind):
            return code
    return grpc.StatusCode.INTERNAL


def _status_details(code: grpc.StatusCode, message: str, reason: str) -> bytes:
    info = error_details_pb2.ErrorInfo(reason=reason, domain=ERROR_DOMAIN)
    detail = any_pb2.Any()
    detail.Pack(info)
    status = status_pb2.Status(code=code.value[0], message=message, details=[detail])
    return bytes(status.SerializeToString())


async def abort(
    context: grpc.aio.ServicerContext[Any, Any],
    error: Exception,
    *,
    database: str = "database",
    call: str = "",
) -> NoReturn:
    """End the call with the status the catalogue gives for `error`. `database` is what
    the public message calls the service's database ("account database"); `call` names
    the method in the log."""
    if isinstance(error, AmountError):
        error = errors.InvalidArgument(str(error), reason="BAD_AMOUNT")
    if not isinstance(error, errors.MeterlineError):
        outage = as_unavailable(error, database)
        if outage is not None:
            # Expected while a store restarts: one line per call, no traceback.
            log.warning("%s: %s (%s)", call or "call", outage.message, one_line(error))
            error = outage
    if isinstance(error, errors.MeterlineError):
        code, message, reason = status_code_for(error), error.message, error.reason
    else:
        incident = uuid.uuid4().hex[:12]
        log.exception("unexpected error (incident %s)", incident, exc_info=error)
        code = grpc.StatusCode.INTERNAL
        message = f"Internal error; the server log has the details under incident {incident}."
        reason = "INTERNAL"
    await context.abort(
        code,
        message,
        trailing_metadata=(("grpc-status-details-bin", _status_details(code, message, reason)),),
    )
    raise AssertionError("context.abort returned")  # pragma: no cover


def _is_ours(error: BaseException) -> bool:
    return isinstance(error, errors.MeterlineError | AmountError)


_SERVICE_NAMES: dict[type, str] = {}


def _rpc_name(servicer: object, method: Callable[..., Any]) -> str:
    """`Service.Method` as the proto names them (the generated base class of the
    servicer), for the metrics."""
    kind = type(servicer)
    service = _SERVICE_NAMES.get(kind)
    if service is None:
        generated = next(
            (base for base in kind.__mro__ if base.__module__.endswith("_pb2_grpc")), kind
        )
        service = _SERVICE_NAMES[kind] = generated.__name__.removesuffix("Servicer")
    return f"{service}.{method.__name__}"


def _database_of(servicer: object) -> str:
    """What a servicer's public messages call its database: its `database_label`."""
    return str(getattr(servicer, "database_label", "database"))


Req = TypeVar("Req")
Resp = TypeVar("Resp")
Self = TypeVar("Self")


def unary(
    method: Callable[[Self, Req, grpc.aio.ServicerContext[Any, Any]], Awaitable[Resp]],
) -> Callable[[Self, Req, grpc.aio.ServicerContext[Any, Any]], Awaitable[Resp]]:
    """Wrap a unary servicer method so every error goes through the catalogue. A servicer
    may name its database for the public messages in a `database_label` attribute."""

    @functools.wraps(method)
    async def wrapper(
        self: Self, request: Req, context: grpc.aio.ServicerContext[Any, Any]
    ) -> Resp:
        context.add_done_callback(metrics.call_done(_rpc_name(self, method), time.perf_counter()))
        try:
            return await method(self, request, context)
        except Exception as error:
            if isinstance(error, grpc.aio.AbortError):
                raise
            if not _is_ours(error):
                log.debug("unexpected error in %s", method.__qualname__)
            await abort(context, error, database=_database_of(self), call=method.__qualname__)

    return wrapper


def streaming(
    method: Callable[[Self, Req, grpc.aio.ServicerContext[Any, Any]], AsyncIterator[Resp]],
) -> Callable[[Self, Req, grpc.aio.ServicerContext[Any, Any]], AsyncIterator[Resp]]:
    """Wrap a response-streaming servicer method the same way."""

    @functools.wraps(method)
    async def wrapper(
        self: Self, request: Req, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Resp]:
        context.add_done_callback(metrics.call_done(_rpc_name(self, method), time.perf_counter()))
        try:
            async for response in method(self, request, context):
                yield response
        except Exception as error:
            if isinstance(error, grpc.aio.AbortError):
                raise
            await abort(context, error, database=_database_of(self), call=method.__qualname__)

    wrapper.maps_errors = True  # type: ignore[attr-defined]
    return wrapper


def writing(
    method: Callable[[Self, Req, grpc.aio.ServicerContext[Any, Any]], Awaitable[None]],
) -> Callable[[Self, Req, grpc.aio.ServicerContext[Any, Any]], Awaitable[None]]:
    """Wrap a stream method written in the reader-writer style (`context.read()`,
    `context.write()`) the same way. On a hot stream this style saves gRPC's request
    iterator and two response generators per message."""

    @functools.wraps(method)
    async def wrapper(
        self: Self, request: Req, context: grpc.aio.ServicerContext[Any, Any]
    ) -> None:
        context.add_done_callback(metrics.call_done(_rpc_name(self, method), time.perf_counter()))
        try:
            await method(self, request, context)
        except Exception as error:
            if isinstance(error, grpc.aio.AbortError):
                raise
            await abort(context, error, database=_database_of(self), call=method.__qualname__)

    wrapper.maps_errors = True  # type: ignore[attr-defined]
    return wrapper


def maps_errors(behaviour: object) -> bool:
    """Whether a servicer method turns a domain error raised while it reads its request
    stream into its status (`streaming` methods do)."""
    return bool(getattr(behaviour, "maps_errors", False))


def error_reason(error: grpc.aio.AioRpcError) -> str:
    """The ErrorInfo reason a Meterline server put on a failed call, or ''."""
    metadata: Any = error.trailing_metadata() or ()
    for key, value in metadata:
        if key == "grpc-status-details-bin" and isinstance(value, bytes):
            status = status_pb2.Status.FromString(value)
            for detail in status.details:
                info = error_details_pb2.ErrorInfo()
                if detail.Unpack(info):
                    return str(info.reason)
    return ""
