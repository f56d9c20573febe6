"""Presence in Redis: the collection of active end users (user, service type, rate,
endpoint, start), and the event channels displays and gateways listen on."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from redis.asyncio import Redis

from service_manager.domain.sessions import Session
from service_manager.rates import session_rate_to_json


@dataclass(frozen=True, slots=True)
class ActiveUser:
    session_id: str
    account_id: str
    service_type: str
    endpoint: str
    gateway_id: str
    started_at: datetime
    used_units: int
    rate: dict[str, Any]


class Presence:
    def __init__(self, redis: Redis, prefix: str) -> None:
        self._redis = redis
        self._prefix = prefix

    def _session_key(self, session_id: str) -> str:
        return f"{self._prefix}:presence:session:{session_id}"

    @property
    def _active_key(self) -> str:
        return f"{self._prefix}:presence:active"

    def account_channel(self, account_id: str) -> str:
        return f"{self._prefix}:events:account:{account_id}"

    def gateway_channel(self, gateway_id: str) -> str:
        return f"{self._prefix}:events:gateway:{gateway_id}"

    async def add(self, session: Session) -> None:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(
                self._session_key(session.session_id),
                mapping={
                    "account_id": session.account_id,
                    "service_type": session.service_type.value,
                    "endpoint": session.endpoint,
                    "gateway_id": session.gateway_id,
                    "started_at": session.started_at.isoformat(),
                    "used_units": session.used_units,
                    "rate": json.dumps(session_rate_to_json(session.rate)),
                },
            )
            pipe.zadd(self._active_key, {session.session_id: session.started_at.timestamp()})
            await pipe.execute()

    async def record_usage(self, session: Session, event: dict[str, Any]) -> None:
        """Note an active session's usage and tell the account's displays, in one trip."""
        async with self._redis.pipeline(transaction=False) as pipe:
            if not event["ended"]:
                pipe.hset(self._session_key(session.session_id), "used_units", session.used_units)
            pipe.publish(self.account_channel(session.account_id), json.dumps(event))
            await pipe.execute()

    async def remove(self, session_id: str) -> None:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.delete(self._session_key(session_id))
            pipe.zrem(self._active_key, session_id)
            await pipe.execute()

    async def active(self, account_id: str = "") -> list[ActiveUser]:
        session_ids = [
            item.decode() if isinstance(item, bytes) else str(item)
            for item in await self._redis.zrange(self._active_key, 0, -1)
        ]
        if not session_ids:
            return []
        async with self._redis.pipeline(transaction=False) as pipe:
            for session_id in session_ids:
                pipe.hgetall(self._session_key(session_id))
            details = await pipe.execute()
        users = []
        for session_id, raw in zip(session_ids, details, strict=True):
            if not raw:
                continue
            fields = {
                (key.decode() if isinstance(key, bytes) else key): (
                    value.decode() if isinstance(value, bytes) else value
                )
                for key, value in raw.items()
            }
            if account_id and fields["account_id"] != account_id:
                continue
            users.append(
                ActiveUser(
                    session_id=session_id,
                    account_id=fields["account_id"],
                    service_type=fields["service_type"],
                    endpoint=fields["endpoint"],
                    gateway_id=fields["gateway_id"],
                    started_at=datetime.fromisoformat(fields["started_at"]).astimezone(UTC),
                    used_units=int(fields.get("used_units", 0)),
                    rate=json.loads(fields["rate"]),
                )
            )
        return users

    async def publish(self, channel: str, event: dict[str, Any]) -> None:
        await self._redis.publish(channel, json.dumps(event))

    async def listen(self, channel: str) -> AsyncIterator[dict[str, Any]]:
        pubsub = self._redis.pubsub()
        await pubsub.subscribe(channel)
        try:
            async for message in pubsub.listen():
                if message.get("type") == "message":
                    yield json.loads(message["data"])
        finally:
            await pubsub.unsubscribe(channel)
            await pubsub.aclose()  # type: ignore[no-untyped-call]
