"""The bidirectional usage stream of one session, as an object that reopens itself (the
api-core ResumableBidiRpc model).

Each update is written and its acknowledgment awaited within `FailoverConfig.ack_timeout`.
A failure goes through the recovery policy (`client_sdk.recovery`): a server that is
unreachable, broke the stream, or did not acknowledge in time (a hung server counts as
surely as a dead one) has its circuit breaker told, and the stream reopens on the server
the failover strategy chooses, with the same session id, resending the update that was
not acknowledged; the new server takes the session over (its owner epoch fences the old
one out) and cumulative counters make a repeat harmless. An expired token is refreshed
and the stream reopened, once. Anything else is the server's answer and is raised.

A stream whose server's circuit opened (another stream found the server dead or hung)
moves at its next update, without waiting out its own deadline there."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import grpc

from client_sdk import recovery
from client_sdk.auth import TokenProvider
from client_sdk.errors import error_reason
from client_sdk.failover import ServerPool
from meterline.service.v1 import service_pb2, service_pb2_grpc

log = logging.getLogger(__name__)


class MeterStream:
    def __init__(
        self,
        pool: ServerPool,
        tokens: TokenProvider,
        session_id: str,
        *,
        ack_timeout: float | None = None,
    ) -> None:
        self._pool = pool
        self._tokens = tokens
        self.session_id = session_id
        self._ack_timeout = ack_timeout or pool.failover.ack_timeout
        self._open_timeout = max(self._ack_timeout, pool.failover.open_timeout)
        self._call: Any = None
        self.address: str | None = None
        """The server the stream is open on (None while closed)."""
        self.reopened = 0
        """How many times the stream was opened again after a recoverable failure."""

    async def send(self, sequence: int, used_units: int) -> service_pb2.MeterResponse:
        """Send one cumulative update and return its acknowledgment, resuming the stream
        on another server as often as the retry config allows."""
        update = service_pb2.ResourceUtilizationUpdate(
            session_id=self.session_id, sequence=sequence, used_units=used_units
        )
        update.observed_at.GetCurrentTime()
        tried: set[str] = set()

        async def attempt() -> service_pb2.MeterResponse:
            address = self._server_for(tried)
            try:
                response = await self._exchange(address, update)
            except BaseException as error:
                # Whatever stopped the exchange (a failure, or the caller cancelling it),
                # the stream may hold an answer no one will read: it is not used again.
                self._reset()
                if isinstance(error, Exception) and recovery.decide(error) is (
                    recovery.Decision.RECOVER
                ):
                    self.reopened += 1
                    if recovery.blames_server(error):
                        tried.add(address)
                    self._pool.record_failure(address, error)
                    log.info(
                        "session %s: usage stream on %s failed (%s); resuming",
                        self.session_id,
                        address,
                        recovery.describe(error),
                    )
                raise
            self._pool.record_success(address)
            return response

        return await recovery.run(
            attempt,
            self._pool.retry,
            refresh_token=self._tokens.invalidate,
            unavailable=self._pool.unavailable,
        )

    def _server_for(self, tried: set[str]) -> str:
        if self._call is not None and self.address is not None:
            if self._pool.breaker(self.address).allows_traffic:
                return self.address
            log.info(
                "session %s: server %s's circuit is open; moving the usage stream",
                self.session_id,
                self.address,
            )
            self._reset()
        return self._pool.choose(tried)

    async def _exchange(
        self, address: str, update: service_pb2.ResourceUtilizationUpdate
    ) -> service_pb2.MeterResponse:
        deadline = self._ack_timeout
        if self._call is None:
            metadata = await self._tokens.metadata()
            stub: Any = service_pb2_grpc.ServiceManagerStub(self._pool.channel(address))
            # No request iterator: updates are written one at a time with call.write().
            self._call = stub.Meter(metadata=metadata)
            self.address = address
            deadline = self._open_timeout
        call = self._call
        try:
            async with asyncio.timeout(deadline):
                try:
                    await call.write(update)
                except grpc.aio.AioRpcError as error:
                    # A write the local gRPC core could not send (the connection broke);
                    # a stream the server had ended raises InvalidStateError instead.
                    if error.code() is grpc.StatusCode.INTERNAL and not error_reason(error):
                        raise recovery.TransportFailure(
                            f"the update could not be sent: {error.details()}"
                        ) from error
                    raise
                response = await call.read()
        except TimeoutError:
            raise recovery.AckTimeout(
                f"update {update.sequence} not acknowledged within {deadline} s"
            ) from None
        except asyncio.InvalidStateError:
            # The stream had already ended: its final status says why.
            raise await self._status_error(call) from None
        if response is grpc.aio.EOF:  # type: ignore[attr-defined]
            raise await self._status_error(call)
        assert isinstance(response, service_pb2.MeterResponse)
        return response

    @staticmethod
    async def _status_error(call: Any) -> Exception:
        code = await call.code()
        if code is grpc.StatusCode.OK:
            return recovery.TransportFailure("the usage stream closed without an answer")
        return grpc.aio.AioRpcError(
            code,
            grpc.aio.Metadata(),
            await call.trailing_metadata() or grpc.aio.Metadata(),
            details=await call.details() or "the usage stream ended",
            debug_error_string=None,
        )

    def _reset(self) -> None:
        if self._call is not None:
            self._call.cancel()
        self._call = None
        self.address = None

    async def close(self) -> None:
        """End the stream from this side (the session goes on until it is stopped)."""
        if self._call is not None:
            with contextlib.suppress(grpc.aio.AioRpcError, asyncio.InvalidStateError, TimeoutError):
                async with asyncio.timeout(self._ack_timeout):
                    await self._call.done_writing()
        self._reset()
