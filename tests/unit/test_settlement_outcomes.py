"""Settlement on the in-memory fakes: the usage summary every capture carries, a hold
someone else captured or released first (the record says what happened instead of the
settlement failing forever), and a suspended account's sessions ended with OPERATOR,
by its status event or, when that was lost, by the refused next slice."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from datetime import UTC, datetime, timedelta
from typing import TypeVar

import pytest

from meterline.kernel.media import ServiceType, Unit
from meterline.kernel.pricing import RateTerms
from service_manager.app.metering import Metered, MeterStream
from service_manager.app.start import StartRequest
from service_manager.domain.holds import HoldState as State
from service_manager.domain.holds import (
    HoldStatus,
    settled_charge,
    settled_elsewhere,
    settled_here,
)
from service_manager.domain.records import UsageSummary
from service_manager.domain.sessions import Session, SessionRate, TerminationReason
from service_manager.peers import usage_to_wire
from tests.support.fakes import (
    OPERATOR,
    SMALL_QUOTA,
    FakeFunds,
    FakeRates,
    InMemorySessionStore,
    Instance,
    build_instance,
    device,
)

pytestmark = pytest.mark.unit

T = TypeVar("T")
ACCOUNT = "acc_1"
ENDPOINT = "+442079460000"
PRICE = 10_000
SLICE = SMALL_QUOTA.slice_seconds
FUNDED = 1_000_000


@pytest.fixture
async def sm() -> AsyncIterator[Instance]:
    rates = FakeRates()
    rates.set(
        "+44",
        SessionRate(
            tariff_id="trf_voice",
            prefix="+44",
            unit=Unit.SECOND,
            terms=RateTerms(
                price_per_unit_micros=PRICE,
                increment_units=1,
                minimum_units=0,
                setup_fee_micros=0,
            ),
            currency="EUR",
        ),
    )
    funds = FakeFunds()
    funds.open_account(ACCOUNT, FUNDED)
    instance = build_instance(InMemorySessionStore(), funds, rates)
    yield instance
    await instance.close()


async def bounded(work: Awaitable[T], seconds: float = 2.0) -> T:
    return await asyncio.wait_for(work, seconds)


async def start(sm: Instance) -> Session:
    request = StartRequest(ACCOUNT, ServiceType.VOICE, ENDPOINT)
    session = (await bounded(sm.start(device(ACCOUNT), request))).session
    await sm.quiesce()
    return session


async def meter(sm: Instance, on: MeterStream, session: Session, seq: int, used: int) -> Metered:
    return await bounded(sm.metering.update(on, session.session_id, seq, used))


def other_callers_key(hold_id: str) -> str:
    return f"operator-fix:{hold_id}"


# -- the usage summary -----------------------------------------------------------------------


async def test_every_capture_at_settlement_carries_the_sessions_usage(sm: Instance) -> None:
    session = await start(sm)
    on = MeterStream(device(ACCOUNT))
    await meter(sm, on, session, 1, SLICE + 5)  # past the first slice: a second hold
    await sm.quiesce()
    record = await bounded(sm.stop(device(ACCOUNT), session.session_id, SLICE + 5))

    captured = [hold for kind, hold, _ in sm.funds.movements if kind == "CAPTURE"]
    assert len(captured) == 2
    for hold_id in captured:
        usage = sm.funds.usages[hold_id]
        assert usage is not None
        assert (usage.session_id, usage.service_type, usage.endpoint, usage.application_id) == (
            session.session_id,
            ServiceType.VOICE,
            ENDPOINT,
            "",
        )
        assert (usage.units, usage.unit, usage.charged_micros) == (
            SLICE + 5,
            Unit.SECOND,
            (SLICE + 5) * PRICE,
        )
        assert usage.started_at == record.started_at
        assert usage.ended_at == record.ended_at
    assert record.charged_micros == (SLICE + 5) * PRICE
    assert (record.settlement_difference_micros, record.settlement_note) == (0, "")


# -- holds someone else closed ----------------------------------------------------------------


async def test_a_hold_an_operator_captured_first_is_recorded_not_wedged(sm: Instance) -> None:
    session = await start(sm)
    on = MeterStream(device(ACCOUNT))
    await meter(sm, on, session, 1, 7)
    (hold,) = sm.funds.holds_of(ACCOUNT)
    await sm.funds.capture(hold.hold_id, 30_000, other_callers_key(hold.hold_id))

    record = await bounded(sm.stop(OPERATOR, session.session_id, 7))

    assert record.charged_micros == 30_000 == sm.funds.captured(ACCOUNT)
    assert record.settlement_difference_micros == 7 * PRICE - 30_000
    assert hold.hold_id in record.settlement_note
    assert "captured for 0.03" in record.settlement_note
    assert "0.04 less than the usage's charge of 0.07" in record.settlement_note
    assert sm.funds.calls["hold"] == 1
    # A repeat answers the same record and moves nothing.
    again = await bounded(sm.stop(OPERATOR, session.session_id, 7))
    assert again == record
    assert sm.funds.captured(ACCOUNT) == 30_000
    assert sm.funds.open_holds(ACCOUNT) == []


async def test_a_hold_released_by_someone_else_records_no_charge(sm: Instance) -> None:
    session = await start(sm)
    on = MeterStream(device(ACCOUNT))
    await meter(sm, on, session, 1, 4)
    (hold,) = sm.funds.holds_of(ACCOUNT)
    await sm.funds.release(hold.hold_id, other_callers_key(hold.hold_id))

    record = await bounded(sm.stop(OPERATOR, session.session_id, 4))

    assert record.charged_micros == 0 == sm.funds.captured(ACCOUNT)
    assert record.settlement_difference_micros == 4 * PRICE
    assert f"Hold {hold.hold_id} was released by another caller" in record.settlement_note
    assert sm.funds.balance(ACCOUNT) == FUNDED


async def test_a_hold_settlement_itself_captured_before_is_not_someone_elses(
    sm: Instance,
) -> None:
    """An earlier attempt captured with settlement's own key (then crashed): the repeat
    replays it; nothing is flagged and nothing is read back."""
    session = await start(sm)
    on = MeterStream(device(ACCOUNT))
    await meter(sm, on, session, 1, 6)
    (hold,) = sm.funds.holds_of(ACCOUNT)
    await sm.funds.capture(hold.hold_id, 6 * PRICE, f"{session.session_id}:settle:{hold.hold_id}")

    record = await bounded(sm.stop(OPERATOR, session.session_id, 6))

    assert record.charged_micros == 6 * PRICE == sm.funds.captured(ACCOUNT)
    assert (record.settlement_difference_micros, record.settlement_note) == (0, "")
    assert sm.funds.calls["hold"] == 0


def test_the_usage_summary_goes_on_the_wire_by_name() -> None:
    started = datetime(2026, 12, 1, 9, 30, tzinfo=UTC)
    usage = UsageSummary(
        session_id="ses_1",
        service_type=ServiceType.FILE_DOWNLOAD,
        endpoint="files.example.org",
        application_id="",
        units=2_048,
        unit=Unit.BYTE,
        started_at=started,
        ended_at=started + timedelta(seconds=75),
        charged_micros=4_096,
    )
    wire = usage_to_wire(usage)
    assert (wire.session_id, wire.service_type, wire.endpoint, wire.unit) == (
        "ses_1",
        "FILE_DOWNLOAD",
        "files.example.org",
        "BYTE",
    )
    assert (wire.units, wire.charged_micros) == (2_048, 4_096)
    assert wire.start_time.ToDatetime(tzinfo=UTC) == started
    assert wire.end_time.ToDatetime(tzinfo=UTC) == started + timedelta(seconds=75)


def test_the_note_says_when_more_was_captured_than_the_usage_charged() -> None:
    closed = State("hold_9", HoldStatus.CAPTURED, 500, 500, 0)
    outcome = settled_charge(300, [settled_here("hold_8", 100), settled_elsewhere(200, closed)])
    assert (outcome.captured_micros, outcome.difference_micros) == (600, -300)
    assert outcome.note.startswith("Hold hold_9 was captured for 0.0005 by another caller")
    assert "0.0003 more than the usage's charge of 0.0003" in outcome.note
    assert settled_charge(300, [settled_here("hold_8", 300)]).note == ""


# -- a suspended account -----------------------------------------------------------------------


async def test_a_suspension_event_ends_the_accounts_sessions_with_operator(
    sm: Instance,
) -> None:
    session = await start(sm)
    pushes: asyncio.Queue[Metered | BaseException | None] = asyncio.Queue()
    pushing = MeterStream(device(ACCOUNT), outbox=pushes)
    await meter(sm, pushing, session, 1, 3)
    sm.funds.accounts[ACCOUNT].active = False

    assert await bounded(sm.settlement.account_stopped(ACCOUNT)) == 1

    pushed = pushes.get_nowait()
    assert isinstance(pushed, Metered) and pushed.pushed
    assert pushed.termination is not None and pushed.termination.ended
    assert pushed.termination.reason is TerminationReason.OPERATOR
    record = await sm.store.record(session.session_id)
    assert record is not None
    assert record.termination_reason is TerminationReason.OPERATOR
    assert record.charged_micros == 3 * PRICE == sm.funds.captured(ACCOUNT)
    # A stream that takes no pushes hears it at its next update.
    later = await meter(sm, MeterStream(device(ACCOUNT)), session, 2, 4)
    assert later.termination is not None and later.termination.ended
    assert later.termination.reason is TerminationReason.OPERATOR


async def test_an_account_active_again_keeps_its_sessions(sm: Instance) -> None:
    session = await start(sm)
    await meter(sm, MeterStream(device(ACCOUNT)), session, 1, 3)
    assert await bounded(sm.settlement.account_stopped(ACCOUNT)) == 0
    assert await sm.store.record(session.session_id) is None


async def test_a_lost_suspension_event_ends_the_session_at_the_refused_slice(
    sm: Instance,
) -> None:
    """No event came: the next slice's hold is refused for the account's status, and the
    session ends with OPERATOR, not BALANCE_EXHAUSTED, though the balance is plenty."""
    session = await start(sm)
    on = MeterStream(device(ACCOUNT))
    await meter(sm, on, session, 1, 2)
    sm.funds.accounts[ACCOUNT].active = False

    cut = await meter(sm, on, session, 2, SLICE + 1)

    assert cut.termination is not None and cut.termination.ended
    assert cut.termination.reason is TerminationReason.OPERATOR
    record = await sm.store.record(session.session_id)
    assert record is not None and record.termination_reason is TerminationReason.OPERATOR
    assert record.charged_micros == sm.funds.captured(ACCOUNT) == SLICE * PRICE
