"""The bidirectional usage stream of one session, as an object.

Decisions per failure: UNAVAILABLE or a broken stream -> fail over to the next server,
re-open the stream with the same session id and resend the update that was not
acknowledged (cumulative counters make a repeat harmless); an expired token -> refresh
and re-open; anything else is the server's answer and ends the operation."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import grpc

from client_sdk.auth import TokenProvider
from client_sdk.failover import ServerPool
from meterline.kernel.grpc_errors import error_reason
from meterline.service.v1 import service_pb2, service_pb2_grpc

log = logging.getLogger(__name__)

# What a stream reports when its connection breaks, rather than the server answering.
BROKEN_STREAM_CODES = frozenset(
    {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.CANCELLED}
)


class MeterStream:
    def __init__(self, pool: ServerPool, tokens: TokenProvider, session_id: str) -> None:
        self._pool = pool
        self._tokens = tokens
        self.session_id = session_id
        self._call: Any = None
        self._channel: grpc.aio.Channel | None = None

    async def send(self, sequence: int, used_units: int) -> service_pb2.MeterResponse:
        update = service_pb2.ResourceUtilizationUpdate(
            session_id=self.session_id, sequence=sequence, used_units=used_units
        )
        update.observed_at.GetCurrentTime()
        return await self._pool.call(lambda channel: self._exchange(channel, update))

    async def _exchange(
        self, channel: grpc.aio.Channel, update: service_pb2.ResourceUtilizationUpdate
    ) -> service_pb2.MeterResponse:
        if self._call is None or self._channel is not channel:
            self._reset()
            stub: Any = service_pb2_grpc.ServiceManagerStub(channel)
            # No request iterator: updates are written one at a time with call.write().
            self._call = stub.Meter(metadata=await self._tokens.metadata())
            self._channel = channel
        call = self._call
        try:
            await call.write(update)
            response = await call.read()
        except grpc.aio.AioRpcError as error:
            self._reset()
            if error_reason(error) == "TOKEN_EXPIRED":
                self._tokens.invalidate()
            if error.code() in BROKEN_STREAM_CODES:
                # The connection broke under the stream (a server died mid-call). Resending
                # the cumulative update elsewhere is safe, so treat it as unavailable.
                raise grpc.aio.AioRpcError(
                    grpc.StatusCode.UNAVAILABLE,
                    grpc.aio.Metadata(),
                    grpc.aio.Metadata(),
                    details=f"usage stream broke: {error.details()}",
                    debug_error_string=None,
                ) from error
            raise
        except asyncio.InvalidStateError:
            # The stream had already ended: surface its final status.
            self._reset()
            raise await self._status_error(call) from None
        if response is grpc.aio.EOF:  # type: ignore[attr-defined]
            self._reset()
            raise await self._status_error(call)
        assert isinstance(response, service_pb2.MeterResponse)
        return response

    @staticmethod
    async def _status_error(call: Any) -> grpc.aio.AioRpcError:
        code = await call.code()
        if code is grpc.StatusCode.OK:
            code = grpc.StatusCode.UNAVAILABLE  # closed without an answer: try again
        return grpc.aio.AioRpcError(
            code,
            grpc.aio.Metadata(),
            await call.trailing_metadata() or grpc.aio.Metadata(),
            details=await call.details() or "the usage stream closed",
            debug_error_string=None,
        )

    def _reset(self) -> None:
        if self._call is not None:
            self._call.cancel()
        self._call = None
        self._channel = None

    async def close(self) -> None:
        if self._call is not None:
            with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError):
                await self._call.done_writing()
        self._reset()
