"""Holds with an expiry, on the real PostgreSQL: every hold carries one (the Reserve's TTL
or the installation's default), and the sweep releases each expired hold exactly once,
however many billing managers sweep at the same time."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace

import grpc
import psycopg
import pytest
from google.protobuf.duration_pb2 import Duration

import billing_manager.server
from billing_manager.ledger import Ledger
from billing_manager.storage.movement_store import MovementStore
from meterline.billing.v1 import billing_pb2, billing_pb2_grpc
from meterline.kernel.db import create_engine_for, libpq_dsn
from meterline.kernel.grpc_errors import error_reason
from tests.support import tls
from tests.support.clients import OPERATOR, Stubs, new_account
from tests.support.stack import settings_for
from tests.support.stores import StoreUrls

pytestmark = pytest.mark.integration


@pytest.fixture
async def sweepers(stores: StoreUrls) -> AsyncIterator[list[Ledger]]:
    """Three billing managers' ledgers on the test run's account database."""
    engine = create_engine_for(stores.billing_url, pool_size=1)
    stores_opened = [MovementStore(stores.billing_url, pool_size=2) for _ in range(3)]
    for store in stores_opened:
        await store.open()
    try:
        yield [Ledger(engine, store) for store in stores_opened]
    finally:
        for store in stores_opened:
            await store.close()
        await engine.dispose()


def _reserve(account_id: str, amount: int, ttl: int | None = None) -> billing_pb2.ReserveRequest:
    request = billing_pb2.ReserveRequest(
        account_id=account_id, amount_micros=amount, idempotency_key=uuid.uuid4().hex
    )
    if ttl is not None:
        request.ttl.CopyFrom(Duration(seconds=ttl))
    return request


def _expiry_releases(stores: StoreUrls, hold_id: str) -> int:
    with psycopg.connect(libpq_dsn(stores.billing_url)) as conn:
        row = conn.execute(
            "SELECT count(*) FROM ledger_transactions WHERE hold_id = %s AND kind = 'RELEASE'",
            (hold_id,),
        ).fetchone()
    assert row is not None
    return int(row[0])


async def test_every_hold_carries_an_expiry(api: Stubs) -> None:
    account_id = await new_account(api.billing, funded_micros=1_000_000)
    short = await api.billing.Reserve(_reserve(account_id, 100, ttl=90), metadata=OPERATOR)
    assert short.expire_time.seconds - short.create_time.seconds in (89, 90, 91)
    default = await api.billing.Reserve(_reserve(account_id, 100), metadata=OPERATOR)
    assert default.expire_time.seconds - default.create_time.seconds in range(86399, 86402)
    for bad in (0, 30 * 24 * 3600 + 1):
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await api.billing.Reserve(_reserve(account_id, 100, ttl=bad), metadata=OPERATOR)
        assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "ttl" in (raised.value.details() or "")


async def test_the_sweep_releases_each_expired_hold_once(
    api: Stubs, stores: StoreUrls, sweepers: list[Ledger]
) -> None:
    account_id = await new_account(api.billing, funded_micros=1_000_000)
    request = _reserve(account_id, 300_000, ttl=1)
    expiring = await api.billing.Reserve(request, metadata=OPERATOR)
    lasting = await api.billing.Reserve(_reserve(account_id, 200_000), metadata=OPERATOR)
    await asyncio.sleep(1.3)

    # Three billing managers sweep at once, each twice: the hold is released once.
    for _ in range(2):
        await asyncio.gather(*(ledger.expire_holds() for ledger in sweepers))
    assert _expiry_releases(stores, expiring.hold_id) == 1

    account = await api.billing.GetAccount(
        billing_pb2.GetAccountRequest(account_id=account_id), metadata=OPERATOR
    )
    assert (account.balance_micros, account.available_micros) == (1_000_000, 800_000)
    assert account.held_micros == 200_000  # the hold that has not expired stays

    # The expired hold is closed: a late capture is refused, and the reserve's retry
    # still answers the first (now released) hold.
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await api.billing.Capture(
            billing_pb2.CaptureRequest(
                hold_id=expiring.hold_id, amount_micros=1, idempotency_key=uuid.uuid4().hex
            ),
            metadata=OPERATOR,
        )
    assert error_reason(raised.value) == "HOLD_CLOSED"
    again = await api.billing.Reserve(request, metadata=OPERATOR)
    assert again.hold_id == expiring.hold_id
    assert again.status == billing_pb2.HOLD_STATUS_RELEASED
    assert again.released_micros == 300_000
    assert lasting.status == billing_pb2.HOLD_STATUS_OPEN
    with psycopg.connect(libpq_dsn(stores.billing_url)) as conn:
        drift = conn.execute(
            "SELECT * FROM ledger_running_balance_drift(%s)", (account_id,)
        ).fetchall()
    assert drift == []


async def test_a_billing_manager_sweeps_by_itself(stores: StoreUrls) -> None:
    """The sweep runs on every billing manager, every METERLINE_HOLD_SWEEP_SECONDS."""
    settings = replace(settings_for(stores), hold_sweep_seconds=1, migrate_on_start=False)
    billing = await billing_manager.server.start(settings, "127.0.0.1:0")
    channel = tls.channel(f"127.0.0.1:{billing.port}")
    try:
        stub = billing_pb2_grpc.BillingManagerStub(channel)
        account_id = await new_account(stub, funded_micros=1_000)
        hold = await stub.Reserve(_reserve(account_id, 1_000, ttl=1), metadata=OPERATOR)
        for _ in range(40):
            await asyncio.sleep(0.25)
            if _expiry_releases(stores, hold.hold_id):
                break
        assert _expiry_releases(stores, hold.hold_id) == 1
    finally:
        await channel.close(None)
        await billing.close()
