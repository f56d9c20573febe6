"""Gateways as first-class peers, on the in-memory fakes: the registry and the choice of a
gateway (healthy, enabled, not full, right service type and region, with the reason when
none fits), subscriber identities and starts by identity through the gateway itself,
session tickets, the durable notice stream (cursor, order, SUBSCRIBED first, token expiry,
two instances), final-unit and low-balance notices, a top-up that lifts the final units
and pushes the new grant, and usage beyond the holds recorded, never silently dropped."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import TypeVar

import pytest

from meterline.kernel.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unauthenticated,
)
from meterline.kernel.media import ServiceType, Unit
from meterline.kernel.pricing import RateTerms
from meterline.kernel.tickets import verify_ticket
from service_manager.app.gateways import GatewayChooser
from service_manager.app.metering import Metered, MeterStream
from service_manager.app.start import Started, StartRequest
from service_manager.domain.gateways import Gateway, GatewayChange, GatewayState, new_gateway
from service_manager.domain.identities import IdentityKind, normalized
from service_manager.domain.notices import GatewayNotice, NoticeKind
from service_manager.domain.sessions import SessionRate, TerminationReason
from tests.support.fakes import (
    OPERATOR,
    SMALL_QUOTA,
    FakeFunds,
    FakePresence,
    FakeRates,
    InMemorySessionStore,
    Instance,
    build_instance,
    device,
    gateway,
)

pytestmark = pytest.mark.unit

T = TypeVar("T")

ACCOUNT = "acc_1"
ENDPOINT = "+442079460000"
PRICE = 10_000
"""0.01 EUR a second: a 10-second slice costs 0.10."""
SLICE = SMALL_QUOTA.slice_seconds
MSISDN = "+447700900123"
LOW = 80_000
"""The low-balance threshold of these tests: 0.08 EUR, eight seconds."""


def voice_rate(price: int = PRICE, unit_size: int = 1, increment: int = 1) -> SessionRate:
    return SessionRate(
        tariff_id="trf_voice",
        prefix="+44",
        unit=Unit.SECOND,
        terms=RateTerms(
            price_per_unit_micros=price,
            increment_units=increment,
            minimum_units=0,
            setup_fee_micros=0,
            unit_size=unit_size,
        ),
        currency="EUR",
    )


class World:
    def __init__(self) -> None:
        self.store = InMemorySessionStore()
        self.funds = FakeFunds()
        self.rates = FakeRates()
        self.rates.set("+44", voice_rate())
        self.presence = FakePresence()

    def instance(self, owner_id: str, low: int = LOW) -> Instance:
        quota = replace(SMALL_QUOTA, low_balance_micros=low)
        return build_instance(
            self.store, self.funds, self.rates, self.presence, owner_id=owner_id, quota_policy=quota
        )

    def notices(self, gateway_id: str = "edge1") -> list[tuple[NoticeKind, str]]:
        return [(n.kind, n.session_id) for n in self.store.notices.of(gateway_id)]


@pytest.fixture
def world() -> World:
    world = World()
    world.store.add_gateway("edge1", "10.0.0.1:5060", frozenset({ServiceType.VOICE}))
    world.store.identities.rows.clear()
    return world


@pytest.fixture
async def sm(world: World) -> AsyncIterator[Instance]:
    instance = world.instance("sm-a")
    yield instance
    await instance.close()


@pytest.fixture
async def sm_b(world: World) -> AsyncIterator[Instance]:
    instance = world.instance("sm-b")
    yield instance
    await instance.close()


async def bounded(work: Awaitable[T], seconds: float = 2.0) -> T:
    return await asyncio.wait_for(work, seconds)


async def by_identity(sm: Instance, gateway_id: str = "edge1", **changes: object) -> Started:
    request = StartRequest("", ServiceType.VOICE, ENDPOINT, identity=(IdentityKind.MSISDN, MSISDN))
    return await bounded(sm.start(gateway(gateway_id), replace(request, **changes)))


async def meter(sm: Instance, on: MeterStream, session_id: str, seq: int, used: int) -> Metered:
    return await bounded(sm.metering.update(on, session_id, seq, used))


async def subscriber(sm: Instance, funded: int) -> None:
    sm.funds.open_account(ACCOUNT, funded)
    await sm.parts.identities.add(OPERATOR, ACCOUNT, IdentityKind.MSISDN, "+44 7700 900123")


# -- the registry and the choice ------------------------------------------------------------


async def test_the_registry_is_kept_by_operators(sm: Instance, world: World) -> None:
    admin = sm.parts.gateways
    edge2 = new_gateway("edge2", "sip.example.com:5060", frozenset({ServiceType.VIDEO}), "eu", 2)
    with pytest.raises(PermissionDenied):
        await admin.register(gateway("edge2"), edge2)
    stored = await admin.register(OPERATOR, edge2)
    assert (stored.state, stored.region, stored.capacity) == (GatewayState.ENABLED, "eu", 2)
    assert await admin.register(OPERATOR, edge2) == stored  # the same again: nothing new
    with pytest.raises(AlreadyExists):
        await admin.register(OPERATOR, replace(edge2, address="other.example.com:5060"))

    drained = await admin.update(OPERATOR, "edge2", GatewayChange(state=GatewayState.DRAINING))
    assert drained.state is GatewayState.DRAINING and drained.address == "sip.example.com:5060"
    with pytest.raises(NotFound):
        await admin.update(OPERATOR, "edge9", GatewayChange(state=GatewayState.DISABLED))
    listed = {status.gateway.gateway_id: status for status in await admin.listed(OPERATOR)}
    assert listed["local"].healthy  # the seeded gateway is never asked for liveness
    assert (listed["edge2"].healthy, listed["edge2"].reason) == (False, "is draining")
    for bad in ("", "no spaces", "x" * 101):
        with pytest.raises(InvalidArgument):
            new_gateway(bad, "h:1", None)
    for bad in ("host", "host:0", "host:99999", "bad host:5060"):
        with pytest.raises(InvalidArgument):
            new_gateway("g", bad, None)


async def test_a_start_gets_a_healthy_enabled_not_full_gateway_of_its_type_and_region() -> None:
    store = InMemorySessionStore()
    now = datetime.now(UTC)
    checked = {"skip_liveness_check": False}
    store.add_gateway("eu-1", "10.0.0.1:5060", None, region="eu", last_seen_at=now, **checked)
    store.add_gateway("eu-2", "10.0.0.2:5060", None, region="eu", capacity=1, last_seen_at=now)
    store.add_gateway("us-1", "10.0.0.3:5060", None, region="us", **checked)  # never heard of
    store.add_gateway(
        "eu-old", "10.0.0.4:5060", None, region="eu", last_seen_at=now - timedelta(minutes=5)
    )
    store.registry.rows["eu-old"] = replace(store.registry.rows["eu-old"], **checked)
    store.registry.rows.pop("local")
    chooser = GatewayChooser(store.registry, liveness=timedelta(seconds=30))

    chosen = [(await chooser.choose(ServiceType.VOICE, "eu")).gateway_id for _ in range(3)]
    assert chosen == ["eu-1", "eu-2", "eu-1"]  # eu-2 is full after one; eu-old is silent
    with pytest.raises(FailedPrecondition) as refused:
        await chooser.choose(ServiceType.VOICE, "us")
    assert refused.value.reason == "NO_GATEWAY"
    assert "us-1 has not reported liveness yet" in refused.value.message
    with pytest.raises(FailedPrecondition) as nowhere:
        await chooser.choose(ServiceType.VOICE, "ap")
    assert "no gateway in region ap carries VOICE" in nowhere.value.message

    for gateway_id, state in (("eu-1", GatewayState.DISABLED), ("eu-2", GatewayState.DRAINING)):
        store.registry.rows[gateway_id] = replace(store.registry.rows[gateway_id], state=state)
    chooser.forget()
    with pytest.raises(FailedPrecondition) as none:
        await chooser.choose(ServiceType.VOICE, "eu")
    message = none.value.message
    assert "eu-1 is disabled" in message and "eu-2 is draining" in message
    assert "eu-old was last heard of 300 s ago" in message

    tiny = InMemorySessionStore()
    tiny.registry.rows.clear()
    tiny.add_gateway("tiny", "10.0.0.9:5060", None, capacity=1)
    small = GatewayChooser(tiny.registry)
    assert (await small.choose(ServiceType.VIDEO)).gateway_id == "tiny"
    with pytest.raises(FailedPrecondition) as full:
        await small.choose(ServiceType.VIDEO)
    assert "tiny is full (1 of 1 sessions)" in full.value.message


async def test_a_heartbeat_or_an_open_watch_keeps_a_gateway_alive(
    sm: Instance, world: World
) -> None:
    world.store.add_gateway("edge2", "10.0.0.2:5060", None, skip_liveness_check=False)
    assert not sm.parts.gateways.status(world.store.registry.rows["edge2"]).healthy
    with pytest.raises(PermissionDenied):
        await sm.parts.gateways.heartbeat(gateway("edge1"), "edge2")
    status = await sm.parts.gateways.heartbeat(gateway("edge2"), "edge2")
    assert status.healthy and world.store.registry.rows["edge2"].last_seen_at is not None

    world.store.add_gateway("edge3", "10.0.0.3:5060", None, skip_liveness_check=False)
    watch = sm.parts.gateway_watch.notices(gateway("edge3"), "edge3", 0, False, time.time() + 60)
    assert (await bounded(anext(watch))).kind is NoticeKind.SUBSCRIBED
    assert world.store.registry.rows["edge3"].last_seen_at is not None
    await watch.aclose()


# -- identities and starts by identity -----------------------------------------------------------


def test_identities_have_one_normal_form() -> None:
    assert normalized(IdentityKind.MSISDN, "+44 (7700) 900-123").value == MSISDN
    assert normalized(IdentityKind.SIP_URI, "SIP:Alice@Example.COM").value == (
        "sip:Alice@example.com"
    )
    assert normalized(IdentityKind.IMSI, " 234150999999999 ").value == "234150999999999"
    for kind, bad in (
        (IdentityKind.MSISDN, "07700900123"),
        (IdentityKind.MSISDN, "+0123"),
        (IdentityKind.IMSI, "12345"),
        (IdentityKind.SIP_URI, "alice@example.com"),
        (IdentityKind.USER_NAME, "two words"),
    ):
        with pytest.raises(InvalidArgument):
            normalized(kind, bad)


async def test_an_identity_names_one_account(sm: Instance) -> None:
    identities = sm.parts.identities
    added = await identities.add(OPERATOR, ACCOUNT, IdentityKind.MSISDN, "+44 7700 900123")
    assert added.identity.value == MSISDN
    assert await identities.add(OPERATOR, ACCOUNT, IdentityKind.MSISDN, MSISDN) == added
    with pytest.raises(AlreadyExists) as taken:
        await identities.add(OPERATOR, "acc_2", IdentityKind.MSISDN, MSISDN)
    assert taken.value.reason == "IDENTITY_TAKEN"
    with pytest.raises(PermissionDenied):
        await identities.add(gateway("edge1"), ACCOUNT, IdentityKind.IMSI, "234150999999999")
    assert [i.identity.value for i in await identities.listed(OPERATOR, ACCOUNT)] == [MSISDN]
    assert not await identities.remove(OPERATOR, "acc_2", IdentityKind.MSISDN, MSISDN)
    assert await identities.remove(OPERATOR, ACCOUNT, IdentityKind.MSISDN, MSISDN)
    assert await identities.listed(OPERATOR, ACCOUNT) == []


async def test_a_gateway_starts_meters_and_stops_a_session_by_identity_through_itself(
    sm: Instance, world: World
) -> None:
    await subscriber(sm, 1_000_000)
    world.store.add_gateway("aaa", "10.0.0.9:5060", None)  # the one a choice would pick
    started = await by_identity(sm)
    session = started.session
    assert (session.account_id, session.gateway_id) == (ACCOUNT, "edge1")
    assert started.gateway_address == "10.0.0.1:5060"
    claims = verify_ticket(started.gateway_ticket, sm.tickets.public.pem, "edge1")
    assert (claims["sub"], claims["svc"], claims["ep"]) == (session.session_id, "VOICE", ENDPOINT)

    on = MeterStream(gateway("edge1"))
    assert (await meter(sm, on, session.session_id, 1, 4)).session.used_units == 4
    with pytest.raises(PermissionDenied):
        await meter(sm, MeterStream(gateway("local")), session.session_id, 2, 5)
    with pytest.raises(PermissionDenied):
        await sm.stop(gateway("local"), session.session_id, 5)
    record = await bounded(sm.stop(gateway("edge1"), session.session_id, 6))
    assert (record.termination_reason, record.charged_micros) == (
        TerminationReason.GATEWAY,
        6 * PRICE,
    )
    await sm.metering.detach(on)


async def test_a_start_by_a_gateway_is_refused_without_an_identity_or_a_usable_gateway(
    sm: Instance, world: World
) -> None:
    await subscriber(sm, 1_000_000)
    with pytest.raises(PermissionDenied):
        await bounded(
            sm.start(gateway("edge1"), StartRequest(ACCOUNT, ServiceType.VOICE, ENDPOINT))
        )
    with pytest.raises(NotFound) as unknown:
        await by_identity(sm, identity=(IdentityKind.MSISDN, "+15550100"))
    assert unknown.value.reason == "IDENTITY_NOT_FOUND"
    with pytest.raises(InvalidArgument):
        await by_identity(sm, account_id="acc_other")
    with pytest.raises(PermissionDenied):  # a device names its own account, not identities
        request = StartRequest(
            ACCOUNT, ServiceType.VOICE, ENDPOINT, identity=(IdentityKind.MSISDN, MSISDN)
        )
        await bounded(sm.start(device(ACCOUNT), request))
    with pytest.raises(FailedPrecondition) as unregistered:
        await by_identity(sm, gateway_id="edge9")
    assert unregistered.value.reason == "GATEWAY_NOT_REGISTERED"
    with pytest.raises(FailedPrecondition):
        await by_identity(sm, service_type=ServiceType.VIDEO)  # edge1 carries VOICE only
    await sm.parts.gateways.update(OPERATOR, "edge1", GatewayChange(state=GatewayState.DISABLED))
    with pytest.raises(FailedPrecondition) as disabled:
        await by_identity(sm)
    assert disabled.value.reason == "NO_GATEWAY" and "disabled" in disabled.value.message
    assert world.store.session_ids() == []


# -- the durable notice stream -------------------------------------------------------------------


async def read(watch: AsyncIterator[GatewayNotice], count: int) -> list[GatewayNotice]:
    return [await bounded(anext(watch)) for _ in range(count)]


async def test_a_watch_resumes_from_its_cursor_with_everything_in_order_once(
    world: World,
) -> None:
    """Three sessions end and one reaches its final units, on two instances, while the
    gateway is away; it resumes after its last cursor and gets all four, in order, once;
    a termination decided on one instance reaches a watch on the other."""
    a, b = world.instance("sm-a", low=0), world.instance("sm-b", low=0)
    await subscriber(a, 10 * SLICE * PRICE)
    world.funds.open_account("acc_2", SLICE * PRICE)
    await a.parts.identities.add(OPERATOR, "acc_2", IdentityKind.MSISDN, "+447700900999")
    away = a.parts.gateway_watch.notices(gateway("edge1"), "edge1", 0, False, time.time() + 60)
    subscribed = await bounded(anext(away))
    assert (subscribed.kind, subscribed.cursor) == (NoticeKind.SUBSCRIBED, 0)
    await away.aclose()  # the gateway goes away, having acted on nothing

    ended = [(await by_identity(a)).session.session_id for _ in range(3)]
    for instance, session_id in zip((a, b, a), ended, strict=True):
        await bounded(instance.stop(gateway("edge1"), session_id, 3))
    final = (await by_identity(b, identity=(IdentityKind.MSISDN, "+447700900999"))).session
    on_final = MeterStream(gateway("edge1"))
    answer = await meter(b, on_final, final.session_id, 1, SLICE // 2 + 1)
    assert answer.termination is not None and answer.termination.final_unit_indication
    await b.quiesce()

    back = a.parts.gateway_watch.notices(
        gateway("edge1"), "edge1", subscribed.cursor, False, time.time() + 60
    )
    received = await read(back, 5)
    assert [(n.kind, n.session_id, n.cursor) for n in received] == [
        (NoticeKind.SUBSCRIBED, "", 0),
        (NoticeKind.ENDED, ended[0], 1),
        (NoticeKind.ENDED, ended[1], 2),
        (NoticeKind.ENDED, ended[2], 3),
        (NoticeKind.FINAL_UNITS, final.session_id, 4),
    ]
    assert received[4].account_id == "acc_2"
    more = asyncio.ensure_future(anext(back))
    await asyncio.sleep(0.05)
    assert not more.done()  # nothing twice
    more.cancel()

    # Resuming on the other instance after cursor 2; then a termination decided on A.
    on_b = b.parts.gateway_watch.notices(gateway("edge1"), "edge1", 2, False, time.time() + 60)
    assert [n.cursor for n in await read(on_b, 3)] == [2, 3, 4]
    live = asyncio.ensure_future(anext(on_b))
    await asyncio.sleep(0.01)
    await bounded(a.stop(OPERATOR, final.session_id, 0))
    late = await bounded(live)
    assert (late.kind, late.session_id, late.reason, late.cursor) == (
        NoticeKind.ENDED,
        final.session_id,
        TerminationReason.OPERATOR,
        5,
    )
    await on_b.aclose()
    await b.metering.detach(on_final)
    for instance in (a, b):
        await instance.close()


async def test_a_watch_checks_its_cursor_and_ends_when_its_token_expires(
    sm: Instance, world: World
) -> None:
    watch = sm.parts.gateway_watch
    with pytest.raises(PermissionDenied):
        await anext(watch.notices(gateway("local"), "edge1", 0, False, time.time() + 60))
    with pytest.raises(NotFound):
        await anext(watch.notices(OPERATOR, "edge9", 0, False, time.time() + 60))
    with pytest.raises(InvalidArgument) as ahead:
        await anext(watch.notices(gateway("edge1"), "edge1", 5, False, time.time() + 60))
    assert ahead.value.reason == "BAD_CURSOR"

    for number in range(3):
        world.store.notices.append_now(
            GatewayNotice("edge1", f"ses_{number}", ACCOUNT, NoticeKind.ENDED, "ended")
        )
    world.store.notices.notices["edge1"] = world.store.notices.notices["edge1"][2:]  # retention
    expired = watch.notices(gateway("edge1"), "edge1", 1, False, time.time() + 60)
    subscribed, kept = await read(expired, 2)
    assert subscribed.cursor_expired and kept.cursor == 3
    only_new = watch.notices(gateway("edge1"), "edge1", 0, True, time.time() + 60)
    assert (await bounded(anext(only_new))).cursor == 3

    ending = watch.notices(gateway("edge1"), "edge1", 3, False, time.time() + 0.3)
    assert (await bounded(anext(ending))).kind is NoticeKind.SUBSCRIBED
    with pytest.raises(Unauthenticated) as expiry:
        await bounded(anext(ending))
    assert expiry.value.reason == "TOKEN_EXPIRED"
    for open_watch in (expired, only_new):
        await open_watch.aclose()


# -- low balance, final units, top-ups ---------------------------------------------------------


async def test_low_balance_then_final_units_then_a_top_up_pushes_the_next_grant(
    sm: Instance, world: World
) -> None:
    """0.30 at 0.01 a second, slices of 10 s, a threshold of 0.08: a low-balance notice at
    23 s, the final units at 26 s; a top-up of 0.10 then grants the fourth slice at once,
    pushed on the stream that accepts pushes, and lifts the gateway's final units; the
    session goes on to the end of what was funded, 40 s, and is cut off there."""
    await subscriber(sm, 3 * SLICE * PRICE)
    session_id = (await by_identity(sm)).session.session_id
    device_stream = MeterStream(device(ACCOUNT))
    device_stream.outbox = asyncio.Queue()
    silent = MeterStream(device(ACCOUNT))  # does not accept pushes
    await meter(sm, silent, session_id, 1, 1)

    for sequence, used in ((2, 6), (3, 16)):
        answer = await meter(sm, device_stream, session_id, sequence, used)
        assert not answer.low_balance and answer.termination is None
        await sm.quiesce()
    low = await meter(sm, device_stream, session_id, 4, 23)
    assert (low.low_balance, low.balance_micros, low.seconds_left) == (True, 70_000, 7)
    assert low.termination is None
    await sm.quiesce()
    final = await meter(sm, device_stream, session_id, 5, 26)
    assert final.termination is not None and final.termination.final_unit_indication
    await sm.quiesce()
    assert world.notices() == [
        (NoticeKind.LOW_BALANCE, session_id),
        (NoticeKind.FINAL_UNITS, session_id),
    ]
    notice = world.store.notices.of("edge1")[0]
    assert (notice.balance_micros, notice.seconds_left, notice.granted_units) == (70_000, 7, 30)

    world.funds.accounts[ACCOUNT].funded_micros += SLICE * PRICE  # the top-up
    assert await bounded(sm.metering.on_funded(ACCOUNT)) == 1
    pushed = device_stream.outbox.get_nowait()
    assert isinstance(pushed, Metered) and pushed.pushed
    assert (pushed.session.granted_units, pushed.termination, pushed.low_balance) == (
        40,
        None,
        False,
    )
    assert device_stream.outbox.empty()
    await sm.quiesce()
    lifted = world.store.notices.of("edge1")[-1]
    assert (lifted.kind, lifted.granted_units) == (NoticeKind.FINAL_UNITS_LIFTED, 40)

    assert (await meter(sm, device_stream, session_id, 6, 33)).low_balance
    await sm.quiesce()
    again = await meter(sm, device_stream, session_id, 7, 36)
    assert again.termination is not None and again.termination.final_unit_indication
    await sm.quiesce()
    cut = await meter(sm, device_stream, session_id, 8, 41)
    assert cut.termination is not None and cut.termination.ended
    assert cut.termination.reason is TerminationReason.BALANCE_EXHAUSTED
    record = await world.store.record(session_id)
    assert record is not None
    assert (record.billed_units, record.unbilled_units) == (40, 1)
    assert record.charged_micros == world.funds.captured(ACCOUNT) == 4 * SLICE * PRICE
    assert world.funds.available(ACCOUNT) == 0 and world.funds.open_holds(ACCOUNT) == []
    assert [kind for kind, _ in world.notices()] == [
        NoticeKind.LOW_BALANCE,
        NoticeKind.FINAL_UNITS,
        NoticeKind.FINAL_UNITS_LIFTED,
        NoticeKind.LOW_BALANCE,
        NoticeKind.FINAL_UNITS,
        NoticeKind.ENDED,
    ]
    for on in (device_stream, silent):
        await sm.metering.detach(on)


async def test_time_left_in_a_low_balance_notice_counts_the_unit_size(world: World) -> None:
    """0.60 a minute, billed per started minute, 1.20 funded: after 30 s, 0.60 is left,
    and it lasts 90 s (the rest of the minute paid for, then one more), not the 60 s a
    price per second would say."""
    world.rates.set("+44", voice_rate(price=600_000, unit_size=60, increment=60))
    quota = replace(SMALL_QUOTA, low_balance_micros=700_000, slice_seconds=60)
    sm = build_instance(world.store, world.funds, world.rates, world.presence, quota_policy=quota)
    await subscriber(sm, 1_200_000)
    session_id = (await by_identity(sm)).session.session_id
    on = MeterStream(gateway("edge1"))
    answer = await meter(sm, on, session_id, 1, 30)
    assert (answer.low_balance, answer.balance_micros, answer.seconds_left) == (True, 600_000, 90)
    await sm.quiesce()
    (low,) = [n for n in world.store.notices.of("edge1") if n.kind is NoticeKind.LOW_BALANCE]
    assert (low.balance_micros, low.seconds_left) == (600_000, 90)
    await sm.metering.detach(on)
    await sm.close()


# -- usage never silently dropped ---------------------------------------------------------------


async def test_usage_beyond_the_holds_is_recorded_unbilled_and_ends_the_session(
    sm: Instance, world: World
) -> None:
    """1.00 at 0.60 a minute pays for 100 seconds; the gateway reports 150: the record
    bills 100, keeps the other 50 as unbilled with why, and the session ends at the grant
    (BALANCE_EXHAUSTED); the device counted less, and the difference is recorded."""
    world.rates.set("+44", voice_rate(price=10_000))
    await subscriber(sm, 1_000_000)
    session_id = (await by_identity(sm)).session.session_id
    device_stream = MeterStream(device(ACCOUNT))
    await meter(sm, device_stream, session_id, 1, 80)
    await sm.quiesce()
    report = await bounded(sm.gateway_usage(gateway("edge1"), session_id, 150, False))
    record = report.record
    assert record is not None
    assert record.termination_reason is TerminationReason.BALANCE_EXHAUSTED
    assert (record.used_units, record.billed_units, record.unbilled_units) == (150, 100, 50)
    assert "balance paid for 100" in record.unbilled_reason
    assert (record.client_used_units, record.gateway_used_units) == (80, 150)
    assert record.usage_discrepancy == 70
    assert record.charged_micros == 1_000_000 == world.funds.captured(ACCOUNT)
    assert world.funds.open_holds(ACCOUNT) == []
    ended = world.store.notices.of("edge1")[-1]
    assert (ended.kind, ended.reason) == (NoticeKind.ENDED, TerminationReason.BALANCE_EXHAUSTED)
    await sm.metering.detach(device_stream)


async def test_a_stop_beyond_the_grant_is_recorded_too(sm: Instance, world: World) -> None:
    await subscriber(sm, SLICE * PRICE)
    session_id = (await by_identity(sm)).session.session_id
    record = await bounded(sm.stop(gateway("edge1"), session_id, SLICE + 5))
    assert (record.billed_units, record.unbilled_units) == (SLICE, 5)
    assert record.termination_reason is TerminationReason.BALANCE_EXHAUSTED
    assert record.usage_discrepancy == 0  # the device never reported
    assert world.funds.captured(ACCOUNT) == SLICE * PRICE


async def test_a_sessions_notices_come_before_its_end_even_when_written_slowly(
    sm: Instance, world: World
) -> None:
    """The final-unit notice is still being written when the session is stopped: the
    ENDED notice, written with the record, comes after it."""
    await subscriber(sm, SLICE * PRICE)
    session_id = (await by_identity(sm)).session.session_id
    world.store.notices.append_gate = asyncio.Event()
    on = MeterStream(gateway("edge1"))
    answer = await meter(sm, on, session_id, 1, SLICE // 2 + 1)
    assert answer.termination is not None and answer.termination.final_unit_indication
    stopping = asyncio.ensure_future(sm.stop(gateway("edge1"), session_id, SLICE))
    await asyncio.sleep(0.05)
    world.store.notices.append_gate.set()
    await bounded(stopping)
    assert [kind for kind, _ in world.notices()] == [
        NoticeKind.LOW_BALANCE,
        NoticeKind.FINAL_UNITS,
        NoticeKind.ENDED,
    ]
    await sm.metering.detach(on)


async def test_a_notice_write_that_fails_is_tried_again(sm: Instance, world: World) -> None:
    world.store.notices.fail_next_appends = 1
    sm.notices.send(GatewayNotice("edge1", "ses_x", ACCOUNT, NoticeKind.LOW_BALANCE, "low"))
    await sm.quiesce()
    assert world.notices() == [(NoticeKind.LOW_BALANCE, "ses_x")]


def test_a_gateway_of_the_registry_is_plain_data() -> None:
    gateway_ = Gateway("g", "h:1", None, skip_liveness_check=True)
    assert gateway_.enabled and gateway_.carries(ServiceType.VIDEO)
    assert gateway_.busy_reason(0, datetime.now(UTC), timedelta(seconds=1)) is None
