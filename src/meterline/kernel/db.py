"""PostgreSQL access shared by the services: engines, units of work that survive a
database restart, schema migrations, databases."""

from __future__ import annotations

import logging
import zlib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import psycopg
from alembic import command
from alembic.config import Config
from sqlalchemy import MetaData, make_url, pool, text
from sqlalchemy.engine import Connection, create_engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from meterline.kernel.store_errors import one_line

log = logging.getLogger(__name__)
T = TypeVar("T")

# Seconds a new connection may take before it fails (libpq's connect_timeout): a database
# that is down or unroutable gives UNAVAILABLE quickly instead of a call that hangs.
CONNECT_TIMEOUT_SECONDS = 5


def sqlalchemy_url(url: str) -> str:
    """Any PostgreSQL URL in the psycopg 3 dialect's form."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "postgresql":
        raise ValueError(f"only PostgreSQL URLs are supported, not {parsed.drivername!r}")
    return parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)


def libpq_dsn(url: str) -> str:
    """The same URL as psycopg.connect() takes it."""
    return (
        make_url(sqlalchemy_url(url))
        .set(drivername="postgresql")
        .render_as_string(hide_password=False)
    )


def create_engine_for(url: str, pool_size: int = 10) -> AsyncEngine:
    """A pooled engine. Checkouts are not pinged (a round trip each); the units of work
    below run again once when a pooled connection turns out to be dead instead."""
    return create_async_engine(
        sqlalchemy_url(url),
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=False,
        connect_args={"connect_timeout": CONNECT_TIMEOUT_SECONDS},
    )


def single_statement_engine(engine: AsyncEngine, synchronous_commit: bool = True) -> AsyncEngine:
    """An engine for work that is one statement: autocommit, so a read or an update is one
    round trip instead of BEGIN, the statement and COMMIT (or ROLLBACK). With
    `synchronous_commit=False` a commit does not wait for the WAL flush; only for writes
    that the next write repairs (cumulative usage counters)."""
    if synchronous_commit:
        return engine.execution_options(isolation_level="AUTOCOMMIT")
    return create_async_engine(
        engine.url,
        pool_size=engine.pool.size(),  # type: ignore[attr-defined]
        max_overflow=engine.pool.size(),  # type: ignore[attr-defined]
        isolation_level="AUTOCOMMIT",
        connect_args={
            "options": "-c synchronous_commit=off",
            "connect_timeout": CONNECT_TIMEOUT_SECONDS,
        },
    )


# Units of work and a database restart. A restart (or a failover, or a connection killed
# by an administrator) leaves every pooled connection dead, and the pool learns it only by
# using one. When SQLAlchemy sees a connection drop it sets `connection_invalidated` and
# invalidates the whole pool, so the next checkout connects afresh: running the work once
# more is what makes the first call after a restart succeed. Pinging every checkout
# (pool_pre_ping) would do the same at a round trip per checkout, on every call.


def _dropped(error: DBAPIError) -> bool:
    if not error.connection_invalidated:
        return False
    log.info("a pooled database connection was dropped (%s); running again", one_line(error))
    return True


async def run_on_connection(
    engine: AsyncEngine, work: Callable[[AsyncConnection], Awaitable[T]]
) -> T:
    """Run `work` on a connection outside a transaction, and once more on a fresh one if
    the pooled connection was dead. Only for reads: a write here would commit at once,
    so a repeat could apply it twice."""
    try:
        async with engine.connect() as conn:
            return await work(conn)
    except DBAPIError as error:
        if not _dropped(error):
            raise
    async with engine.connect() as conn:
        return await work(conn)


async def run_in_transaction(
    engine: AsyncEngine,
    work: Callable[[AsyncConnection], Awaitable[T]],
    *,
    repeatable: bool,
) -> T:
    """Run `work` in one transaction (committed when it returns), and once more if its
    connection dropped. A drop before the COMMIT was sent means nothing was written, so any
    work runs again. A drop during the COMMIT leaves it unknown whether it committed: then
    only `repeatable` work runs again, work whose repeat returns the first result (reads,
    keyed money movements, upserts); other work fails (UNAVAILABLE) and the caller
    decides."""
    committing = False
    try:
        async with engine.begin() as conn:
            result = await work(conn)
            committing = True
        return result
    except DBAPIError as error:
        if (committing and not repeatable) or not _dropped(error):
            raise
    async with engine.begin() as conn:
        return await work(conn)


def upgrade_schema(url: str, migrations_dir: Path, version_table: str) -> None:
    """Bring a database to the newest schema. An advisory lock keeps a primary and a
    secondary starting together from migrating at once."""
    config = Config()
    config.set_main_option("script_location", str(migrations_dir))
    config.attributes["version_table"] = version_table
    engine = create_engine(sqlalchemy_url(url), poolclass=pool.NullPool)
    lock_id = zlib.crc32(version_table.encode())
    with engine.connect() as connection:
        connection.execute(text("SELECT pg_advisory_lock(:id)"), {"id": lock_id})
        try:
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
            connection.commit()
        finally:
            connection.execute(text("SELECT pg_advisory_unlock(:id)"), {"id": lock_id})
            connection.commit()
    engine.dispose()


def run_migrations_online(connection: Connection, metadata: MetaData, version_table: str) -> None:
    """The body of every service's alembic env.py."""
    from alembic import context

    context.configure(connection=connection, target_metadata=metadata, version_table=version_table)
    with context.begin_transaction():
        context.run_migrations()


def ensure_database(server_url: str, name: str) -> str:
    """Create database `name` on the server of `server_url` if missing; return its URL, in
    the plain `postgresql://` form that psql takes as well as the services (`meterline
    up` writes it to stack.json for people to connect with)."""
    admin = make_url(sqlalchemy_url(server_url)).set(database="postgres")
    with psycopg.connect(libpq_dsn(admin.render_as_string(False)), autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if not exists:
            conn.execute(f'CREATE DATABASE "{name}"')
            log.info("created database %s", name)
    return libpq_dsn(admin.set(database=name).render_as_string(hide_password=False))


def drop_database(server_url: str, name: str) -> None:
    admin = make_url(sqlalchemy_url(server_url)).set(database="postgres")
    with psycopg.connect(libpq_dsn(admin.render_as_string(False)), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class DatabaseProbe:
    """A health probe (`health.follow_store`): one round trip to the database, on a
    connection of its own, so probing neither waits for the serving pool nor changes it."""

    def __init__(self, url: str) -> None:
        self._engine = create_engine_for(url, pool_size=1)

    async def __call__(self) -> None:
        await run_on_connection(self._engine, lambda conn: conn.exec_driver_sql("SELECT 1"))

    async def close(self) -> None:
        await self._engine.dispose()
