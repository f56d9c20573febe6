"""Live events for watchers: one Redis subscription connection per instance, shared by
every WatchAccount stream of it; messages are fanned out in the process to a bounded
queue per watcher (a slow watcher loses its oldest usage events, never anyone else's).
The same connection hears the billing manager's "account funded" and "account suspended
or closed" events (pattern subscriptions, kernel/account_events.py) and hands each to a
callback."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from meterline.kernel.account_events import (
    account_funded_pattern,
    account_status_pattern,
    funded_account,
    status_account,
)
from meterline.kernel.errors import Unavailable
from service_manager.domain.records import UsageEvent
from service_manager.domain.sessions import TerminationReason
from service_manager.storage.presence import Keys
from service_manager.storage.watched import WatchedAccounts

log = logging.getLogger(__name__)

QUEUE_SIZE = 256


class RedisSubscriptions:
    """The Subscriptions port on Redis pub/sub."""

    def __init__(self, redis: Redis, prefix: str, watched: WatchedAccounts | None = None) -> None:
        self._pubsub = redis.pubsub()
        self._watched = watched
        """Told of every account this instance's watchers follow (storage/watched.py)."""
        self._keys = Keys(prefix)
        self._watchers: dict[str, set[asyncio.Queue[dict[str, Any]]]] = {}
        self._lock = asyncio.Lock()
        self._reader: asyncio.Task[None] | None = None
        self._prefix = prefix
        self._on_funded: Callable[[str], Awaitable[object]] | None = None
        self._on_suspended: Callable[[str], Awaitable[object]] | None = None
        self._funding: set[asyncio.Task[object]] = set()

    async def follow_funding(
        self,
        on_funded: Callable[[str], Awaitable[object]],
        on_suspended: Callable[[str], Awaitable[object]] | None = None,
    ) -> None:
        """Hear every "account funded" event (and, given `on_suspended`, every "account
        suspended or closed" one), on the shared connection (the subscriptions are
        renewed by the client when it reconnects). Runs until it has subscribed."""
        self._on_funded = on_funded
        self._on_suspended = on_suspended
        patterns = [account_funded_pattern(self._prefix)]
        if on_suspended is not None:
            patterns.append(account_status_pattern(self._prefix))
        failing = False
        while True:
            try:
                async with self._lock:
                    await self._pubsub.psubscribe(*patterns)
                    if self._reader is None or self._reader.done():
                        self._reader = asyncio.create_task(self._read())
                return
            except (RedisError, OSError) as error:
                if not failing:
                    log.warning("funding events not heard yet; trying again: %s", error)
                failing = True
                await asyncio.sleep(1.0)

    async def close(self) -> None:
        for task in list(self._funding):
            task.cancel()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        with contextlib.suppress(RedisError):
            await self._pubsub.aclose()  # type: ignore[no-untyped-call]

    def account_events(self, account_id: str) -> AsyncIterator[UsageEvent]:
        return self._account_events(account_id)

    async def _account_events(self, account_id: str) -> AsyncIterator[UsageEvent]:
        watched = self._watched
        if watched is not None:
            await watched.start(account_id)
        try:
            async for data in self._listen(self._keys.account_channel(account_id)):
                yield _usage_event(data)
        finally:
            if watched is not None:
                watched.stop(account_id)

    async def _listen(self, channel: str) -> AsyncIterator[dict[str, Any]]:
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(QUEUE_SIZE)
        await self._add(channel, queue)
        try:
            while True:
                yield await queue.get()
        finally:
            await self._remove(channel, queue)

    async def _add(self, channel: str, queue: asyncio.Queue[dict[str, Any]]) -> None:
        async with self._lock:
            watchers = self._watchers.setdefault(channel, set())
            watchers.add(queue)
            if len(watchers) == 1:
                try:
                    await self._pubsub.subscribe(channel)
                except RedisError as error:
                    watchers.discard(queue)
                    if not watchers:
                        del self._watchers[channel]
                    raise Unavailable(
                        "Live events (Redis) cannot be reached; try again shortly."
                    ) from error
            if self._reader is None or self._reader.done():
                self._reader = asyncio.create_task(self._read())

    async def _remove(self, channel: str, queue: asyncio.Queue[dict[str, Any]]) -> None:
        async with self._lock:
            watchers = self._watchers.get(channel)
            if watchers is None:
                return
            watchers.discard(queue)
            if not watchers:
                del self._watchers[channel]
                with contextlib.suppress(RedisError):
                    await self._pubsub.unsubscribe(channel)

    async def _read(self) -> None:
        failing = False
        while True:
            try:
                message = await self._pubsub.get_message(
                    ignore_subscribe_messages=True, timeout=1.0
                )
                failing = False
            except (RedisError, OSError) as error:
                if not failing:
                    log.warning("event subscription lost; reconnecting: %s", error)
                failing = True
                await asyncio.sleep(0.5)
                continue
            except RuntimeError:  # no subscription (yet, or any more)
                await asyncio.sleep(0.1)
                continue
            if message is None:
                continue
            channel = message["channel"]
            channel = channel.decode() if isinstance(channel, bytes) else channel
            if message.get("type") == "pmessage":
                self._funded(channel)
                continue
            if message.get("type") != "message":
                continue
            watchers = self._watchers.get(channel)
            if not watchers:
                continue
            data = json.loads(message["data"])
            for queue in watchers:
                if queue.full():
                    with contextlib.suppress(asyncio.QueueEmpty):
                        queue.get_nowait()
                queue.put_nowait(data)

    def _funded(self, channel: str) -> None:
        account_id = funded_account(self._prefix, channel)
        act = self._on_funded
        if account_id is None:
            account_id = status_account(self._prefix, channel)
            act = self._on_suspended
        if account_id is None or act is None:
            return
        task = asyncio.ensure_future(act(account_id))
        self._funding.add(task)
        task.add_done_callback(self._funding.discard)
        task.add_done_callback(_log_failure)


def _usage_event(data: dict[str, Any]) -> UsageEvent:
    return UsageEvent(
        account_id=data["account_id"],
        session_id=data["session_id"],
        balance_micros=data["balance_micros"],
        charged_micros=data["charged_micros"],
        used_units=data["used_units"],
        ended=data["ended"],
        reason=TerminationReason(data["reason"]) if data.get("reason") else None,
        final_units=data.get("final_units", False),
        low_balance=data.get("low_balance", False),
        seconds_left=data.get("seconds_left"),
    )


def _log_failure(task: asyncio.Task[object]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("an account event was not acted on: %s", task.exception())
