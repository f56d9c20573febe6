"""Hostile input on every RPC of every service: undecodable bodies and NUL characters are
refused with INVALID_ARGUMENT naming the problem, never INTERNAL or UNKNOWN, and the log
gets a few rate-limited WARNING lines, never a traceback."""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from google.protobuf.descriptor import FieldDescriptor, MethodDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass

from meterline.auth.v1 import auth_pb2
from meterline.billing.v1 import billing_pb2
from meterline.kernel.grpc_errors import error_reason
from meterline.kernel.request_guard import WARNING_INTERVAL_SECONDS
from meterline.rating.v1 import rating_pb2
from meterline.service.v1 import service_pb2
from tests.support.clients import OPERATOR
from tests.support.stack import InProcessStack
from tests.support.tls import channel

pytestmark = pytest.mark.integration

Metadata = tuple[tuple[str, str], ...]
NUL_TEXT = "bad\x00text"
FUZZ_MESSAGES = 3000


@dataclass(frozen=True)
class Rpc:
    address: str
    method: MethodDescriptor

    @property
    def path(self) -> str:
        return f"/{self.method.containing_service.full_name}/{self.method.name}"


def _rpcs(stack: InProcessStack) -> list[Rpc]:
    by_service = (
        (stack.endpoints.rating, rating_pb2.DESCRIPTOR.services_by_name.values()),
        (stack.endpoints.billing, billing_pb2.DESCRIPTOR.services_by_name.values()),
        (stack.endpoints.billing, auth_pb2.DESCRIPTOR.services_by_name.values()),
        (stack.endpoints.service, service_pb2.DESCRIPTOR.services_by_name.values()),
    )
    return [
        Rpc(address, method)
        for address, services in by_service
        for service in services
        for method in service.methods
    ]


def _text_fields(message: Message, depth: int = 0) -> Iterator[str]:
    """Set every text field (and those of nested messages, two levels down) to NUL text;
    the names set."""
    for field in message.DESCRIPTOR.fields:
        if field.type == FieldDescriptor.TYPE_STRING:
            if field.is_repeated:
                getattr(message, field.name).append(NUL_TEXT)
            else:
                setattr(message, field.name, NUL_TEXT)
            yield field.name
        elif field.type == FieldDescriptor.TYPE_MESSAGE and depth < 2:
            assert field.message_type is not None
            if field.message_type.GetOptions().map_entry or field.is_repeated:
                continue
            nested = getattr(message, field.name)
            for name in _text_fields(nested, depth + 1):
                yield f"{field.name}.{name}"


_channels: dict[str, grpc.aio.Channel] = {}
"""One channel per server for the whole module (a TLS handshake per call would be most of
the run)."""


@pytest.fixture(autouse=True)
async def _close_channels() -> AsyncIterator[None]:
    yield
    for connection in _channels.values():
        await connection.close(None)
    _channels.clear()


async def _call(
    rpc: Rpc, body: bytes, metadata: Metadata = OPERATOR
) -> grpc.aio.AioRpcError | None:
    """Send `body` as the request (a one-message stream for stream methods), as an operator
    unless other metadata is given (a stream is read only after its caller is known); the
    error, or None when the call succeeded."""
    options: dict[str, Any] = {"metadata": metadata, "timeout": 10}
    connection = _channels.get(rpc.address)
    if connection is None:
        connection = _channels[rpc.address] = channel(rpc.address)
    try:
        if rpc.method.client_streaming:

            async def requests() -> AsyncIterator[bytes]:
                yield body

            if rpc.method.server_streaming:
                call = connection.stream_stream(rpc.path, None, None)(
                    requests(), metadata=metadata, timeout=10
                )
                async for _ in call:
                    pass
            else:
                await connection.stream_unary(rpc.path, None, None)(
                    requests(), metadata=metadata, timeout=10
                )
        elif rpc.method.server_streaming:
            async for _ in connection.unary_stream(rpc.path, None, None)(
                body, metadata=metadata, timeout=10
            ):
                pass
        else:
            await connection.unary_unary(rpc.path, None, None)(body, **options)
    except grpc.aio.AioRpcError as error:
        return error
    return None


def _refused(error: grpc.aio.AioRpcError | None, rpc: Rpc) -> grpc.aio.AioRpcError:
    assert error is not None, f"{rpc.path} accepted the body"
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (
        f"{rpc.path}: {error.code().name} {error.details()}"
    )
    return error


async def test_an_undecodable_body_is_invalid_argument_on_every_rpc(
    stack: InProcessStack, caplog: pytest.LogCaptureFixture
) -> None:
    rpcs = _rpcs(stack)
    assert len(rpcs) >= 20  # every service's methods, not a handful
    caplog.set_level(logging.WARNING)
    for rpc in rpcs:
        error = _refused(await _call(rpc, b"\xff\xff\xff\xff"), rpc)
        assert error_reason(error) == "MALFORMED_REQUEST"
        assert "not a valid message" in (error.details() or "")
    assert "Traceback" not in caplog.text
    assert not [record for record in caplog.records if record.levelno >= logging.ERROR]


async def test_a_nul_character_in_any_text_field_is_refused_naming_the_field(
    stack: InProcessStack,
) -> None:
    checked = 0
    for rpc in _rpcs(stack):
        request = GetMessageClass(rpc.method.input_type)()
        fields = list(_text_fields(request))
        if not fields:
            continue
        error = _refused(await _call(rpc, request.SerializeToString()), rpc)
        assert error_reason(error) == "UNSTORABLE_TEXT"
        assert any(name in (error.details() or "") for name in fields), error.details()
        assert "NUL" in (error.details() or "")
        checked += 1
    assert checked >= 15


async def test_thousands_of_malformed_messages_get_no_internal_and_a_quiet_log(
    stack: InProcessStack, caplog: pytest.LogCaptureFixture
) -> None:
    rpcs = _rpcs(stack)
    rng = random.Random(20261201)
    caplog.set_level(logging.WARNING)
    codes: dict[str, int] = {}

    async def one(index: int) -> None:
        rpc = rpcs[index % len(rpcs)]
        if index % 3 == 0:  # a valid message with NUL text somewhere
            request = GetMessageClass(rpc.method.input_type)()
            list(_text_fields(request))
            body = request.SerializeToString()
            body = body[: rng.randrange(len(body) + 1)] if index % 2 else body
        else:
            body = rng.randbytes(rng.randrange(1, 64))
        error = await _call(rpc, body, OPERATOR if index % 2 else ())
        code = "OK" if error is None else error.code().name
        codes[code] = codes.get(code, 0) + 1
        assert code not in ("INTERNAL", "UNKNOWN"), (
            f"{rpc.path}: {code} {error and error.details()}"
        )

    began = time.monotonic()
    for start in range(0, FUZZ_MESSAGES, 100):
        await asyncio.gather(*(one(i) for i in range(start, start + 100)))
    windows = (time.monotonic() - began) / WARNING_INTERVAL_SECONDS + 1
    assert sum(codes.values()) == FUZZ_MESSAGES
    assert codes.get("INVALID_ARGUMENT", 0) > FUZZ_MESSAGES // 3, codes
    assert "Traceback" not in caplog.text
    assert not [record for record in caplog.records if record.levelno >= logging.ERROR]
    guard_warnings = [r for r in caplog.records if r.name == "meterline.kernel.request_guard"]
    # Rate-limited: one line per method per interval, not one per refused call.
    assert len(guard_warnings) <= len(rpcs) * windows < FUZZ_MESSAGES / 4, len(guard_warnings)
