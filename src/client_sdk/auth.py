"""Access tokens for the device: issued from its credential, refreshed before they expire,
and refreshed at once when a server finds one expired anyway (a device clock that is off)."""

from __future__ import annotations

import asyncio
import time

import grpc

from client_sdk.failover import ServerPool
from meterline.auth.v1 import auth_pb2, auth_pb2_grpc


class TokenProvider:
    def __init__(
        self,
        pool: ServerPool,
        client_id: str,
        client_secret: str,
        refresh_margin: float,
        call_timeout: float | None = None,
    ) -> None:
        self._pool = pool
        self._client_id = client_id
        self._client_secret = client_secret
        self._margin = refresh_margin
        self._token = ""
        self._refresh_at = float("-inf")
        """time.monotonic() from which the token is renewed before use."""
        self._lock = asyncio.Lock()
        self.account_id = ""
        """The account the device credential is bound to (known after login)."""
        self.refreshes = 0
        """How many tokens were issued (for diagnostics and tests)."""

    async def token(self) -> str:
        async with self._lock:
            if time.monotonic() >= self._refresh_at:
                await self._issue()
            return self._token

    async def _issue(self) -> None:
        request = auth_pb2.IssueTokenRequest(
            client_id=self._client_id, client_secret=self._client_secret
        )

        async def call(channel: grpc.aio.Channel, deadline: float) -> auth_pb2.IssueTokenResponse:
            stub = auth_pb2_grpc.AuthServiceStub(channel)
            return await stub.IssueToken(request, timeout=deadline)

        response = await self._pool.call(call)
        # Renewal is scheduled on the monotonic clock, so a wall clock that jumps after
        # login does not delay it; a clock that was wrong from the start shows as the
        # server's TOKEN_EXPIRED, which the recovery policy answers with a refresh.
        lifetime = response.expire_time.ToSeconds() - time.time()
        margin = min(self._margin, max(lifetime, 0) / 3)
        self._refresh_at = time.monotonic() + lifetime - margin
        self._token = response.access_token
        self.account_id = response.account_id
        self.refreshes += 1

    def invalidate(self) -> None:
        """Forget the token: the next call gets a new one."""
        self._refresh_at = float("-inf")

    async def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {await self.token()}"),)
