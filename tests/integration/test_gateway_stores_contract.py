"""The gateway registry, the identities and the gateways' notice log: one suite run against
the in-memory fakes the unit tests use and the PostgreSQL stores (as
test_session_store_contract.py does for the session store), in a database of this suite's
own. Two PostgresNoticeLog objects on one database stand for two service-manager
instances: a notice one writes wakes a watcher of the other."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from urllib.parse import urlparse

import psycopg
import pytest

from meterline.kernel.db import drop_database, ensure_database, libpq_dsn
from meterline.kernel.media import ServiceType, Unit
from meterline.kernel.pg_pool import PooledDatabase
from meterline.kernel.pricing import RateTerms
from service_manager.app.ports import (
    Fence,
    GatewayRegistry,
    Identities,
    NoticeLog,
    SessionStore,
)
from service_manager.domain.gateways import GatewayChange, GatewayState, new_gateway
from service_manager.domain.identities import IdentityKind, normalized
from service_manager.domain.notices import GatewayNotice, NoticeKind
from service_manager.domain.records import ServiceRecord
from service_manager.domain.sessions import (
    Session,
    SessionRate,
    SessionStatus,
    TerminationReason,
)
from service_manager.server import migrate
from service_manager.storage.notice_log import PostgresNoticeLog
from service_manager.storage.registry import PostgresGatewayRegistry, PostgresIdentities
from service_manager.storage.session_store import PostgresSessionStore
from tests.support.fakes import InMemorySessionStore
from tests.support.stores import StoreUrls

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

RATE = SessionRate(
    tariff_id="trf_contract",
    prefix="+44",
    unit=Unit.SECOND,
    terms=RateTerms(
        price_per_unit_micros=10_000, increment_units=1, minimum_units=0, setup_fee_micros=0
    ),
    currency="EUR",
)


@dataclass
class Stores:
    sessions: SessionStore
    registry: GatewayRegistry
    identities: Identities
    notices: NoticeLog
    other_notices: NoticeLog
    """The notice log as another instance has it."""


@pytest.fixture(scope="module")
def contract_database(stores: StoreUrls) -> Iterator[str]:
    service_db = urlparse(stores.service_url).path.lstrip("/")
    name = f"{service_db}_gateway_contract"
    url = ensure_database(stores.server_url, name)
    migrate(url)
    try:
        yield url
    finally:
        drop_database(stores.server_url, name)


@pytest.fixture(params=["memory", "postgres"])
async def found(request: pytest.FixtureRequest) -> AsyncIterator[Stores]:
    if request.param == "memory":
        memory = InMemorySessionStore()
        yield Stores(memory, memory.registry, memory.identities, memory.notices, memory.notices)
        return
    url: str = request.getfixturevalue("contract_database")
    with psycopg.connect(libpq_dsn(url), autocommit=True) as conn:
        conn.execute(
            "TRUNCATE session_holds, service_records, sessions, gateway_notices, account_identities"
        )
        conn.execute("DELETE FROM gateways WHERE gateway_id <> 'local'")
        conn.execute("UPDATE gateways SET last_notice_cursor = 0, last_seen_at = NULL")
    databases = [PooledDatabase(url, f"contract {n}", min_size=1, max_size=3) for n in (1, 2)]
    sessions = PostgresSessionStore(url, pool_size=2)
    for opened in (*databases, sessions):
        await opened.open()
    logs = [PostgresNoticeLog(database, url) for database in databases]
    for log in logs:
        log.start()
    await asyncio.sleep(0.2)  # both listening
    try:
        yield Stores(
            sessions,
            PostgresGatewayRegistry(databases[0]),
            PostgresIdentities(databases[0]),
            logs[0],
            logs[1],
        )
    finally:
        for log in logs:
            await log.close()
        await sessions.close()
        for database in databases:
            await database.close()


def notice(gateway_id: str, session_id: str, kind: NoticeKind = NoticeKind.ENDED) -> GatewayNotice:
    return GatewayNotice(
        gateway_id=gateway_id,
        session_id=session_id,
        account_id="acc_contract",
        kind=kind,
        message=f"{kind} of {session_id}",
        reason=TerminationReason.CLIENT_STOP if kind is NoticeKind.ENDED else None,
        balance_micros=1_234,
        seconds_left=56 if kind is NoticeKind.LOW_BALANCE else None,
        granted_units=78,
    )


# -- the registry --------------------------------------------------------------------------


async def test_gateways_are_registered_once_and_changed_in_place(found: Stores) -> None:
    registry = found.registry
    (local,) = await registry.gateways()
    assert (local.gateway_id, local.address, local.service_types) == (
        "local",
        "127.0.0.1:5060",
        None,
    )
    assert local.skip_liveness_check and local.state is GatewayState.ENABLED

    edge = new_gateway("edge1", "sip.example.com:5060", frozenset({ServiceType.VOICE}), "eu", 10)
    stored, created = await registry.register(edge)
    assert created and (stored.region, stored.capacity, stored.skip_liveness_check) == (
        "eu",
        10,
        False,
    )
    assert stored.service_types == frozenset({ServiceType.VOICE})
    again, created = await registry.register(new_gateway("edge1", "other:1", None))
    assert not created and again.address == "sip.example.com:5060"

    changed = await registry.update(
        "edge1",
        GatewayChange(
            state=GatewayState.DRAINING,
            capacity=0,
            service_types=None,
            change_service_types=True,
        ),
    )
    assert changed is not None
    assert (changed.state, changed.capacity, changed.service_types) == (
        GatewayState.DRAINING,
        0,
        None,
    )
    assert await registry.update("missing", GatewayChange(region="x")) is None
    assert await registry.gateway("edge1") == changed
    assert await registry.gateway("missing") is None


async def test_liveness_never_moves_back_and_loads_are_counted(found: Stores) -> None:
    registry = found.registry
    await registry.register(new_gateway("edge1", "h:5060", None))
    now = datetime.now(UTC)
    await registry.seen(["edge1"], now)
    await registry.seen(["edge1", "missing"], now - timedelta(minutes=1))
    edge = await registry.gateway("edge1")
    assert edge is not None and edge.last_seen_at == now

    session = new_session("edge1")
    assert await found.sessions.insert_new(session, None)
    loads = {g.gateway_id: g.active_sessions for g in await registry.gateways()}
    assert loads == {"edge1": 1, "local": 0}


# -- identities ----------------------------------------------------------------------------------


async def test_an_identity_maps_to_one_account(found: Stores) -> None:
    identities = found.identities
    msisdn = normalized(IdentityKind.MSISDN, "+447700900123")
    sip = normalized(IdentityKind.SIP_URI, "sip:alice@example.com")
    added = await identities.add("acc_1", msisdn)
    assert (added.account_id, added.identity) == ("acc_1", msisdn)
    assert await identities.add("acc_2", msisdn) == added  # taken: the caller compares
    await identities.add("acc_1", sip)
    # The same value of another kind is another identity.
    await identities.add("acc_2", normalized(IdentityKind.USER_NAME, "+447700900123"))
    assert [i.identity for i in await identities.of_account("acc_1")] == [msisdn, sip]
    assert await identities.resolve(msisdn) == "acc_1"
    assert not await identities.remove("acc_2", msisdn)
    assert await identities.remove("acc_1", msisdn)
    assert await identities.resolve(msisdn) is None


# -- the notice log ------------------------------------------------------------------------------


async def test_each_gateway_has_its_own_cursors_kept_and_pruned(found: Stores) -> None:
    await found.registry.register(new_gateway("edge1", "h:5060", None))
    log = found.notices
    assert await log.bounds("edge1") == (1, 0)
    assert [await log.append(notice("edge1", f"ses_{n}")) for n in range(3)] == [1, 2, 3]
    assert await log.append(notice("local", "ses_l", NoticeKind.LOW_BALANCE)) == 1
    kept = await log.after("edge1", 1, 10)
    assert [(n.cursor, n.session_id) for n in kept] == [(2, "ses_1"), (3, "ses_2")]
    assert [n.cursor for n in await log.after("edge1", 0, 2)] == [1, 2]
    (low,) = await log.after("local", 0, 10)
    assert (low.kind, low.reason, low.seconds_left, low.balance_micros, low.granted_units) == (
        NoticeKind.LOW_BALANCE,
        None,
        56,
        1_234,
        78,
    )
    assert kept[0].reason is TerminationReason.CLIENT_STOP and kept[0].created_at is not None
    assert await log.bounds("edge1") == (1, 3)

    assert await log.prune(datetime.now(UTC) + timedelta(seconds=1)) == 4
    assert await log.bounds("edge1") == (4, 3)  # none kept; the next cursor is still 4
    assert await log.append(notice("edge1", "ses_3")) == 4
    assert await log.bounds("edge1") == (4, 4)
    assert await log.bounds("missing") == (1, 0)


async def test_concurrent_writers_never_let_a_reader_skip_a_cursor(found: Stores) -> None:
    """Many notices for one gateway written at once: cursors 1..n, each once, and a reader
    following along with `after` sees every one of them (never n + 1 before n)."""
    await found.registry.register(new_gateway("edge1", "h:5060", None))
    seen: list[int] = []
    total = 60

    async def follow() -> None:
        cursor = 0
        while len(seen) < total:
            for item in await found.other_notices.after("edge1", cursor, 100):
                seen.append(item.cursor)
                cursor = item.cursor
            await asyncio.sleep(0)

    reader = asyncio.create_task(follow())
    cursors = await asyncio.gather(
        *(found.notices.append(notice("edge1", f"ses_{n}")) for n in range(total))
    )
    await asyncio.wait_for(reader, 10)
    assert sorted(cursors) == list(range(1, total + 1))
    assert seen == list(range(1, total + 1))


async def test_a_notice_written_by_one_instance_wakes_a_watcher_of_another(found: Stores) -> None:
    await found.registry.register(new_gateway("edge1", "h:5060", None))
    watcher = found.other_notices
    mark = watcher.mark("edge1")
    waiting = asyncio.ensure_future(watcher.wait("edge1", mark, 10))
    await asyncio.sleep(0.05)
    assert not waiting.done()
    began = asyncio.get_running_loop().time()
    await found.notices.append(notice("edge1", "ses_1"))
    await asyncio.wait_for(waiting, 5)
    assert asyncio.get_running_loop().time() - began < 2
    # A mark taken before a write returns at once afterwards; a later one waits its time.
    await asyncio.wait_for(watcher.wait("edge1", mark, 10), 1)
    began = asyncio.get_running_loop().time()
    await watcher.wait("edge1", watcher.mark("edge1"), 0.2)
    assert asyncio.get_running_loop().time() - began >= 0.15


async def test_the_ended_notice_is_written_with_the_record_once(found: Stores) -> None:
    store = found.sessions
    session = new_session("local")
    assert await store.insert_new(session, None)
    claimed = await store.claim_settlement(session.session_id, 5, TerminationReason.CLIENT_STOP)
    assert claimed is not None
    record = ServiceRecord(
        session_id=claimed.session_id,
        account_id=claimed.account_id,
        service_type=claimed.service_type,
        endpoint=claimed.endpoint,
        application_id="",
        gateway_id="local",
        rate=RATE,
        started_at=claimed.started_at,
        ended_at=datetime.now(UTC),
        used_units=5,
        billed_units=5,
        charged_micros=50_000,
        termination_reason=TerminationReason.CLIENT_STOP,
    )
    ended = notice("local", claimed.session_id)
    await store.finish(record, Fence.of(claimed), ended)
    await store.finish(record, Fence.of(claimed), ended)  # a settler's repeat
    kept = await found.notices.after("local", 0, 10)
    assert [(n.kind, n.session_id, n.cursor) for n in kept] == [
        (NoticeKind.ENDED, claimed.session_id, 1)
    ]


def new_session(gateway_id: str) -> Session:
    at = datetime.now(UTC)
    return Session(
        session_id=f"ses_{uuid.uuid4().hex}",
        account_id="acc_contract",
        service_type=ServiceType.VOICE,
        endpoint="+442079460000",
        application_id="",
        gateway_id=gateway_id,
        rate=RATE,
        status=SessionStatus.ACTIVE,
        started_at=at,
        last_update_at=at,
        last_sequence=0,
        used_units=0,
        granted_units=0,
        held_micros=0,
        owner_epoch=1,
        owner_id="sm-a",
    )
