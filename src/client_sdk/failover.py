"""Failover between servers: an ordered list, primary first. A call that finds its
server UNAVAILABLE moves to the next one and is retried with backoff (the shared retry
policy); any other error is the server's answer and is not retried."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

import grpc

from client_sdk.channels import open_channel
from client_sdk.config import TlsConfig
from client_sdk.errors import ServersUnavailable, from_rpc_error
from meterline.kernel.retry import is_retryable, retrying

log = logging.getLogger(__name__)
T = TypeVar("T")


class ServerPool:
    def __init__(self, addresses: Sequence[str], tls: TlsConfig, max_attempts: int = 6) -> None:
        self._tls = tls
        self._addresses = list(addresses)
        self._index = 0
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._max_attempts = max_attempts

    @property
    def current(self) -> str:
        return self._addresses[self._index]

    def channel(self) -> grpc.aio.Channel:
        address = self.current
        if address not in self._channels:
            self._channels[address] = open_channel(address, self._tls)
        return self._channels[address]

    def fail_over(self) -> str:
        failed = self.current
        self._index = (self._index + 1) % len(self._addresses)
        log.warning("server %s unavailable; moving to %s", failed, self.current)
        return self.current

    async def call(self, operation: Callable[[grpc.aio.Channel], Awaitable[T]]) -> T:
        """Run an idempotent call, failing over while servers are unavailable."""
        attempts = max(self._max_attempts, len(self._addresses))
        try:
            async for attempt in retrying(attempts=attempts, max_seconds=30.0):
                with attempt:
                    try:
                        return await operation(self.channel())
                    except grpc.aio.AioRpcError as error:
                        if is_retryable(error):
                            self.fail_over()
                        raise
        except grpc.aio.AioRpcError as error:
            if is_retryable(error):
                raise ServersUnavailable(
                    f"No server could be reached ({', '.join(self._addresses)}): {error.details()}",
                    error.code(),
                ) from error
            raise from_rpc_error(error) from error
        raise AssertionError("unreachable")  # pragma: no cover

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close(None)
        self._channels.clear()
