"""PostgreSQL access shared by the services: engines, schema migrations, databases."""

from __future__ import annotations

import logging
import zlib
from pathlib import Path

import psycopg
from alembic import command
from alembic.config import Config
from sqlalchemy import MetaData, make_url, pool, text
from sqlalchemy.engine import Connection, create_engine
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

log = logging.getLogger(__name__)


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
    return create_async_engine(
        sqlalchemy_url(url), pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=False
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
        connect_args={"options": "-c synchronous_commit=off"},
    )


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
    """Create database `name` on the server of `server_url` if missing; return its URL."""
    admin = make_url(sqlalchemy_url(server_url)).set(database="postgres")
    with psycopg.connect(libpq_dsn(admin.render_as_string(False)), autocommit=True) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if not exists:
            conn.execute(f'CREATE DATABASE "{name}"')
            log.info("created database %s", name)
    return admin.set(database=name).render_as_string(hide_password=False)


def drop_database(server_url: str, name: str) -> None:
    admin = make_url(sqlalchemy_url(server_url)).set(database="postgres")
    with psycopg.connect(libpq_dsn(admin.render_as_string(False)), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
