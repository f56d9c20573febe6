"""The presence writer on real Redis: a tick's usage events go out as a few script calls,
not a command each, so they must still reach every account's channel, each as the same
JSON a display has always read, and the collection's usage figures must still be written."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime

import pytest
from redis.asyncio import Redis

from meterline.kernel.media import ServiceType, Unit
from meterline.kernel.pricing import RateTerms
from service_manager.domain.records import UsageEvent
from service_manager.domain.sessions import Session, SessionRate, SessionStatus, TerminationReason
from service_manager.storage import presence as presence_module
from service_manager.storage.presence import RedisPresence, usage_event_to_json
from tests.support.stores import StoreUrls

pytestmark = pytest.mark.integration

RATE = SessionRate(
    tariff_id="trf_presence",
    prefix="+44",
    unit=Unit.SECOND,
    terms=RateTerms(
        price_per_unit_micros=10,
        increment_units=1,
        minimum_units=0,
        setup_fee_micros=0,
    ),
    currency="EUR",
)


def session(number: int) -> Session:
    at = datetime.now(UTC)
    return Session(
        session_id=f"ses_presence_{number:04d}",
        account_id=f"acc_presence_{number:04d}",
        service_type=ServiceType.VOICE,
        endpoint="+442079460000",
        application_id="",
        gateway_id="local",
        rate=RATE,
        status=SessionStatus.ACTIVE,
        started_at=at,
        last_update_at=at,
        last_sequence=number,
        used_units=number,
        granted_units=10_000,
        held_micros=100_000,
    )


def event(of: Session, **changes: object) -> UsageEvent:
    made = UsageEvent(
        of.account_id, of.session_id, 1_000_000 - of.used_units, of.used_units, of.used_units
    )
    return replace(made, **changes)  # type: ignore[arg-type]


@pytest.fixture
async def redis(stores: StoreUrls) -> AsyncIterator[Redis]:
    client = Redis.from_url(stores.redis_url)
    try:
        yield client
    finally:
        await client.aclose()


def as_json_dumps(event: UsageEvent) -> str:
    """What the writer sent before it wrote the JSON by hand."""
    return json.dumps(
        {
            "account_id": event.account_id,
            "session_id": event.session_id,
            "balance_micros": event.balance_micros,
            "charged_micros": event.charged_micros,
            "used_units": event.used_units,
            "ended": event.ended,
            "reason": event.reason.value if event.reason else "",
            "final_units": event.final_units,
            "low_balance": event.low_balance,
            "seconds_left": event.seconds_left,
        }
    )


def test_an_event_is_the_json_a_display_has_always_read() -> None:
    plain = session(1)
    for made in (
        event(plain, seconds_left=600),
        event(plain, account_id='acc "quoted" \\ é 中 \n\t\x00', seconds_left=None),
        event(
            plain,
            balance_micros=-5,
            ended=True,
            reason=TerminationReason.BALANCE_EXHAUSTED,
            final_units=True,
            low_balance=True,
            seconds_left=0,
        ),
    ):
        assert usage_event_to_json(made) == as_json_dumps(made)


async def test_every_session_of_a_tick_reaches_its_channel(
    stores: StoreUrls, redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """More sessions in one tick than one script call takes: every event arrives once, on
    its own account's channel, and every session's usage figure is in the collection."""
    monkeypatch.setattr(presence_module, "PER_SCRIPT", 7)
    prefix = f"{stores.redis_prefix}:writer"
    presence = RedisPresence(redis, prefix)
    sessions = [session(number) for number in range(1, 24)]
    events = {}
    for one in sessions:
        presence.started(one)
        events[one.account_id] = event(one, seconds_left=one.used_units * 2)
        presence.usage(one, events[one.account_id])

    listener = redis.pubsub()
    await listener.psubscribe(f"{prefix}:events:account:*")
    try:
        await presence.flush()
        heard: dict[str, list[str]] = {}
        async with asyncio.timeout(10):
            while sum(len(items) for items in heard.values()) < len(sessions):
                message = await listener.get_message(ignore_subscribe_messages=True, timeout=1)
                if message is None or message["type"] != "pmessage":
                    continue
                channel = message["channel"].decode()
                heard.setdefault(channel, []).append(message["data"].decode())
    finally:
        await listener.aclose()  # type: ignore[no-untyped-call]

    assert heard == {
        f"{prefix}:events:account:{account_id}": [as_json_dumps(made)]
        for account_id, made in events.items()
    }
    for one in sessions:
        stored = await redis.hget(presence.keys.session(one.session_id), "used_units")
        assert stored is not None and int(stored) == one.used_units
    listed = await presence.active()
    assert {user.session_id for user in listed} >= {one.session_id for one in sessions}


async def test_an_accounts_sessions_are_read_from_its_own_set(
    stores: StoreUrls, redis: Redis
) -> None:
    """Listing one account's sessions reads that account's entries only (a device's display
    must not cost what the whole installation runs): here another account's entry is
    broken, and the listing does not notice. An ended session leaves the account's set,
    and one whose entry went missing is dropped from it at the next read."""
    prefix = f"{stores.redis_prefix}:by-account"
    presence = RedisPresence(redis, prefix)
    mine = [replace(session(number), account_id="acc_presence_mine") for number in (1, 2, 3)]
    others = [replace(session(number), account_id="acc_presence_other") for number in range(4, 30)]
    for one in (*mine, *others):
        presence.started(one)
    await presence.flush()
    assert len(await presence.active()) == len(mine) + len(others)

    await redis.delete(presence.keys.session(others[0].session_id))
    await redis.set(presence.keys.session(others[0].session_id), "not a hash")
    listed = await presence.active("acc_presence_mine")
    assert [user.session_id for user in listed] == [one.session_id for one in mine]

    presence.ended(mine[0].session_id, event(mine[0], ended=True))
    await presence.flush()
    await redis.delete(presence.keys.session(mine[1].session_id))  # a removal that was lost
    listed = await presence.active("acc_presence_mine")
    assert [user.session_id for user in listed] == [mine[2].session_id]
    index = presence.keys.account_active("acc_presence_mine")
    assert [item.decode() for item in await redis.zrange(index, 0, -1)] == [mine[2].session_id]


async def test_a_rebuild_writes_the_accounts_sets_too(stores: StoreUrls, redis: Redis) -> None:
    prefix = f"{stores.redis_prefix}:rebuild-accounts"
    presence = RedisPresence(redis, prefix)
    sessions = [replace(session(number), account_id="acc_presence_rebuilt") for number in (1, 2)]
    assert await presence.needs_rebuild()
    assert await presence.rebuild_if_lost(sessions)
    assert not await presence.needs_rebuild()
    listed = await presence.active("acc_presence_rebuilt")
    assert {user.session_id for user in listed} == {one.session_id for one in sessions}


async def test_a_rebuild_takes_ended_sessions_out_of_their_accounts_sets(
    stores: StoreUrls, redis: Redis
) -> None:
    prefix = f"{stores.redis_prefix}:rebuild-gone"
    presence = RedisPresence(redis, prefix)
    kept, gone = (replace(session(number), account_id="acc_presence_gone") for number in (1, 2))
    presence.started(kept)
    presence.started(gone)
    await presence.flush()
    assert await presence.rebuild_if_lost([kept])  # gone ended while nobody wrote it
    index = presence.keys.account_active("acc_presence_gone")
    assert [item.decode() for item in await redis.zrange(index, 0, -1)] == [kept.session_id]
