"""Service manager defects seen from the wire: the time a balance lasts at a per-minute
price, retried starts that race, one device holding many watch streams, absurd usage
sequences. Real services on the test run's shared PostgreSQL and Redis."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Sequence
from urllib.parse import urlparse

import grpc
import psutil  # type: ignore[import-untyped]
import pytest
import redis

from meterline.service.v1 import service_pb2
from tests.support.clients import Stubs, new_account
from tests.support.session_calls import (
    get_account,
    listed_within,
    meter,
    own_device,
    start,
    start_request,
    stop,
    voice_tariff,
)
from tests.support.stack import InProcessStack
from tests.support.stores import StoreUrls

pytestmark = pytest.mark.integration

WatchCall = grpc.aio.UnaryStreamCall[service_pb2.WatchAccountRequest, service_pb2.AccountEvent]

# -- the time a balance lasts ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("prefix", "price_micros", "unit_size"),
    [("+358911", 600_000, 60), ("+358912", 10_000, 1)],
    ids=["0.60-per-minute", "0.01-per-second"],
)
async def test_time_left_is_what_the_balance_buys_at_the_price_per_unit_size(
    api: Stubs, prefix: str, price_micros: int, unit_size: int
) -> None:
    """11.29 at 0.60 a minute (billed per second) lasts 18.8 minutes, whether the tariff
    says 0.60 per 60 seconds or 0.01 per second; the display must not read a per-minute
    price as a per-second one."""
    await voice_tariff(api, prefix, price_micros, unit_size)
    account_id = await new_account(api.billing, 11_290_000)
    who = own_device(account_id)
    session_id = await start(api, account_id, f"{prefix}4567", who)

    (first,) = await meter(api, session_id, who, (1, 1))
    assert first.charged_micros == 10_000
    assert first.HasField("estimated_time_left")
    left = first.estimated_time_left.ToTimedelta().total_seconds()
    assert 18 * 60 <= left <= 19.5 * 60, f"estimated_time_left is {left:.0f} s, not ~18.8 min"

    # 39 seconds later, the estimate is 39 seconds shorter.
    (later,) = await meter(api, session_id, who, (2, 40))
    assert later.charged_micros == 400_000
    later_left = later.estimated_time_left.ToTimedelta().total_seconds()
    assert abs((left - later_left) - 39) <= 5, (left, later_left)
    assert await stop(api, session_id, 40, who) == 400_000


# -- a retried start -----------------------------------------------------------------------


async def test_concurrent_retries_of_one_start_make_one_session(
    api: Stubs, stack: InProcessStack
) -> None:
    """A client that fires its StartService retries at once (one request_id) must get one
    session back on every call, with one first hold, never an internal error."""
    await voice_tariff(api, "+358913", 10_000)
    account_id = await new_account(api.billing, 1_000_000)
    who = own_device(account_id)
    request = start_request(account_id, "+3589134567", request_id=uuid.uuid4().hex)

    results = await asyncio.gather(
        *(api.service.StartService(request, metadata=who, timeout=20) for _ in range(8)),
        return_exceptions=True,
    )

    failures = [
        (result.code(), result.details()) if isinstance(result, grpc.aio.AioRpcError) else result
        for result in results
        if isinstance(result, BaseException)
    ]
    assert not failures, f"{len(failures)} of 8 retries failed: {failures}"
    started = [result for result in results if isinstance(result, service_pb2.StartServiceResponse)]
    session_ids = {response.session_id for response in started}
    assert len(session_ids) == 1, session_ids
    (session_id,) = session_ids
    listed, _ = await listed_within(api, account_id, [session_id], 3)
    assert listed == [session_id]
    first_slice = stack.settings.quota.slice_seconds * 10_000
    assert (await get_account(api, account_id)).held_micros == first_slice

    assert await stop(api, session_id, 0, who) == 0
    account = await get_account(api, account_id)
    assert (account.balance_micros, account.available_micros, account.held_micros) == (
        1_000_000,
        1_000_000,
        0,
    )


# -- watch streams -------------------------------------------------------------------------


async def _outcomes(
    calls: Sequence[WatchCall],
) -> list[grpc.StatusCode | None]:
    """Each call's status code if it has ended, else None."""
    return [await call.code() if call.done() else None for call in calls]


async def _event_with_usage(call: WatchCall, account_id: str, used_units: int) -> None:
    """Read a watch stream until the event of that usage; every event on it must be of
    the watched account."""
    while True:
        event = await call.read()
        assert isinstance(event, service_pb2.AccountEvent), event
        assert event.account_id == account_id, (event.account_id, account_id)
        if event.used_units == used_units:
            return


async def test_one_device_cannot_hold_unbounded_watch_streams(
    api: Stubs, stack: InProcessStack
) -> None:
    """A device (a buggy app, or a hostile one) opening 110 WatchAccount streams gets the
    per-credential limit and RESOURCE_EXHAUSTED with a sentence for the rest; its allowed
    streams keep working, and other accounts can still start and meter services."""
    limit = stack.settings.engine.max_watches_per_caller
    await voice_tariff(api, "+358914", 10_000)
    account_id = await new_account(api.billing, 1_000_000)
    watcher = own_device(account_id)
    calls = [
        api.service.WatchAccount(
            service_pb2.WatchAccountRequest(account_id=account_id), metadata=watcher, timeout=60
        )
        for _ in range(110)
    ]
    try:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            outcomes = await _outcomes(calls)
            if sum(code is not None for code in outcomes) >= 110 - limit:
                break
            await asyncio.sleep(0.1)

        # Another account starts and meters a service while those streams are open.
        other = await new_account(api.billing, 1_000_000)
        other_device = own_device(other)
        try:
            other_session = await start(api, other, "+3589144567", other_device)
            (metered,) = await meter(api, other_session, other_device, (1, 3))
        except grpc.aio.AioRpcError as error:
            pytest.fail(
                f"another account could not start and meter while one device held 110 "
                f"watch streams: {error.code()} {error.details()}"
            )
        assert metered.charged_micros == 30_000
        assert await stop(api, other_session, 3, other_device) == 30_000

        await asyncio.sleep(0.5)  # the allowed ones must stay open
        outcomes = await _outcomes(calls)
        refused = [call for call, code in zip(calls, outcomes, strict=True) if code is not None]
        still_open = [call for call, code in zip(calls, outcomes, strict=True) if code is None]
        codes = {code for code in outcomes if code is not None}
        assert len(refused) == 110 - limit, (
            f"{len(refused)} of 110 watch streams were refused, expected {110 - limit} "
            f"(limit {limit}); codes {codes}"
        )
        assert codes == {grpc.StatusCode.RESOURCE_EXHAUSTED}
        details = (await refused[0].details()) or ""
        assert "incident" not in details.lower()
        assert str(limit) in details or "watch" in details.lower() or "stream" in details.lower(), (
            details
        )

        # The streams the device was allowed still carry its account's events.
        owner = own_device(account_id)
        session_id = await start(api, account_id, "+3589144568", owner)
        await meter(api, session_id, owner, (1, 2))
        await asyncio.wait_for(
            asyncio.gather(*(_event_with_usage(call, account_id, 2) for call in still_open)),
            timeout=10,
        )
        assert await stop(api, session_id, 2, owner) == 20_000
    finally:
        for call in calls:
            call.cancel()


def _subscriber_connections(client: redis.Redis, redis_url: str) -> int:
    """This test process's Redis connections that are subscribed to something (the
    in-process service manager's), from Redis' own CLIENT LIST; other processes sharing
    the Redis are not counted."""
    port = urlparse(redis_url).port or 6379
    ours = {
        f"{conn.laddr.ip}:{conn.laddr.port}"
        for conn in psutil.Process().net_connections(kind="inet")
        if conn.raddr and conn.raddr.port == port and conn.status == psutil.CONN_ESTABLISHED
    }
    return sum(
        1
        for entry in client.client_list()
        if entry["addr"] in ours and (int(entry["sub"]) > 0 or int(entry["psub"]) > 0)
    )


async def _settled_subscriber_connections(client: redis.Redis, redis_url: str) -> int:
    """The count once streams an earlier test cancelled have let go of theirs."""
    count = _subscriber_connections(client, redis_url)
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        await asyncio.sleep(0.2)
        again = _subscriber_connections(client, redis_url)
        if again == count:
            break
        count = again
    return count


async def test_watch_streams_share_one_redis_subscription(
    api: Stubs, stack: InProcessStack, stores: StoreUrls
) -> None:
    """Every WatchAccount stream holding a Redis connection of its own would run Redis
    out of connections with a few thousand displays: an instance's watchers share one
    subscription. 15 watches on 15 accounts add at most a couple of connections, and each
    watcher still gets only its own account's events."""
    await voice_tariff(api, "+358915", 10_000)
    client = redis.Redis.from_url(stores.redis_url)
    accounts = [await new_account(api.billing, 1_000_000) for _ in range(15)]
    devices = [own_device(account_id) for account_id in accounts]
    before = await _settled_subscriber_connections(client, stores.redis_url)
    calls = [
        api.service.WatchAccount(
            service_pb2.WatchAccountRequest(account_id=account_id), metadata=who, timeout=60
        )
        for account_id, who in zip(accounts, devices, strict=True)
    ]
    try:
        # Wait until the watches are subscribed (channels under this run's prefix that
        # name the accounts), or give them 3 seconds.
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            channels = " ".join(
                channel.decode() if isinstance(channel, bytes) else channel
                for channel in client.pubsub_channels(f"{stores.redis_prefix}*")
            )
            if all(account_id in channels for account_id in accounts):
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.2)
        assert not any(call.done() for call in calls), await _outcomes(calls)
        added = _subscriber_connections(client, stores.redis_url) - before
        assert added <= 2, f"15 watch streams opened {added} Redis subscriber connections"

        sessions = []
        for account_id, who in zip(accounts, devices, strict=True):
            session_id = await start(api, account_id, "+3589154567", who)
            await meter(api, session_id, who, (1, 1))
            sessions.append(session_id)
        await asyncio.wait_for(
            asyncio.gather(
                *(
                    _event_with_usage(call, account_id, 1)
                    for call, account_id in zip(calls, accounts, strict=True)
                )
            ),
            timeout=10,
        )
        for session_id, who in zip(sessions, devices, strict=True):
            assert await stop(api, session_id, 1, who) == 10_000
    finally:
        for call in calls:
            call.cancel()
        client.close()


# -- usage sequences -----------------------------------------------------------------------


@pytest.mark.parametrize("jump", ["int64-max", "just-past-the-gap"])
async def test_a_sequence_far_ahead_is_refused_and_metering_goes_on(
    api: Stubs, stack: InProcessStack, jump: str
) -> None:
    """A sequence of 2**63-1 (a corrupt or hostile client) would make every later update
    look like a repeat and freeze the charge: one too far ahead of the last applied update
    is refused, and the next normal update is applied and charged."""
    await voice_tariff(api, "+358916", 10_000)
    account_id = await new_account(api.billing, 1_000_000)
    who = own_device(account_id)
    session_id = await start(api, account_id, "+3589164567", who)
    (first,) = await meter(api, session_id, who, (1, 5))
    assert (first.acknowledged_sequence, first.charged_micros) == (1, 50_000)

    sequence = 2**63 - 1 if jump == "int64-max" else 1 + stack.settings.engine.max_sequence_gap + 1
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await meter(api, session_id, who, (sequence, 6))
    assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT, raised.value.details()

    (after,) = await meter(api, session_id, who, (2, 7))
    assert (after.acknowledged_sequence, after.used_units, after.charged_micros) == (
        2,
        7,
        70_000,
    )
    assert await stop(api, session_id, 7, who) == 70_000
    account = await get_account(api, account_id)
    assert (account.balance_micros, account.held_micros) == (930_000, 0)
