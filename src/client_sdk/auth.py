"""Access tokens for the device: issued from its credential, refreshed before expiry."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from client_sdk.failover import ServerPool
from meterline.auth.v1 import auth_pb2, auth_pb2_grpc


class TokenProvider:
    def __init__(
        self,
        pool: ServerPool,
        client_id: str,
        client_secret: str,
        refresh_margin: float,
        call_timeout: float,
    ) -> None:
        self._pool = pool
        self._client_id = client_id
        self._client_secret = client_secret
        self._margin = timedelta(seconds=refresh_margin)
        self._timeout = call_timeout
        self._token = ""
        self._expires_at = datetime.min.replace(tzinfo=UTC)
        self._lock = asyncio.Lock()
        self.account_id = ""
        """The account the device credential is bound to (known after login)."""

    async def token(self) -> str:
        async with self._lock:
            if datetime.now(UTC) + self._margin >= self._expires_at:
                request = auth_pb2.IssueTokenRequest(
                    client_id=self._client_id, client_secret=self._client_secret
                )
                response = await self._pool.call(
                    lambda channel: auth_pb2_grpc.AuthServiceStub(channel).IssueToken(
                        request, timeout=self._timeout
                    )
                )
                self._token = response.access_token
                self._expires_at = response.expire_time.ToDatetime(tzinfo=UTC)
                self.account_id = response.account_id
            return self._token

    def invalidate(self) -> None:
        self._expires_at = datetime.min.replace(tzinfo=UTC)

    async def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {await self.token()}"),)
