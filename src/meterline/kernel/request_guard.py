"""Hostile input stopped at the door of every server: a request body that does not decode,
or text that PostgreSQL cannot store (a NUL character), is refused with INVALID_ARGUMENT
naming the problem, before any servicer or store sees it, with no traceback in the log.

It is a server interceptor that wraps each method's request deserializer (which must not
raise: grpc logs a traceback per call and answers UNKNOWN) and its behaviour (which turns
the refusal into the status)."""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from meterline.kernel.errors import InvalidArgument
from meterline.kernel.grpc_errors import abort, maps_errors

log = logging.getLogger(__name__)

WARNING_INTERVAL_SECONDS = 10.0
"""At most one warning per method this often; the rest are counted into the next one."""


@dataclass(frozen=True, slots=True)
class Refusal:
    """What a guarded deserializer returns instead of a request it will not pass on."""

    error: InvalidArgument


def nul_field(message: Message, prefix: str = "") -> str | None:
    """The path of the first text field (nested, repeated or map) holding a NUL, or None."""
    for field, value in message.ListFields():
        name = prefix + field.name
        if field.type == FieldDescriptor.TYPE_STRING:
            texts = value if field.is_repeated else (value,)
            if any("\x00" in text for text in texts):
                return name
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            found = _nul_in_message_field(field, value, name)
            if found:
                return found
    return None


def _nul_in_message_field(field: FieldDescriptor, value: Any, name: str) -> str | None:
    entry = field.message_type
    assert entry is not None  # a message field has its type
    if entry.GetOptions().map_entry:
        value_field = entry.fields_by_name["value"]
        for key, item in value.items():
            if isinstance(key, str) and "\x00" in key:
                return f"{name} key"
            if isinstance(item, str) and "\x00" in item:
                return f"{name}[{key!r}]"
            if value_field.type == FieldDescriptor.TYPE_MESSAGE:
                found = nul_field(item, f"{name}[{key!r}].")
                if found:
                    return found
        return None
    if field.is_repeated:
        for index, item in enumerate(value):
            found = nul_field(item, f"{name}[{index}].")
            if found:
                return found
        return None
    return nul_field(value, name + ".")


class _Warnings:
    """One WARNING line per method per interval, however many bodies are refused."""

    def __init__(self) -> None:
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def refused(self, method: str, what: str) -> None:
        now = time.monotonic()
        if now - self._last.get(method, -WARNING_INTERVAL_SECONDS) < WARNING_INTERVAL_SECONDS:
            self._suppressed[method] = self._suppressed.get(method, 0) + 1
            return
        self._last[method] = now
        more = self._suppressed.pop(method, 0)
        log.warning(
            "%s: refused a request (%s)%s",
            method,
            what,
            f"; {more} more refused since the last warning" if more else "",
        )


def _guarded_deserializer(
    deserializer: Callable[[bytes], Any] | None,
    method: str,
    warnings: _Warnings,
    raising: bool,
) -> Callable[[bytes], Any] | None:
    """`deserializer`, refusing bad bodies: by raising the error (`raising`: for request
    streams read by a servicer that maps errors) or by returning a Refusal."""
    if deserializer is None:
        return None

    def refuse(error: InvalidArgument) -> Refusal:
        if raising:
            raise error
        return Refusal(error)

    def deserialize(raw: bytes) -> Any:
        try:
            message = deserializer(raw)
        except Exception as error:  # any decode failure is the caller's, never ours
            warnings.refused(method, f"undecodable body of {len(raw)} bytes")
            return refuse(
                InvalidArgument(
                    f"The request body is not a valid message for {method} ({error}); send "
                    "the protobuf encoding of the request message.",
                    reason="MALFORMED_REQUEST",
                )
            )
        if b"\x00" in raw and isinstance(message, Message):
            # A NUL byte in the body is rare (it is needed for a NUL in text, an explicit 0
            # or fixed-width numbers), so only such bodies are walked.
            field = nul_field(message)
            if field is not None:
                warnings.refused(method, f"NUL character in {field}")
                return refuse(
                    InvalidArgument(
                        f"{field} contains a NUL character (U+0000), which cannot be stored; "
                        "remove it and send the request again.",
                        reason="UNSTORABLE_TEXT",
                    )
                )
        return message

    return deserialize


async def _checked(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    async for request in requests:
        if isinstance(request, Refusal):
            raise request.error
        yield request


Context = grpc.aio.ServicerContext[Any, Any]
if TYPE_CHECKING:
    Handler = grpc.RpcMethodHandler[Any, Any]


def behaviour_kind(handler: Handler) -> str:
    """The name of the handler's behaviour attribute: "unary_unary", "stream_unary", ..."""
    return ("stream_" if handler.request_streaming else "unary_") + (
        "stream" if handler.response_streaming else "unary"
    )


async def responses_of(produced: Any) -> AsyncIterator[Any]:
    """The responses of a response-streaming behaviour's result, whatever style the
    servicer is written in: an async generator, a writer-style coroutine, or an iterable."""
    if inspect.isasyncgen(produced):
        async for response in produced:
            yield response
    elif inspect.isawaitable(produced):
        await produced  # a writer-style handler
    elif produced is not None:
        for response in produced:
            yield response


async def answer_of(answer: Any) -> Any:
    """A unary behaviour's answer, awaited if the behaviour was a coroutine."""
    return await answer if inspect.isawaitable(answer) else answer


def _guarded(handler: Handler, method: str, warnings: _Warnings) -> Handler:
    """`handler` with a guarded deserializer and, where needed, a behaviour that answers a
    refusal with its status. grpc runs a deserializer before (unary) or while (streams) the
    behaviour runs, and logs a traceback for anything a deserializer raises on its own."""
    kind = behaviour_kind(handler)
    behaviour = getattr(handler, kind)
    if handler.request_streaming and maps_errors(behaviour):
        # The servicer reads the stream inside its own error mapping: a raised refusal
        # becomes its status with no extra layer on a hot stream (Meter).
        deserialize = _guarded_deserializer(
            handler.request_deserializer, method, warnings, raising=True
        )
        replaced: Handler = handler._replace(request_deserializer=deserialize)  # type: ignore[attr-defined]
        return replaced
    wrapped = _wrapped(behaviour, handler.request_streaming, handler.response_streaming)
    if wrapped is None:
        return handler
    deserialize = _guarded_deserializer(
        handler.request_deserializer, method, warnings, raising=False
    )
    replaced = handler._replace(request_deserializer=deserialize, **{kind: wrapped})  # type: ignore[attr-defined]
    return replaced


def _wrapped(behaviour: Any, request_streaming: bool, response_streaming: bool) -> Any:
    """`behaviour` as a coroutine (or async generator) that answers a Refusal (a single
    request) or a refused message in its request stream with the refusal's status. A
    synchronous behaviour (only the generated "not implemented" ones: every Meterline
    servicer is async) is called inline."""
    if behaviour is None:
        return None
    if response_streaming:

        async def responses(request: Any, context: Context) -> AsyncIterator[Any]:
            if request_streaming:
                request = _checked(request)
            elif isinstance(request, Refusal):
                await abort(context, request.error)
            try:
                async for response in responses_of(behaviour(request, context)):
                    yield response
            except InvalidArgument as error:
                await abort(context, error)

        return responses

    async def unary(request: Any, context: Context) -> Any:
        if request_streaming:
            request = _checked(request)
        elif isinstance(request, Refusal):
            await abort(context, request.error)
        try:
            return await answer_of(behaviour(request, context))
        except InvalidArgument as error:
            await abort(context, error)

    return unary


class RequestGuard(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """The interceptor. Handlers are guarded once each and remembered."""

    def __init__(self) -> None:
        self._warnings = _Warnings()
        self._guarded: dict[str, tuple[Handler, Any]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method
        known = self._guarded.get(method)
        if known is not None and known[0] is handler:
            guarded: Handler = known[1]
            return guarded
        guarded = _guarded(handler, method, self._warnings)
        self._guarded[method] = (handler, guarded)
        return guarded
