"""Connection pools on /metrics: `meterline_pool_connections{pool, state}` for every pool
the services use (psycopg pools, SQLAlchemy engines, Redis), scraped during a session on
the test stack; and a pool's in-use and waiting counts follow a connection held and a
caller waiting for one, on real PostgreSQL."""

from __future__ import annotations

import asyncio

import pytest

from meterline.kernel.metrics import serve_metrics
from meterline.kernel.pg_pool import PooledDatabase
from meterline.rating.v1 import types_pb2
from meterline.service.v1 import service_pb2
from tests.integration.test_metrics import _scrape, _value
from tests.support.clients import Stubs, device, ensure_tariff, new_account
from tests.support.stores import StoreUrls

pytestmark = pytest.mark.integration

STACK_POOLS = (
    "tariffs",  # rating: SQLAlchemy
    "accounts",  # billing: SQLAlchemy
    "account database",  # billing: psycopg (money movements)
    "sessions",  # service manager: psycopg
    "usage batches",
    "components",
    "gateway registry",
    "redis",  # service manager: presence
)


async def test_every_pool_of_the_stack_is_on_metrics_during_a_session(api: Stubs) -> None:
    port = await asyncio.to_thread(serve_metrics, "127.0.0.1:0")
    await ensure_tariff(api.rating, "+4420", 10_000)
    account_id = await new_account(api.billing, 10_000_000)
    started = await api.service.StartService(
        service_pb2.StartServiceRequest(
            account_id=account_id, service_type=types_pb2.VOICE, endpoint="+442071234567"
        ),
        metadata=device(account_id),
    )
    during = await asyncio.to_thread(_scrape, port)
    await api.service.StopService(
        service_pb2.StopServiceRequest(session_id=started.session_id, used_units=5),
        metadata=device(account_id),
    )
    for pool in STACK_POOLS:
        assert f'meterline_pool_connections{{pool="{pool}",state="idle"}}' in during, pool
        open_connections = _value(
            during, "meterline_pool_connections", pool=pool, state="idle"
        ) + _value(during, "meterline_pool_connections", pool=pool, state="in_use")
        assert open_connections >= 1, pool  # each was used by the session's calls
    for pool in ("sessions", "account database", "gateway registry"):  # psycopg says
        assert f'meterline_pool_connections{{pool="{pool}",state="waiting"}}' in during


async def test_in_use_and_waiting_follow_the_pool(stores: StoreUrls) -> None:
    port = await asyncio.to_thread(serve_metrics, "127.0.0.1:0")
    db = PooledDatabase(stores.service_url, "test pool", min_size=1, max_size=1)
    await db.open()

    def gauge(text: str, state: str) -> float:
        return _value(text, "meterline_pool_connections", pool="test pool", state=state)

    holding = asyncio.Event()
    release = asyncio.Event()
    tasks: list[asyncio.Task[None]] = []
    try:

        async def hold(conn: object) -> None:
            holding.set()
            await release.wait()

        holder = asyncio.create_task(db.run(hold))
        tasks.append(holder)
        await holding.wait()
        held = await asyncio.to_thread(_scrape, port)
        assert gauge(held, "in_use") == 1
        assert gauge(held, "waiting") == 0

        async def select_one(conn: object) -> None:
            await conn.execute("SELECT 1")  # type: ignore[attr-defined]

        waiter = asyncio.create_task(db.run(select_one))
        tasks.append(waiter)
        for _ in range(50):
            await asyncio.sleep(0.02)
            queued = await asyncio.to_thread(_scrape, port)
            if gauge(queued, "waiting") == 1:
                break
        assert gauge(queued, "waiting") == 1
        release.set()
        await asyncio.gather(holder, waiter)
        after = await asyncio.to_thread(_scrape, port)
        assert (gauge(after, "in_use"), gauge(after, "idle"), gauge(after, "waiting")) == (0, 1, 0)
    finally:
        release.set()
        await asyncio.gather(*tasks, return_exceptions=True)
        await db.close()
