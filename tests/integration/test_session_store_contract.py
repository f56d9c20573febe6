"""The SessionStore contract: one suite, run against the in-memory fake the unit tests use
(tests/support/fakes.py) and the real PostgresSessionStore, so the fake is known to
behave like the store (flower's linkstate_test.py does the same for its state).

PostgreSQL here is the test run's server, in a database of this suite's own, emptied
before each test: the in-process stack's liveness sweep works on the shared service
database, and would claim this suite's silent sessions (and this suite's claim_idle
theirs)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from urllib.parse import urlparse

import psycopg
import pytest

from meterline.kernel.db import drop_database, ensure_database, libpq_dsn
from meterline.kernel.media import ServiceType, Unit
from meterline.kernel.pricing import RateTerms
from service_manager.app.ports import Fence, SessionStore, UsageWrite
from service_manager.domain.notices import GatewayNotice, NoticeKind
from service_manager.domain.records import ServiceRecord
from service_manager.domain.sessions import (
    Session,
    SessionRate,
    SessionStatus,
    TerminationReason,
)
from service_manager.server import migrate
from service_manager.storage.session_store import PostgresSessionStore
from tests.support.fakes import InMemorySessionStore
from tests.support.stores import StoreUrls

pytestmark = pytest.mark.integration

RATE = SessionRate(
    tariff_id="trf_contract",
    prefix="+44",
    unit=Unit.SECOND,
    terms=RateTerms(
        price_per_unit_micros=10_000, increment_units=1, minimum_units=0, setup_fee_micros=0
    ),
    currency="EUR",
)
ACTIVE = SessionStatus.ACTIVE
SETTLING = SessionStatus.SETTLING


@pytest.fixture(scope="module")
def contract_database(stores: StoreUrls) -> Iterator[str]:
    service_db = urlparse(stores.service_url).path.lstrip("/")
    name = f"{service_db}_store_contract"
    url = ensure_database(stores.server_url, name)
    migrate(url)
    try:
        yield url
    finally:
        drop_database(stores.server_url, name)


@pytest.fixture(params=["memory", "postgres"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[SessionStore]:
    if request.param == "memory":
        yield InMemorySessionStore()
        return
    url: str = request.getfixturevalue("contract_database")
    with psycopg.connect(libpq_dsn(url), autocommit=True) as conn:
        conn.execute(
            "TRUNCATE session_holds, service_records, sessions, gateway_notices, account_identities"
        )
        conn.execute("DELETE FROM gateways WHERE gateway_id <> 'local'")
        conn.execute("UPDATE gateways SET last_notice_cursor = 0")
    postgres = PostgresSessionStore(url, pool_size=2)
    await postgres.open()
    try:
        yield postgres
    finally:
        await postgres.close()


def new_session(at: datetime | None = None, **changes: object) -> Session:
    """A session as StartSession writes it: epoch 1, its first hold pending."""
    at = at or datetime.now(UTC)
    session = Session(
        session_id=f"ses_{uuid.uuid4().hex}",
        account_id="acc_contract",
        service_type=ServiceType.VOICE,
        endpoint="+442079460000",
        application_id="",
        gateway_id="local",
        rate=RATE,
        status=ACTIVE,
        started_at=at,
        last_update_at=at,
        last_sequence=0,
        used_units=0,
        granted_units=0,
        held_micros=0,
        owner_epoch=1,
        owner_id="sm-a",
        pending_hold_number=1,
        pending_hold_micros=100_000,
        pending_granted_units=10,
    )
    for name, value in changes.items():
        setattr(session, name, value)
    return session


async def inserted(store: SessionStore, at: datetime | None = None) -> Session:
    session = new_session(at)
    assert await store.insert_new(session, None)
    found = await store.get(session.session_id)
    assert found is not None
    return found


async def with_first_hold(store: SessionStore, hold_id: str = "hold_1") -> Session:
    session = await inserted(store)
    recorded = await store.record_hold(session.session_id, Fence.of(session), 1, hold_id, 100, 10)
    assert recorded is not None
    return recorded


def usage(session: Session, epoch: int, used: int, at: datetime | None = None) -> UsageWrite:
    return UsageWrite(
        session_id=session.session_id,
        epoch=epoch,
        last_sequence=used,
        client_used_units=used,
        gateway_used_units=0,
        used_units=used,
        last_update_at=at or datetime.now(UTC),
    )


def ended_notice(session: Session, reason: TerminationReason) -> GatewayNotice:
    return GatewayNotice(
        gateway_id=session.gateway_id,
        session_id=session.session_id,
        account_id=session.account_id,
        kind=NoticeKind.ENDED,
        message="ended",
        reason=reason,
    )


def record_of(session: Session, used: int, reason: TerminationReason) -> ServiceRecord:
    return ServiceRecord(
        session_id=session.session_id,
        account_id=session.account_id,
        service_type=session.service_type,
        endpoint=session.endpoint,
        application_id=session.application_id,
        gateway_id=session.gateway_id,
        rate=session.rate,
        started_at=session.started_at,
        ended_at=datetime.now(UTC),
        used_units=used,
        billed_units=used,
        charged_micros=used * 10_000,
        termination_reason=reason,
    )


async def get(store: SessionStore, session_id: str) -> Session:
    found = await store.get(session_id)
    assert found is not None
    return found


# -- starting ----------------------------------------------------------------------------


async def test_a_new_session_is_stored_with_counters_at_zero(store: SessionStore) -> None:
    written = new_session(used_units=5, last_sequence=3, hold_count=2)
    assert await store.insert_new(written, "req-" + uuid.uuid4().hex)
    found = await get(store, written.session_id)
    assert found.rate == RATE
    assert (found.status, found.owner_epoch, found.owner_id) == (ACTIVE, 1, "sm-a")
    assert found.started_at == written.started_at
    assert (found.pending_hold_number, found.pending_hold_micros) == (1, 100_000)
    assert found.pending_granted_units == 10
    # Only what a start knows is written: the counters start at zero.
    assert (found.used_units, found.last_sequence, found.hold_count) == (0, 0, 0)
    assert found.termination_reason is None
    assert await store.get("ses_missing") is None


async def test_a_request_id_starts_one_session(store: SessionStore) -> None:
    request_id = "req-" + uuid.uuid4().hex
    first, second = new_session(), new_session()
    assert await store.insert_new(first, request_id)
    assert not await store.insert_new(second, request_id)
    assert await store.get(second.session_id) is None
    found = await store.by_request_id(request_id)
    assert found is not None and found.session_id == first.session_id
    assert await store.by_request_id("req-" + uuid.uuid4().hex) is None
    # No request_id: no conflict.
    assert await store.insert_new(new_session(), None)
    assert await store.insert_new(new_session(), None)


async def test_only_a_session_without_a_recorded_hold_is_deleted(store: SessionStore) -> None:
    request_id = "req-" + uuid.uuid4().hex
    unstarted = new_session()
    assert await store.insert_new(unstarted, request_id)
    await store.delete_unstarted(unstarted.session_id)
    assert await store.get(unstarted.session_id) is None
    assert await store.by_request_id(request_id) is None
    assert await store.insert_new(new_session(), request_id)  # the request_id is free again

    started = await with_first_hold(store)
    await store.delete_unstarted(started.session_id)
    assert await store.get(started.session_id) is not None


# -- owning and metering -------------------------------------------------------------------


async def test_each_take_over_raises_the_epoch(store: SessionStore) -> None:
    session = await inserted(store)
    first = await store.take_over(session.session_id, "sm-b")
    assert first is not None and (first.owner_epoch, first.owner_id) == (2, "sm-b")
    second = await store.take_over(session.session_id, "sm-c")
    assert second is not None and (second.owner_epoch, second.owner_id) == (3, "sm-c")
    assert (await get(store, session.session_id)).owner_epoch == 3
    assert await store.take_over("ses_missing", "sm-b") is None

    assert await store.claim_settlement(session.session_id, 0, TerminationReason.CLIENT_STOP)
    assert await store.take_over(session.session_id, "sm-b") is None


async def test_many_sessions_are_read_and_taken_over_in_one_call(store: SessionStore) -> None:
    active, other, ended = await inserted(store), await inserted(store), await inserted(store)
    assert await store.claim_settlement(ended.session_id, 0, TerminationReason.CLIENT_STOP)
    ended_epoch = (await get(store, ended.session_id)).owner_epoch
    ids = [active.session_id, other.session_id, ended.session_id, "ses_missing"]

    found = await store.get_many(ids)
    assert set(found) == {active.session_id, other.session_id, ended.session_id}
    assert found[other.session_id] == await get(store, other.session_id)

    taken = await store.take_over_many([*ids, active.session_id], "sm-b")
    assert set(taken) == {active.session_id, other.session_id}  # not the ended one
    for session_id in taken:
        assert (taken[session_id].owner_epoch, taken[session_id].owner_id) == (2, "sm-b")
        assert (await get(store, session_id)).owner_epoch == 2  # raised once, not twice
    assert (await get(store, ended.session_id)).owner_epoch == ended_epoch
    assert await store.get_many([]) == {}


async def test_usage_is_written_under_the_current_epoch_only(store: SessionStore) -> None:
    mine, moved = await inserted(store), await inserted(store)
    assert await store.take_over(moved.session_id, "sm-b")  # epoch 2: epoch 1 is stale
    applied = await store.save_usage(
        [usage(mine, 1, 7), usage(moved, 1, 9), usage(new_session(), 1, 3)]
    )
    assert applied == {mine.session_id}
    row = await get(store, mine.session_id)
    assert (row.used_units, row.client_used_units, row.last_sequence) == (7, 7, 7)
    assert (await get(store, moved.session_id)).used_units == 0
    assert await store.save_usage([]) == set()


async def test_usage_writes_never_lower_a_counter(store: SessionStore) -> None:
    session = await inserted(store)
    later = datetime.now(UTC) + timedelta(seconds=30)
    assert await store.save_usage([usage(session, 1, 9, later)]) == {session.session_id}
    gateway = UsageWrite(session.session_id, 1, 4, 4, 12, 12, later - timedelta(seconds=10))
    assert await store.save_usage([gateway]) == {session.session_id}
    older = UsageWrite(session.session_id, 1, 2, 2, 2, 2, later - timedelta(seconds=20))
    assert await store.save_usage([older]) == {session.session_id}
    row = await get(store, session.session_id)
    assert (row.last_sequence, row.client_used_units) == (9, 9)
    assert (row.gateway_used_units, row.used_units) == (12, 12)
    assert row.last_update_at == later


async def test_usage_of_a_session_no_longer_active_is_refused(store: SessionStore) -> None:
    session = await inserted(store)
    claimed = await store.claim_settlement(session.session_id, 0, TerminationReason.CLIENT_STOP)
    assert claimed is not None
    assert await store.save_usage([usage(session, claimed.owner_epoch, 5)]) == set()
    assert (await get(store, session.session_id)).used_units == 0


async def test_ownership_is_read_for_many_sessions(store: SessionStore) -> None:
    first, second = await inserted(store), await inserted(store)
    assert await store.take_over(second.session_id, "sm-b")
    owners = await store.ownership([first.session_id, second.session_id, "ses_missing"])
    assert set(owners) == {first.session_id, second.session_id}
    assert (owners[first.session_id].epoch, owners[second.session_id].epoch) == (1, 2)
    assert owners[first.session_id].status is ACTIVE


# -- holds -----------------------------------------------------------------------------


async def test_a_pending_hold_is_noted_under_the_fence_and_in_order(
    store: SessionStore,
) -> None:
    session = await with_first_hold(store)
    fence = Fence.of(session)
    sid = session.session_id
    assert not await store.mark_pending_hold(sid, Fence(ACTIVE, fence.epoch + 1), 2, 100, 20)
    assert not await store.mark_pending_hold(sid, Fence(SETTLING, fence.epoch), 2, 100, 20)
    assert not await store.mark_pending_hold(sid, fence, 3, 100, 30)  # hold 2 comes first
    assert not await store.mark_pending_hold(sid, fence, 1, 100, 10)  # hold 1 is recorded
    assert await store.mark_pending_hold(sid, fence, 2, 100, 20)
    row = await get(store, sid)
    assert (row.pending_hold_number, row.pending_hold_micros, row.pending_granted_units) == (
        2,
        100,
        20,
    )


async def test_a_recorded_hold_clears_the_pending_one_and_counts_once(
    store: SessionStore,
) -> None:
    session = await inserted(store)
    sid, fence = session.session_id, Fence.of(session)
    first = await store.record_hold(sid, fence, 1, "hold_1", 100, 10)
    assert first is not None
    assert (first.hold_count, first.held_micros, first.granted_units) == (1, 100, 10)
    assert (first.pending_hold_number, first.pending_hold_micros) == (0, 0)
    assert first.pending_granted_units == 0

    assert await store.mark_pending_hold(sid, fence, 2, 50, 15)
    second = await store.record_hold(sid, fence, 2, "hold_2", 50, 15)
    again = await store.record_hold(sid, fence, 2, "hold_2", 50, 15)
    assert second is not None and again is not None
    assert (again.hold_count, again.held_micros, again.granted_units) == (2, 150, 15)
    assert await store.holds(sid) == [("hold_1", 100), ("hold_2", 50)]


async def test_a_free_extension_raises_the_grant_without_a_hold(store: SessionStore) -> None:
    session = await with_first_hold(store)
    sid, fence = session.session_id, Fence.of(session)
    extended = await store.record_hold(sid, fence, 2, "", 0, 25)
    assert extended is not None
    assert (extended.hold_count, extended.held_micros, extended.granted_units) == (1, 100, 25)
    lower = await store.record_hold(sid, fence, 2, "", 0, 5)  # the grant never goes down
    assert lower is not None and lower.granted_units == 25
    assert await store.holds(sid) == [("hold_1", 100)]


async def test_hold_writes_of_a_lost_owner_are_refused(store: SessionStore) -> None:
    session = await inserted(store)
    sid, stale = session.session_id, Fence.of(session)
    taken = await store.take_over(sid, "sm-b")
    assert taken is not None
    assert await store.record_hold(sid, stale, 1, "hold_1", 100, 10) is None
    assert not await store.clear_pending_hold(sid, stale)
    assert not await store.mark_pending_hold(sid, stale, 1, 100, 10)
    row = await get(store, sid)
    assert (row.hold_count, row.pending_hold_number) == (0, 1)
    assert await store.holds(sid) == []

    assert await store.clear_pending_hold(sid, Fence.of(taken))
    row = await get(store, sid)
    assert (row.pending_hold_number, row.pending_hold_micros, row.pending_granted_units) == (
        0,
        0,
        0,
    )


# -- settling ----------------------------------------------------------------------------


async def test_a_settlement_is_claimed_once_under_a_new_epoch(store: SessionStore) -> None:
    session = await with_first_hold(store)
    sid = session.session_id
    assert await store.save_usage([usage(session, 1, 8)]) == {sid}
    claimed = await store.claim_settlement(sid, 5, TerminationReason.CLIENT_STOP)
    assert claimed is not None
    assert (claimed.status, claimed.owner_epoch) == (SETTLING, 2)
    assert claimed.used_units == 8  # never below what was stored
    assert claimed.termination_reason is TerminationReason.CLIENT_STOP
    assert await store.claim_settlement(sid, 9, TerminationReason.GATEWAY) is None

    # The settler holds the session now: only its fence is let through.
    assert await store.record_hold(sid, Fence(ACTIVE, 1), 2, "hold_2", 50, 15) is None
    assert await store.mark_pending_hold(sid, Fence.of(claimed), 2, 50, 15)
    recorded = await store.record_hold(sid, Fence.of(claimed), 2, "hold_2", 50, 15)
    assert recorded is not None and recorded.hold_count == 2

    higher = await inserted(store)
    raised = await store.claim_settlement(higher.session_id, 12, TerminationReason.GATEWAY)
    assert raised is not None and raised.used_units == 12


async def test_a_stale_settlement_is_taken_over(store: SessionStore) -> None:
    session = await inserted(store)
    sid = session.session_id
    assert await store.claim_stale_settlement(sid, datetime.now(UTC) + timedelta(hours=1)) is None
    claimed = await store.claim_settlement(sid, 0, TerminationReason.GATEWAY)
    assert claimed is not None
    assert await store.claim_stale_settlement(sid, datetime.now(UTC) - timedelta(hours=1)) is None
    stale = await store.claim_stale_settlement(sid, datetime.now(UTC) + timedelta(hours=1))
    assert stale is not None
    assert (stale.status, stale.owner_epoch) == (SETTLING, claimed.owner_epoch + 1)
    assert stale.termination_reason is TerminationReason.GATEWAY


async def test_the_record_is_written_once_and_ends_the_session(store: SessionStore) -> None:
    session = await with_first_hold(store)
    sid = session.session_id
    claimed = await store.claim_settlement(sid, 4, TerminationReason.CLIENT_STOP)
    assert claimed is not None
    assert await store.record(sid) is None
    first = record_of(claimed, 4, TerminationReason.CLIENT_STOP)
    notice = ended_notice(claimed, TerminationReason.CLIENT_STOP)
    written = await store.finish(first, Fence.of(claimed), notice)
    assert written == first
    assert (await get(store, sid)).status is SessionStatus.ENDED

    other = record_of(claimed, 9, TerminationReason.OPERATOR)
    assert await store.finish(other, Fence.of(claimed), notice) == first
    assert await store.record(sid) == first
    assert await store.claim_settlement(sid, 0, TerminationReason.OPERATOR) is None
    assert await store.take_over(sid, "sm-b") is None


async def test_silent_sessions_and_stale_settlements_are_claimed(store: SessionStore) -> None:
    now = datetime.now(UTC)
    oldest = await inserted(store, at=now - timedelta(hours=3))
    old = await inserted(store, at=now - timedelta(hours=2))
    older_than_limit = await inserted(store, at=now - timedelta(hours=1))
    recent = await inserted(store, at=now)
    settling = await inserted(store, at=now)
    assert await store.claim_settlement(settling.session_id, 0, TerminationReason.GATEWAY)

    cutoff = now - timedelta(minutes=30)
    claimed = await store.claim_idle(cutoff, now - timedelta(hours=1), limit=2)
    # The longest silent first (the list's order is not part of the contract).
    assert set(claimed) == {oldest.session_id, old.session_id}
    row = await get(store, oldest.session_id)
    assert (row.status, row.owner_epoch) == (SETTLING, 2)
    assert row.termination_reason is TerminationReason.LIVENESS_TIMEOUT
    assert row.last_update_at > cutoff  # claimed now: not claimed again at once

    later = datetime.now(UTC) + timedelta(minutes=1)
    rest = await store.claim_idle(cutoff, later, limit=10)
    # The one the limit left, and every settlement not heard of since `later`.
    assert set(rest) == {
        older_than_limit.session_id,
        oldest.session_id,
        old.session_id,
        settling.session_id,
    }
    reclaimed = await get(store, settling.session_id)
    assert reclaimed.termination_reason is TerminationReason.GATEWAY  # its reason is kept
    assert reclaimed.owner_epoch == 3
    assert (await get(store, recent.session_id)).status is ACTIVE


async def test_active_sessions(store: SessionStore) -> None:
    active = await inserted(store)
    ended = await inserted(store)
    assert await store.claim_settlement(ended.session_id, 0, TerminationReason.CLIENT_STOP)
    assert [s.session_id for s in await store.active_sessions()] == [active.session_id]


async def test_the_active_sessions_of_one_account_oldest_first(store: SessionStore) -> None:
    now = datetime.now(UTC)
    newer = await inserted(store, now)
    older = await inserted(store, now - timedelta(minutes=1))
    ended = await inserted(store)
    assert await store.claim_settlement(ended.session_id, 0, TerminationReason.CLIENT_STOP)
    other = new_session(account_id="acc_other")
    assert await store.insert_new(other, None)
    found = await store.active_of_account("acc_contract")
    assert [s.session_id for s in found] == [older.session_id, newer.session_id]
    assert found[0].owner_id == "sm-a" and found[0].last_update_at == older.last_update_at
    assert [s.session_id for s in await store.active_of_account("acc_other")] == [other.session_id]
    assert await store.active_of_account("acc_none") == []


async def test_a_record_keeps_unbilled_usage_and_both_counts(store: SessionStore) -> None:
    session = await with_first_hold(store)
    sid = session.session_id
    claimed = await store.claim_settlement(
        sid, 15, TerminationReason.GATEWAY, client_final=8, gateway_final=15
    )
    assert claimed is not None
    assert (claimed.used_units, claimed.client_used_units, claimed.gateway_used_units) == (
        15,
        8,
        15,
    )
    record = replace(
        record_of(claimed, 15, TerminationReason.BALANCE_EXHAUSTED),
        billed_units=10,
        charged_micros=100_000,
        unbilled_units=5,
        unbilled_reason="beyond the grant",
        usage_discrepancy=7,
        client_used_units=8,
        gateway_used_units=15,
    )
    notice = ended_notice(claimed, TerminationReason.BALANCE_EXHAUSTED)
    assert await store.finish(record, Fence.of(claimed), notice) == record
    assert await store.record(sid) == record
