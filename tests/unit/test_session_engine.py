"""The service manager's orchestration (service_manager/app) on in-memory fakes: starts,
the usage path, quota slices reserved ahead, cut-off, settlement, recovery of holds a
crash left pending, fencing between instances, the liveness sweep. No I/O: the parts are
wired as server.py wires them (tests/support/fakes.py), over a fake store and ledger.

Every money test ends with the same three checks (`assert_settled`): what was captured
is the rated charge of the final usage, the balance is what was funded less what was
captured, and no hold is left open."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from datetime import timedelta
from typing import TypeVar

import pytest

from meterline.kernel.errors import (
    FailedPrecondition,
    InsufficientFunds,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unavailable,
    UsageWentBackwards,
)
from meterline.kernel.media import ServiceType, Unit
from meterline.kernel.pricing import RateTerms
from service_manager.app.gateways import GatewayChooser
from service_manager.app.limits import StreamLimits
from service_manager.app.metering import Metered, MeterStream
from service_manager.app.ports import Fence
from service_manager.app.quota import hold_key
from service_manager.app.start import StartRequest
from service_manager.domain.notices import NoticeKind
from service_manager.domain.records import ServiceRecord
from service_manager.domain.sessions import (
    Session,
    SessionRate,
    SessionStatus,
    TerminationReason,
)
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
"""0.01 EUR a second."""
SLICE = SMALL_QUOTA.slice_seconds
SLICE_PRICE = SLICE * PRICE
FUNDED = 1_000_000


def voice_rate(price_micros: int = PRICE, unit_size: int = 1) -> SessionRate:
    return SessionRate(
        tariff_id="trf_voice",
        prefix="+44",
        unit=Unit.SECOND,
        terms=RateTerms(
            price_per_unit_micros=price_micros,
            increment_units=1,
            minimum_units=0,
            setup_fee_micros=0,
            unit_size=unit_size,
        ),
        currency="EUR",
    )


@dataclass
class World:
    """What every instance shares: the service database, the ledger, the rating service
    and presence."""

    store: InMemorySessionStore
    funds: FakeFunds
    rates: FakeRates
    presence: FakePresence

    def instance(self, owner_id: str) -> Instance:
        return build_instance(self.store, self.funds, self.rates, self.presence, owner_id=owner_id)


@pytest.fixture
def world() -> World:
    rates = FakeRates()
    rates.set("+44", voice_rate())
    return World(InMemorySessionStore(), FakeFunds(), rates, FakePresence())


@pytest.fixture
async def sm(world: World) -> AsyncIterator[Instance]:
    """Instance A."""
    instance = world.instance("sm-a")
    yield instance
    await instance.close()


@pytest.fixture
async def sm_b(world: World) -> AsyncIterator[Instance]:
    """Instance B, over the same store and ledger as A."""
    instance = world.instance("sm-b")
    yield instance
    await instance.close()


async def bounded(work: Awaitable[T], seconds: float = 2.0) -> T:
    return await asyncio.wait_for(work, seconds)


async def start(
    sm: Instance, account_id: str = ACCOUNT, request_id: str = "", endpoint: str = ENDPOINT
) -> Session:
    request = StartRequest(account_id, ServiceType.VOICE, endpoint, request_id=request_id)
    return (await bounded(sm.start(device(account_id), request))).session


def stream(account_id: str = ACCOUNT) -> MeterStream:
    return MeterStream(device(account_id))


async def meter(
    sm: Instance, on: MeterStream, session_id: str, sequence: int, used: int
) -> Metered:
    return await bounded(sm.metering.update(on, session_id, sequence, used))


async def stored(world: World, session_id: str) -> Session:
    found = await world.store.get(session_id)
    assert found is not None
    return found


def assert_settled(
    world: World, record: ServiceRecord, funded: int, account_id: str = ACCOUNT
) -> None:
    funds = world.funds
    charge = record.rate.price(record.billed_units, int(record.started_at.timestamp()))
    assert funds.captured(account_id) == charge == record.charged_micros
    assert funds.balance(account_id) == funded - funds.captured(account_id)
    assert funds.open_holds(account_id) == []
    assert funds.available(account_id) == funds.balance(account_id)


# -- starting ------------------------------------------------------------------------------


async def test_a_start_refused_by_its_hold_leaves_no_session(sm: Instance, world: World) -> None:
    """The snapshot could pay, but Reserve refused (the money went elsewhere meanwhile):
    the session is removed, and its request_id may start again."""
    world.funds.open_account(ACCOUNT, FUNDED)
    world.funds.refuse_next_reserve.append(InsufficientFunds("Insufficient funds."))
    with pytest.raises(InsufficientFunds):
        await start(sm, request_id="req-1")
    await sm.quiesce()
    assert world.store.session_ids() == []
    assert await world.store.by_request_id("req-1") is None
    assert world.funds.holds == {}
    assert world.presence.started_ids == []
    assert sm.abandoned == []
    assert world.funds.balance(ACCOUNT) == world.funds.available(ACCOUNT) == FUNDED

    again = await start(sm, request_id="req-1")
    assert world.store.session_ids() == [again.session_id]


async def test_a_start_the_balance_cannot_pay_for_writes_nothing(
    sm: Instance, world: World
) -> None:
    world.funds.open_account(ACCOUNT, PRICE - 1)
    with pytest.raises(InsufficientFunds):
        await start(sm)
    assert world.store.calls["insert_new"] == 0
    assert world.funds.calls["reserve"] == 0


async def test_a_start_whose_hold_answer_was_lost_gives_the_hold_back(
    sm: Instance, world: World
) -> None:
    """Reserve made the hold but its answer never came: the start fails, and the session
    is settled at once (START_FAILED), the hold found by its key and released."""
    world.funds.open_account(ACCOUNT, FUNDED)
    world.funds.lose_next_reserve_answer.append(Unavailable("The billing manager is away."))
    with pytest.raises(Unavailable):
        await start(sm)
    await sm.quiesce()
    (session_id,) = sm.abandoned
    record = await world.store.record(session_id)
    assert record is not None
    assert record.termination_reason is TerminationReason.START_FAILED
    assert record.charged_micros == 0
    assert len(world.funds.holds) == 1
    assert [kind for kind, _, _ in world.funds.movements] == ["RELEASE"]
    assert_settled(world, record, FUNDED)


async def test_a_repeated_start_with_one_request_id_gets_the_first_session(
    sm: Instance, world: World
) -> None:
    world.funds.open_account(ACCOUNT, FUNDED)
    first = await start(sm, request_id="req-again")
    await sm.quiesce()
    again = await start(sm, request_id="req-again")
    assert again.session_id == first.session_id
    assert world.store.session_ids() == [first.session_id]
    assert len(world.funds.holds) == 1


async def test_concurrent_starts_with_one_request_id_make_one_session(
    sm: Instance, world: World
) -> None:
    world.funds.open_account(ACCOUNT, FUNDED)
    started = await bounded(asyncio.gather(*(start(sm, request_id="req-same") for _ in range(8))))
    await sm.quiesce()
    assert {session.session_id for session in started} == set(world.store.session_ids())
    assert len(world.store.session_ids()) == 1
    assert len(world.funds.holds) == 1
    (session_id,) = world.store.session_ids()
    assert (await stored(world, session_id)).hold_count == 1


# -- the usage path ----------------------------------------------------------------------


async def test_the_usual_update_makes_no_store_write_and_no_funds_call(
    sm: Instance, world: World
) -> None:
    """Decided in memory and answered at once; the batcher writes the usage of many
    sessions later, in one statement."""
    accounts = ["acc_1", "acc_2", "acc_3"]
    streams = {}
    for account_id in accounts:
        world.funds.open_account(account_id, FUNDED)
        session = await start(sm, account_id)
        streams[session.session_id] = stream(account_id)
        await meter(sm, streams[session.session_id], session.session_id, 1, 1)
    await sm.batcher.flush()
    await sm.quiesce()
    store_calls, funds_calls = world.store.calls.copy(), world.funds.calls.copy()
    events = len(world.presence.usage_events)

    for session_id, on in streams.items():
        answer = await meter(sm, on, session_id, 2, 2)
        assert answer.termination is None
        assert answer.session.used_units == 2
        assert answer.balance_micros == FUNDED - 2 * PRICE

    assert world.store.calls == store_calls
    assert world.funds.calls == funds_calls
    assert len(world.presence.usage_events) == events + len(streams)
    for session_id in streams:
        assert (await stored(world, session_id)).used_units == 1

    await sm.batcher.flush()
    assert world.store.calls["save_usage"] == store_calls["save_usage"] + 1
    for session_id in streams:
        row = await stored(world, session_id)
        assert (row.used_units, row.client_used_units, row.last_sequence) == (2, 2, 2)


async def test_the_next_slice_is_reserved_ahead_without_holding_up_the_update(
    sm: Instance, world: World
) -> None:
    world.funds.open_account(ACCOUNT, FUNDED)
    session = await start(sm)
    on = stream()
    await meter(sm, on, session.session_id, 1, 1)
    await sm.quiesce()
    world.funds.reserve_gate = asyncio.Event()  # the billing manager is slow

    # Half the slice used (reserve_ahead_at=0.5): the next slice is asked for, but the
    # update that found it out is answered before the billing manager is.
    answer = await meter(sm, on, session.session_id, 2, SLICE // 2)
    assert answer.session.granted_units == SLICE
    assert answer.termination is None
    await bounded(world.funds.reserve_waiting.wait())
    # The hold is noted as pending before it is asked for.
    row = await stored(world, session.session_id)
    assert (row.pending_hold_number, row.pending_granted_units) == (2, 2 * SLICE)
    later = await meter(sm, on, session.session_id, 3, SLICE // 2 + 1)
    assert later.session.granted_units == SLICE
    assert world.funds.calls["reserve"] == 2  # the first slice's and the one waiting

    world.funds.reserve_gate.set()
    await sm.quiesce()
    granted = await meter(sm, on, session.session_id, 4, SLICE // 2 + 2)
    assert granted.session.granted_units == 2 * SLICE
    row = await stored(world, session.session_id)
    assert (row.hold_count, row.pending_hold_number, row.held_micros) == (2, 0, 2 * SLICE_PRICE)

    record = await bounded(sm.stop(device(ACCOUNT), session.session_id, SLICE // 2 + 2))
    assert record.used_units == SLICE // 2 + 2
    assert_settled(world, record, FUNDED)


async def test_final_units_are_announced_then_the_session_is_cut_off(
    sm: Instance, world: World
) -> None:
    """1.5 slices of money: the second slice is the half the balance can pay; once it
    is half used the answer says these are the final units; at its end the session is
    cut off with exactly its charge captured."""
    funded = SLICE_PRICE + SLICE_PRICE // 2
    world.funds.open_account(ACCOUNT, funded)
    session = await start(sm)
    on = stream()
    first = await meter(sm, on, session.session_id, 1, SLICE // 2)
    assert first.termination is None
    await sm.quiesce()
    granted = SLICE + SLICE // 2
    assert sm.live.get(session.session_id) is not None
    assert (await stored(world, session.session_id)).granted_units == granted

    last_slice = await meter(sm, on, session.session_id, 2, SLICE)
    assert last_slice.termination is not None
    assert last_slice.termination.final_unit_indication
    assert not last_slice.termination.ended
    assert last_slice.termination.reason is TerminationReason.BALANCE_EXHAUSTED
    await sm.quiesce()

    cut = await meter(sm, on, session.session_id, 3, granted)
    assert cut.termination is not None and cut.termination.ended
    assert cut.termination.reason is TerminationReason.BALANCE_EXHAUSTED
    record = await world.store.record(session.session_id)
    assert record is not None
    assert record.termination_reason is TerminationReason.BALANCE_EXHAUSTED
    assert (record.used_units, record.charged_micros) == (granted, funded)
    (event,) = world.presence.ended_events
    notice = world.store.notices.of("local")[-1]
    assert event.ended and notice.reason is TerminationReason.BALANCE_EXHAUSTED
    assert_settled(world, record, funded)


async def test_a_top_up_after_the_final_units_lets_the_session_go_on(
    sm: Instance, world: World
) -> None:
    """At the end of the grant the account is read again before the cut-off decision."""
    world.funds.open_account(ACCOUNT, SLICE_PRICE)
    session = await start(sm)
    on = stream()
    final = await meter(sm, on, session.session_id, 1, SLICE // 2)
    assert final.termination is not None and final.termination.final_unit_indication
    await sm.quiesce()
    world.funds.accounts[ACCOUNT].funded_micros += SLICE_PRICE  # funded meanwhile

    going_on = await meter(sm, on, session.session_id, 2, SLICE)
    assert going_on.termination is None
    assert going_on.session.granted_units == 2 * SLICE
    record = await bounded(sm.stop(device(ACCOUNT), session.session_id, SLICE + 1))
    assert_settled(world, record, 2 * SLICE_PRICE)


async def test_a_session_whose_account_was_suspended_still_settles(
    sm: Instance, world: World
) -> None:
    world.funds.open_account(ACCOUNT, FUNDED)
    session = await start(sm)
    on = stream()
    await meter(sm, on, session.session_id, 1, 1)
    await sm.quiesce()
    world.funds.accounts[ACCOUNT].active = False  # an operator suspends the account
    await meter(sm, on, session.session_id, 2, SLICE // 2)  # the next slice is refused
    await sm.quiesce()
    record = await bounded(sm.stop(device(ACCOUNT), session.session_id, SLICE // 2))
    assert record.used_units == SLICE // 2
    assert_settled(world, record, FUNDED)


async def test_usage_beyond_an_unpaid_grant_is_not_charged(sm: Instance, world: World) -> None:
    world.funds.open_account(ACCOUNT, SLICE_PRICE)
    session = await start(sm)
    on = stream()
    cut = await meter(sm, on, session.session_id, 1, SLICE + 7)
    assert cut.termination is not None and cut.termination.ended
    record = await world.store.record(session.session_id)
    assert record is not None
    assert (record.used_units, record.billed_units) == (SLICE + 7, SLICE)
    assert_settled(world, record, SLICE_PRICE)


async def test_a_sequence_too_far_ahead_is_refused_and_metering_goes_on(
    sm: Instance, world: World
) -> None:
    world.funds.open_account(ACCOUNT, FUNDED)
    session = await start(sm)
    on = stream()
    await meter(sm, on, session.session_id, 1, 1)
    gap = sm.metering._max_gap
    with pytest.raises(InvalidArgument):
        await meter(sm, on, session.session_id, 1 + gap + 1, 2)
    live = sm.live.get(session.session_id)
    assert live is not None
    assert (live.session.last_sequence, live.session.used_units) == (1, 1)

    assert (await meter(sm, on, session.session_id, 2, 2)).session.used_units == 2
    repeat = await meter(sm, on, session.session_id, 2, 2)  # a repeat changes nothing
    assert (repeat.session.last_sequence, repeat.session.used_units) == (2, 2)
    assert (await meter(sm, on, session.session_id, 2 + gap, 3)).session.used_units == 3
    record = await bounded(sm.stop(device(ACCOUNT), session.session_id, 3))
    assert_settled(world, record, FUNDED)


async def test_an_update_for_a_session_that_does_not_exist_is_not_found(sm: Instance) -> None:
    with pytest.raises(NotFound):
        await meter(sm, stream(), "ses_missing", 1, 1)


@pytest.mark.parametrize(
    ("price_micros", "unit_size"), [(600_000, 60), (10_000, 1)], ids=["per-minute", "per-second"]
)
async def test_seconds_left_at_a_price_per_unit_size(
    sm: Instance, world: World, price_micros: int, unit_size: int
) -> None:
    """11.29 EUR at 0.60 a minute, billed by the second, lasts 1129 s (18.8 minutes),
    whether the tariff says 0.60 per 60 seconds or 0.01 per second."""
    world.rates.set("+358", voice_rate(price_micros, unit_size))
    world.funds.open_account(ACCOUNT, 11_290_000)
    session = await start(sm, endpoint="+3589114567")
    answer = await meter(sm, stream(), session.session_id, 1, 1)
    assert answer.session.charged_micros == 10_000
    assert answer.seconds_left == 1129 - 1
    assert round(1129 / 60, 1) == 18.8


async def test_streams_opening_together_take_their_sessions_over_in_a_batch(
    sm: Instance, world: World
) -> None:
    accounts = [f"acc_batch_{n}" for n in range(12)]
    for account in accounts:
        world.funds.open_account(account, FUNDED)
    sessions = [await start(sm, account) for account in accounts]
    before = world.store.calls["get_many"], world.store.calls["get"]
    answers = await bounded(
        asyncio.gather(*(meter(sm, stream(s.account_id), s.session_id, 1, 1) for s in sessions))
    )
    assert [answer.session.used_units for answer in answers] == [1] * 12
    assert world.store.calls["take_over_many"] <= 2  # the first alone, then the rest
    assert world.store.calls["get_many"] - before[0] <= 2
    assert world.store.calls["get"] == before[1]
    for session in sessions:
        assert (await stored(world, session.session_id)).owner_epoch == 2


async def test_concurrent_streams_of_one_instance_take_the_session_over_once(
    sm: Instance, world: World
) -> None:
    world.funds.open_account(ACCOUNT, FUNDED)
    session = await start(sm)
    streams = [stream() for _ in range(4)]
    answers = await bounded(
        asyncio.gather(
            *(meter(sm, on, session.session_id, n, n) for n, on in enumerate(streams, 1))
        )
    )
    assert world.store.calls["take_over_many"] == 1
    assert len({id(answer.session) for answer in answers}) == 1
    assert answers[0].session.used_units == 4


# -- settlement ----------------------------------------------------------------------------


async def test_settlement_captures_oldest_first_releases_the_rest_and_writes_once(
    sm: Instance, sm_b: Instance, world: World
) -> None:
    world.funds.open_account(ACCOUNT, FUNDED)
    session = await start(sm)
    session_id = session.session_id
    on = stream()
    await meter(sm, on, session_id, 1, SLICE // 2)  # the second slice is reserved
    await sm.quiesce()
    await meter(sm, on, session_id, 2, SLICE + SLICE // 2)  # and the third
    await sm.quiesce()
    holds = await world.store.holds(session_id)
    assert [amount for _, amount in holds] == [SLICE_PRICE] * 3

    used = SLICE + SLICE // 2
    record = await bounded(sm.stop(device(ACCOUNT), session_id, used))
    (first, _), (second, _), (third, _) = holds
    assert world.funds.movements == [
        ("CAPTURE", first, SLICE_PRICE),
        ("CAPTURE", second, SLICE_PRICE // 2),
        ("RELEASE", third, SLICE_PRICE),
    ]
    assert (record.used_units, record.termination_reason) == (used, TerminationReason.CLIENT_STOP)
    assert (await stored(world, session_id)).status is SessionStatus.ENDED
    (event,) = world.presence.ended_events
    assert (event.session_id, event.charged_micros, event.ended) == (session_id, used * PRICE, True)
    notice = world.store.notices.of("local")[-1]
    assert (notice.session_id, notice.kind, notice.reason) == (
        session_id,
        NoticeKind.ENDED,
        TerminationReason.CLIENT_STOP,
    )
    assert await world.presence.active() == []

    funds_calls = world.funds.calls.copy()
    assert await bounded(sm.stop(device(ACCOUNT), session_id, used)) == record
    assert await bounded(sm_b.stop(OPERATOR, session_id, 0)) == record
    assert world.store.calls["finish"] == 1
    assert world.funds.calls["capture"] == funds_calls["capture"]
    assert world.funds.calls["release"] == funds_calls["release"]
    assert len(world.presence.ended_events) == 1
    answer = await meter(sm, on, session_id, 3, used + 1)
    assert answer.termination is not None and answer.termination.ended
    assert_settled(world, record, FUNDED)


async def test_a_final_count_below_the_devices_own_report_is_refused(
    sm: Instance, world: World
) -> None:
    world.funds.open_account(ACCOUNT, FUNDED)
    session = await start(sm)
    await meter(sm, stream(), session.session_id, 1, 5)
    await sm.batcher.flush()
    with pytest.raises(UsageWentBackwards):
        await bounded(sm.stop(device(ACCOUNT), session.session_id, 4))
    assert (await stored(world, session.session_id)).is_active
    record = await bounded(sm.stop(device(ACCOUNT), session.session_id, 5))
    assert_settled(world, record, FUNDED)


# -- recovery ------------------------------------------------------------------------------


@pytest.mark.parametrize("made", [True, False], ids=["hold-made", "hold-never-made"])
@pytest.mark.parametrize("by", ["takeover", "settlement"])
async def test_a_pending_hold_is_resolved_by_whoever_has_the_session_next(
    sm: Instance, sm_b: Instance, world: World, made: bool, by: str
) -> None:
    """Instance A noted hold 2 as pending and died: before Reserve answered (`made`: the
    hold exists, A never recorded it) or with Reserve refusing it (no money: it was never
    made). Instance B, taking the stream over or settling, asks for it again by its key:
    a made hold is recorded (and released at the end), one never made is forgotten."""
    funded = FUNDED if made else SLICE_PRICE
    world.funds.open_account(ACCOUNT, funded)
    session = await start(sm)
    session_id = session.session_id
    await meter(sm, stream(), session_id, 1, 3)
    await sm.batcher.flush()
    await sm.quiesce()
    (first, _), *_ = await world.store.holds(session_id)

    row = await stored(world, session_id)
    assert await world.store.mark_pending_hold(session_id, Fence.of(row), 2, SLICE_PRICE, 2 * SLICE)
    if made:
        second = await world.funds.reserve(
            ACCOUNT, SLICE_PRICE, hold_key(session_id, 2), session_id
        )
    # A is gone from here on: nothing of it runs again.

    if by == "takeover":
        answer = await meter(sm_b, stream(), session_id, 2, 4)
        assert answer.session.pending_hold_number == 0
        assert answer.session.granted_units == (2 * SLICE if made else SLICE)
    record = await bounded(sm_b.stop(device(ACCOUNT), session_id, 4))

    row = await stored(world, session_id)
    assert (row.pending_hold_number, row.pending_hold_micros) == (0, 0)
    if made:
        assert await world.store.holds(session_id) == [
            (first, SLICE_PRICE),
            (second, SLICE_PRICE),
        ]
        assert world.funds.movements == [
            ("CAPTURE", first, 4 * PRICE),
            ("RELEASE", second, SLICE_PRICE),
        ]
    else:
        assert await world.store.holds(session_id) == [(first, SLICE_PRICE)]
        assert world.funds.movements == [("CAPTURE", first, 4 * PRICE)]
    assert len(world.funds.holds_of(ACCOUNT)) == (2 if made else 1)
    assert record.used_units == 4
    assert_settled(world, record, funded)


# -- fencing between instances -------------------------------------------------------------


@pytest.mark.parametrize("then", ["moved", "ended"])
async def test_an_instance_whose_session_was_taken_over_is_fenced_out(
    sm: Instance, sm_b: Instance, world: World, then: str
) -> None:
    world.funds.open_account(ACCOUNT, FUNDED)
    session = await start(sm)
    session_id = session.session_id
    on_a = stream()
    await meter(sm, on_a, session_id, 1, 3)  # A holds it, with usage not written yet
    await sm.quiesce()
    epoch_a = (await stored(world, session_id)).owner_epoch

    on_b = stream()
    await meter(sm_b, on_b, session_id, 2, 4)  # the device reconnected to B
    row = await stored(world, session_id)
    assert (row.owner_id, row.owner_epoch) == ("sm-b", epoch_a + 1)

    await sm.batcher.flush()  # A's batch: refused
    row = await stored(world, session_id)
    assert (row.used_units, row.last_sequence) == (0, 0)
    assert sm.live.get(session_id) is None
    await sm_b.batcher.flush()
    assert (await stored(world, session_id)).used_units == 4

    if then == "moved":
        with pytest.raises(Unavailable) as moved:
            await meter(sm, on_a, session_id, 3, 5)
        assert moved.value.reason == "SESSION_MOVED"
        assert (await stored(world, session_id)).used_units == 4
        record = await bounded(sm_b.stop(device(ACCOUNT), session_id, 4))
    else:
        record = await bounded(sm_b.stop(device(ACCOUNT), session_id, 4))
        answer = await meter(sm, on_a, session_id, 3, 5)
        assert answer.termination is not None and answer.termination.ended
        assert answer.termination.reason is TerminationReason.CLIENT_STOP
    assert record.used_units == 4
    assert_settled(world, record, FUNDED)


async def test_the_ownership_check_lets_go_of_a_session_taken_over_elsewhere(
    sm: Instance, sm_b: Instance, world: World
) -> None:
    """A has nothing to write, so no batch tells it; the ownership check does."""
    world.funds.open_account(ACCOUNT, FUNDED)
    session = await start(sm)
    on_a = stream()
    await meter(sm, on_a, session.session_id, 1, 3)
    await sm.batcher.flush()
    await meter(sm_b, stream(), session.session_id, 2, 4)

    await sm.batcher.verify()
    with pytest.raises(Unavailable) as moved:
        await meter(sm, on_a, session.session_id, 3, 5)
    assert moved.value.reason == "SESSION_MOVED"


# -- liveness --------------------------------------------------------------------------------


async def test_the_liveness_sweep_settles_a_silent_session(sm: Instance, world: World) -> None:
    world.funds.open_account(ACCOUNT, FUNDED)
    world.funds.open_account("acc_2", FUNDED)
    silent = await start(sm)
    talking = await start(sm, "acc_2")
    on = stream()
    await meter(sm, on, silent.session_id, 1, 3)
    await meter(sm, stream("acc_2"), talking.session_id, 1, 3)
    await sm.batcher.flush()
    await sm.quiesce()
    world.store.backdate(silent.session_id, timedelta(seconds=SMALL_QUOTA.validity_seconds + 1))

    assert await bounded(sm.expiry.sweep()) == 1
    record = await world.store.record(silent.session_id)
    assert record is not None
    assert (record.termination_reason, record.used_units) == (
        TerminationReason.LIVENESS_TIMEOUT,
        3,
    )
    (event,) = world.presence.ended_events
    notice = world.store.notices.of("local")[-1]
    assert event.reason is notice.reason is TerminationReason.LIVENESS_TIMEOUT
    assert (await stored(world, talking.session_id)).is_active
    answer = await meter(sm, on, silent.session_id, 2, 4)
    assert answer.termination is not None and answer.termination.ended
    assert answer.termination.reason is TerminationReason.LIVENESS_TIMEOUT
    assert_settled(world, record, FUNDED)
    assert await bounded(sm.expiry.sweep()) == 0


async def test_presence_is_written_again_after_it_was_lost(sm: Instance, world: World) -> None:
    world.funds.open_account(ACCOUNT, FUNDED)
    session = await start(sm)
    assert not await sm.expiry.keep_presence()
    world.presence.lost = True
    assert await sm.expiry.keep_presence()
    assert world.presence.rebuilt_from == [[session.session_id]]
    assert [user.session_id for user in await world.presence.active()] == [session.session_id]


# -- gateways ----------------------------------------------------------------------------


async def test_gateway_reports_count_apart_and_end_the_session(sm: Instance, world: World) -> None:
    world.funds.open_account(ACCOUNT, FUNDED)
    session = await start(sm)
    session_id = session.session_id
    on = stream()
    await meter(sm, on, session_id, 1, 3)

    report = await bounded(sm.gateway_usage(gateway(), session_id, 6, False))
    assert (report.charged_micros, report.record) == (6 * PRICE, None)
    with pytest.raises(UsageWentBackwards):
        await bounded(sm.gateway_usage(gateway(), session_id, 5, False))
    with pytest.raises(PermissionDenied):
        await bounded(sm.gateway_usage(gateway("elsewhere"), session_id, 7, False))
    answer = await meter(sm, on, session_id, 2, 4)  # the device counts less
    assert (answer.session.client_used_units, answer.session.used_units) == (4, 6)

    ended = await bounded(sm.gateway_usage(gateway(), session_id, 8, True))
    assert ended.record is not None
    assert ended.record.termination_reason is TerminationReason.GATEWAY
    assert (ended.record.used_units, ended.charged_micros) == (8, 8 * PRICE)
    assert_settled(world, ended.record, FUNDED)


async def test_a_gateway_is_chosen_by_service_type_and_load() -> None:
    store = InMemorySessionStore()
    store.add_gateway("gw-video", "10.0.0.2:5060", frozenset({ServiceType.VIDEO}))
    store.add_gateway("gw-off", "10.0.0.3:5060", enabled=False)
    chooser = GatewayChooser(store.registry)
    assert (await chooser.choose(ServiceType.VOICE)).gateway_id == "local"
    chosen = [(await chooser.choose(ServiceType.VIDEO)).gateway_id for _ in range(3)]
    assert chosen == ["gw-video", "gw-video", "local"]
    assert await chooser.address("gw-video") == "10.0.0.2:5060"

    closed = InMemorySessionStore()
    closed.add_gateway("local", "127.0.0.1:5060", enabled=False)
    with pytest.raises(FailedPrecondition) as none:
        await GatewayChooser(closed.registry).choose(ServiceType.VOICE)
    assert none.value.reason == "NO_GATEWAY"


def test_stream_limits_count_per_credential() -> None:
    limits = StreamLimits(2, "usage streams", "SETTING")
    first, other = device("acc_1"), device("acc_2")
    with limits.hold(first), limits.hold(first):
        with pytest.raises(ResourceExhausted), limits.hold(first):
            pass
        with limits.hold(other):
            pass
    with limits.hold(first), limits.hold(first):
        pass


async def test_the_active_users_a_caller_may_see(sm: Instance, world: World) -> None:
    world.funds.open_account("acc_1", FUNDED)
    world.funds.open_account("acc_2", FUNDED)
    mine = await start(sm, "acc_1")
    theirs = await start(sm, "acc_2")
    assert [u.session_id for u in await sm.parts.active(device("acc_1"), "")] == [mine.session_id]
    with pytest.raises(PermissionDenied):
        await sm.parts.active(device("acc_1"), "acc_2")
    everyone = {mine.session_id, theirs.session_id}
    assert {u.session_id for u in await sm.parts.active(OPERATOR, "")} == everyone
    assert {u.session_id for u in await sm.parts.active(gateway(), "")} == everyone
    assert await sm.parts.active(gateway("elsewhere"), "") == []
