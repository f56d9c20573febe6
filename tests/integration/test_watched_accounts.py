"""Display events only for watched accounts, on real Redis: an instance publishes a
session's usage events only while a WatchAccount stream of some instance follows its
account (storage/watched.py); a watcher on the same instance hears at once, one on
another instance after that instance's next read of the marks; marks of watchers that
went away end with their lease and are removed."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from service_manager.domain.records import UsageEvent
from service_manager.storage.presence import RedisPresence
from service_manager.storage.subscriptions import RedisSubscriptions
from service_manager.storage.watched import WatchedAccounts
from tests.integration.test_presence_writer import event, redis, session
from tests.support.stores import StoreUrls

pytestmark = pytest.mark.integration
__all__ = ["redis"]  # the fixture: a client of the test run's Redis


@pytest.fixture
def prefix(stores: StoreUrls) -> str:
    return f"{stores.redis_prefix}:watched-{uuid.uuid4().hex[:8]}"


async def heard_on(redis: Redis, prefix: str, publish: object, seconds: float) -> dict[str, int]:
    """How many messages each account channel carried while `publish` ran and for
    `seconds` after."""
    listener = redis.pubsub()
    await listener.psubscribe(f"{prefix}:events:account:*")
    counts: dict[str, int] = {}
    try:
        await publish  # type: ignore[misc]
        loop = asyncio.get_running_loop()
        until = loop.time() + seconds
        while (left := until - loop.time()) > 0:
            message = await listener.get_message(ignore_subscribe_messages=True, timeout=left)
            if message is not None and message["type"] == "pmessage":
                account = message["channel"].decode().rsplit(":", 1)[1]
                counts[account] = counts.get(account, 0) + 1
    finally:
        await listener.aclose()  # type: ignore[no-untyped-call]
    return counts


class Watch:
    """A WatchAccount stream's events, read one at a time."""

    def __init__(self, events: AsyncIterator[UsageEvent]) -> None:
        self._events = events
        self._next = asyncio.ensure_future(anext(events))

    async def next(self) -> UsageEvent:
        async with asyncio.timeout(5):
            heard = await self._next
        self._next = asyncio.ensure_future(anext(self._events))
        return heard

    async def close(self) -> None:
        self._next.cancel()
        with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
            await self._next
        await self._events.aclose()  # type: ignore[attr-defined]


async def watch(subscriptions: RedisSubscriptions, account_id: str) -> Watch:
    watching = Watch(subscriptions.account_events(account_id))
    await asyncio.sleep(0.2)  # the stream has marked its account and subscribed
    return watching


async def test_a_watcher_on_another_instance_gets_events_and_no_one_else_does(
    redis: Redis, prefix: str
) -> None:
    watched_session, quiet_session = session(101), session(102)
    publisher_marks = WatchedAccounts(redis, prefix)
    publisher = RedisPresence(redis, prefix, publisher_marks)
    watcher_marks = WatchedAccounts(redis, prefix)
    watcher = RedisSubscriptions(redis, prefix, watcher_marks)
    try:
        events = await watch(watcher, watched_session.account_id)
        await publisher_marks.refresh()  # what the publisher's writer does every 0.5 s
        assert publisher_marks.is_watched(watched_session.account_id)
        assert not publisher_marks.is_watched(quiet_session.account_id)

        publisher.usage(watched_session, event(watched_session, seconds_left=60))
        publisher.usage(quiet_session, event(quiet_session, seconds_left=60))
        counts = await heard_on(redis, prefix, publisher.flush(), 1.0)
        assert counts == {watched_session.account_id: 1}
        heard = await events.next()
        assert (heard.session_id, heard.used_units) == (
            watched_session.session_id,
            watched_session.used_units,
        )
        # The quiet session's usage figure is still written to the collection.
        figure = await redis.hget(publisher.keys.session(quiet_session.session_id), "used_units")
        assert figure is not None and int(figure) == quiet_session.used_units
        await events.close()
    finally:
        await watcher.close()


async def test_a_watcher_on_the_same_instance_hears_at_once(redis: Redis, prefix: str) -> None:
    one = session(103)
    marks = WatchedAccounts(redis, prefix)
    presence = RedisPresence(redis, prefix, marks)
    subscriptions = RedisSubscriptions(redis, prefix, marks)
    try:
        events = await watch(subscriptions, one.account_id)
        presence.usage(one, event(one))
        await presence.flush()  # no refresh of the marks before it
        heard = await events.next()
        assert heard.session_id == one.session_id
        await events.close()
        assert not marks.is_watched(one.account_id)  # no stream follows it here any more
    finally:
        await subscriptions.close()


async def test_marks_are_renewed_while_watched_and_end_after(redis: Redis, prefix: str) -> None:
    """The watching instance renews its marks from its writer loop even with nothing of
    its own to write; once its stream ends, the mark ends with its lease and is removed."""
    one = session(104)
    watcher_marks = WatchedAccounts(redis, prefix, lease_seconds=1.5)
    watcher_presence = RedisPresence(redis, prefix, watcher_marks)
    watcher = RedisSubscriptions(redis, prefix, watcher_marks)
    publisher_marks = WatchedAccounts(redis, prefix)
    writer = asyncio.create_task(watcher_presence.run())
    try:
        events = await watch(watcher, one.account_id)
        await asyncio.sleep(3.5)  # more than two leases
        await publisher_marks.refresh()
        assert publisher_marks.is_watched(one.account_id)
        await events.close()
        await asyncio.sleep(2.0)  # the last renewal's lease has ended
        await publisher_marks.refresh()
        assert not publisher_marks.is_watched(one.account_id)
        assert not await redis.hexists(publisher_marks.key, one.account_id)
    finally:
        writer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await writer
        await watcher.close()
