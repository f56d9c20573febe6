"""meterline.kernel.pg_pool on real PostgreSQL: a failed statement is not run again; a
restart costs nothing but a second try; while the database is down each call fails at
once; after a long outage the first call works, long before the pool's own backoff."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path

import psycopg
import pytest
from tests.support.private_stores import PrivatePostgres
from tests.support.stores import StoreUrls

from meterline.kernel.pg_pool import Connection, PooledDatabase
from meterline.kernel.store_errors import store_outage

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]


async def _one(conn: Connection) -> int:
    row = await (await conn.execute("SELECT 1 AS one")).fetchone()
    assert row is not None
    return int(row["one"])


@pytest.fixture
async def postgres(tmp_path: Path) -> AsyncIterator[PrivatePostgres]:
    server = await asyncio.to_thread(PrivatePostgres, tmp_path / "postgres")
    try:
        yield server
    finally:
        await asyncio.to_thread(server.close)


async def test_a_failed_statement_is_not_run_again(stores: StoreUrls) -> None:
    db = PooledDatabase(stores.billing_url, "test database", min_size=1, max_size=2)
    await db.open()
    runs = 0

    async def fails(conn: Connection) -> None:
        nonlocal runs
        runs += 1
        await conn.execute("SELECT 1 / 0")

    try:
        with pytest.raises(psycopg.errors.DivisionByZero):
            await db.run(fails)
        assert runs == 1
        assert await db.run(_one) == 1
    finally:
        await db.close()


async def test_no_free_connection_in_time_is_busy(stores: StoreUrls) -> None:
    db = PooledDatabase(stores.billing_url, "test database", min_size=1, max_size=1, timeout=0.3)
    await db.open()
    holding, release = asyncio.Event(), asyncio.Event()

    async def hold(conn: Connection) -> None:
        holding.set()
        await release.wait()

    try:
        held = asyncio.create_task(db.run(hold))
        await holding.wait()
        with pytest.raises(psycopg.OperationalError) as raised:
            await db.run(_one)
        assert store_outage(raised.value) == ("database", "busy")
        release.set()
        await held
        assert await db.run(_one) == 1
    finally:
        await db.close()


async def test_a_restart_and_a_long_outage(postgres: PrivatePostgres) -> None:
    db = PooledDatabase(postgres.url, "test database", min_size=2, max_size=4)
    await db.open()
    try:
        # Several pooled connections, all of which die with the server.
        await asyncio.gather(*(db.run(_one) for _ in range(4)))

        await postgres.stop()
        await postgres.start()
        assert await asyncio.gather(*(db.run(_one) for _ in range(4))) == [1] * 4

        await postgres.stop()
        for _ in range(3):
            began = time.monotonic()
            with pytest.raises(psycopg.OperationalError) as raised:
                await db.run(_one)
            assert time.monotonic() - began < 1.0
            assert store_outage(raised.value) == ("database", "unreachable")
        # Meanwhile the pool's own reconnection backs off: attempts 1, 2, 4, 8 s apart.
        await asyncio.sleep(8)

        await postgres.start()
        began = time.monotonic()
        assert await asyncio.gather(*(db.run(_one) for _ in range(4))) == [1] * 4
        assert time.monotonic() - began < 2.0
    finally:
        await db.close()


async def test_a_busy_plain_pool_is_unavailable_at_once_without_a_retry(
    stores: StoreUrls, caplog: pytest.LogCaptureFixture
) -> None:
    """run_on_pool (the service manager's stores): PoolTimeout is an OperationalError,
    and must not be taken for a connection a restart broke (retried after a pool check)."""
    from psycopg_pool import AsyncConnectionPool

    from meterline.kernel.db import libpq_dsn
    from meterline.kernel.errors import Unavailable
    from meterline.kernel.pg_pool import run_on_pool

    pool: AsyncConnectionPool[psycopg.AsyncConnection[object]] = AsyncConnectionPool(
        libpq_dsn(stores.service_url), min_size=1, max_size=1, timeout=0.3, open=False
    )
    await pool.open(wait=True)
    caplog.set_level(logging.INFO, logger="meterline.kernel.pg_pool")
    runs = 0

    async def work(conn: psycopg.AsyncConnection[object]) -> int:
        nonlocal runs
        runs += 1
        return 1

    try:
        async with pool.connection():  # the pool's only connection, held
            with pytest.raises(Unavailable, match="busy test database"):
                await run_on_pool(pool, work, "The busy test database cannot be reached.")
        assert "connection lost" not in caplog.text  # refused once, not retried
        assert await run_on_pool(pool, work, "unused") == 1 and runs == 1
    finally:
        await pool.close()
