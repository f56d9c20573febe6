"""Client components in the service database, through psycopg 3 and a small pool of its
own (downloads never take the sessions' connections). The tables are in models.py."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from client_sdk.components import Version
from meterline.kernel import metrics
from meterline.kernel.db import libpq_dsn
from meterline.kernel.errors import Unavailable
from meterline.kernel.pg_pool import run_on_pool
from service_manager.domain.components import ComponentKey, PublishedComponent

log = logging.getLogger(__name__)
T = TypeVar("T")
Connection = psycopg.AsyncConnection[dict[str, Any]]

_COLUMNS = (
    "component_id, name, platform, version, size_bytes, sha256, signature, public_key, "
    "signing_key_id, chunk_bytes, published_at, published_by"
)
_UNREACHABLE = "The service database cannot be reached; try again shortly."


def _component(row: dict[str, Any]) -> PublishedComponent:
    return PublishedComponent(
        component_id=row["component_id"],
        key=ComponentKey(row["name"], row["platform"]),
        version=Version.parse(row["version"]),
        size_bytes=row["size_bytes"],
        sha256=row["sha256"],
        signature=row["signature"],
        public_key=row["public_key"],
        signing_key_id=row["signing_key_id"],
        chunk_bytes=row["chunk_bytes"],
        published_at=row["published_at"],
        published_by=row["published_by"],
    )


class PostgresComponentStore:
    """The ComponentStore port on PostgreSQL."""

    def __init__(self, database_url: str, pool_size: int = 4) -> None:
        self._pool: AsyncConnectionPool[Connection] = AsyncConnectionPool(
            libpq_dsn(database_url),
            min_size=1,
            max_size=pool_size,
            kwargs={"autocommit": True, "row_factory": dict_row, "connect_timeout": 5},
            open=False,
            timeout=10,
        )
        metrics.track_pool("components", self._pool, metrics.psycopg_usage)

    async def open(self) -> None:
        await self._pool.open(wait=False)

    async def close(self) -> None:
        await self._pool.close()

    async def _run(self, work: Callable[[Connection], Awaitable[T]]) -> T:
        """Run one read; a connection a restart broke is replaced and the read tried once
        more."""
        return await run_on_pool(self._pool, work, _UNREACHABLE)

    async def _rows(self, sql: str, params: tuple[Any, ...]) -> list[dict[str, Any]]:
        async def work(conn: Connection) -> list[dict[str, Any]]:
            return await (await conn.execute(sql, params)).fetchall()

        return await self._run(work)

    async def versions(self, key: ComponentKey) -> list[PublishedComponent]:
        rows = await self._rows(
            f"SELECT {_COLUMNS} FROM components WHERE name = %s AND platform = %s",
            (key.name, key.platform),
        )
        return [_component(row) for row in rows]

    async def listed(self, name: str = "", platform: str = "") -> list[PublishedComponent]:
        rows = await self._rows(
            f"SELECT {_COLUMNS} FROM components WHERE (%s = '' OR name = %s) "
            "AND (%s = '' OR platform = %s)",
            (name, name, platform, platform),
        )
        return [_component(row) for row in rows]

    async def insert(self, component: PublishedComponent, chunks: AsyncIterator[bytes]) -> bool:
        # Not retried: the upload is consumed as it is written.
        try:
            async with self._pool.connection() as conn, conn.transaction():
                inserted = await (
                    await conn.execute(
                        "INSERT INTO components (component_id, name, platform, version, "
                        "version_normal, size_bytes, sha256, signature, public_key, "
                        "signing_key_id, chunk_bytes, published_at, published_by) VALUES "
                        "(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) "
                        "ON CONFLICT (name, platform, version_normal) DO NOTHING "
                        "RETURNING component_id",
                        (
                            component.component_id,
                            component.key.name,
                            component.key.platform,
                            component.version.text,
                            component.version.normal,
                            component.size_bytes,
                            component.sha256,
                            component.signature,
                            component.public_key,
                            component.signing_key_id,
                            component.chunk_bytes,
                            component.published_at,
                            component.published_by,
                        ),
                    )
                ).fetchone()
                if inserted is None:
                    return False
                index = 0
                async for chunk in chunks:
                    await conn.execute(
                        "INSERT INTO component_chunks (component_id, chunk_index, data) "
                        "VALUES (%s, %s, %s)",
                        (component.component_id, index, chunk),
                    )
                    index += 1
        except (psycopg.OperationalError, PoolTimeout) as error:
            raise Unavailable(_UNREACHABLE) from error
        return True

    async def chunk(self, component_id: str, index: int) -> bytes | None:
        rows = await self._rows(
            "SELECT data FROM component_chunks WHERE component_id = %s AND chunk_index = %s",
            (component_id, index),
        )
        return bytes(rows[0]["data"]) if rows else None

    async def probe(self) -> None:
        await self._rows("SELECT 1", ())
