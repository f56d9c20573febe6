"""The gateway registry and the subscriber identities in the service database, through a
small pool of their own (kernel/pg_pool.py). The tables are in models.py."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from meterline.kernel.media import ServiceType
from meterline.kernel.pg_pool import Connection, PooledDatabase
from service_manager.domain.gateways import Gateway, GatewayChange, GatewayState
from service_manager.domain.identities import AccountIdentity, Identity, IdentityKind

_COLUMN_NAMES = (
    "gateway_id",
    "address",
    "service_types",
    "state",
    "region",
    "capacity",
    "skip_liveness_check",
    "last_seen_at",
)
_GATEWAY_COLUMNS = ", ".join(_COLUMN_NAMES)
_JOINED_COLUMNS = ", ".join(f"g.{name}" for name in _COLUMN_NAMES)


def service_types_to_text(types: frozenset[ServiceType] | None) -> str:
    return "*" if types is None else ",".join(sorted(kind.value for kind in types))


def service_types_from_text(text: str) -> frozenset[ServiceType] | None:
    text = text.strip()
    if text == "*":
        return None
    return frozenset(
        ServiceType(name.strip())
        for name in text.split(",")
        if name.strip() in ServiceType.__members__
    )


def gateway_from_row(row: dict[str, Any], active: int = 0) -> Gateway:
    return Gateway(
        gateway_id=row["gateway_id"],
        address=row["address"],
        service_types=service_types_from_text(row["service_types"]),
        state=GatewayState(row["state"]),
        region=row["region"],
        capacity=row["capacity"],
        skip_liveness_check=row["skip_liveness_check"],
        last_seen_at=row["last_seen_at"],
        active_sessions=active,
    )


async def _one(conn: Connection, sql: str, params: Sequence[Any]) -> dict[str, Any] | None:
    return await (await conn.execute(sql, params)).fetchone()


class PostgresGatewayRegistry:
    """The GatewayRegistry port on PostgreSQL."""

    def __init__(self, database: PooledDatabase) -> None:
        self._db = database

    async def gateways(self) -> list[Gateway]:
        async def work(conn: Connection) -> list[dict[str, Any]]:
            cursor = await conn.execute(
                f"SELECT {_JOINED_COLUMNS}, coalesce(l.active, 0) AS active "
                "FROM gateways g LEFT JOIN (SELECT gateway_id, count(*) AS active FROM sessions "
                "WHERE status = 'ACTIVE' GROUP BY gateway_id) l ON l.gateway_id = g.gateway_id "
                "ORDER BY g.gateway_id"
            )
            return await cursor.fetchall()

        return [gateway_from_row(row, int(row["active"])) for row in await self._db.run(work)]

    async def gateway(self, gateway_id: str) -> Gateway | None:
        async def work(conn: Connection) -> dict[str, Any] | None:
            return await _one(
                conn,
                f"SELECT {_GATEWAY_COLUMNS} FROM gateways WHERE gateway_id = %s",
                (gateway_id,),
            )

        row = await self._db.run(work)
        return gateway_from_row(row) if row else None

    async def register(self, gateway: Gateway) -> tuple[Gateway, bool]:
        async def work(conn: Connection) -> tuple[dict[str, Any], bool]:
            row = await _one(
                conn,
                "INSERT INTO gateways (gateway_id, address, service_types, state, region, "
                "capacity, skip_liveness_check) VALUES (%s, %s, %s, %s, %s, %s, %s) "
                f"ON CONFLICT (gateway_id) DO NOTHING RETURNING {_GATEWAY_COLUMNS}",
                (
                    gateway.gateway_id,
                    gateway.address,
                    service_types_to_text(gateway.service_types),
                    gateway.state.value,
                    gateway.region,
                    gateway.capacity,
                    gateway.skip_liveness_check,
                ),
            )
            if row is not None:
                return row, True
            found = await _one(
                conn,
                f"SELECT {_GATEWAY_COLUMNS} FROM gateways WHERE gateway_id = %s",
                (gateway.gateway_id,),
            )
            assert found is not None  # rows are never deleted
            return found, False

        row, created = await self._db.run(work)
        return gateway_from_row(row), created

    async def update(self, gateway_id: str, change: GatewayChange) -> Gateway | None:
        async def work(conn: Connection) -> dict[str, Any] | None:
            async with conn.transaction():
                row = await _one(
                    conn,
                    f"SELECT {_GATEWAY_COLUMNS} FROM gateways WHERE gateway_id = %s FOR UPDATE",
                    (gateway_id,),
                )
                if row is None:
                    return None
                changed = change.applied_to(gateway_from_row(row))
                return await _one(
                    conn,
                    "UPDATE gateways SET address = %s, service_types = %s, state = %s, "
                    "region = %s, capacity = %s, skip_liveness_check = %s "
                    f"WHERE gateway_id = %s RETURNING {_GATEWAY_COLUMNS}",
                    (
                        changed.address,
                        service_types_to_text(changed.service_types),
                        changed.state.value,
                        changed.region,
                        changed.capacity,
                        changed.skip_liveness_check,
                        gateway_id,
                    ),
                )

        row = await self._db.run(work)
        return gateway_from_row(row) if row else None

    async def seen(self, gateway_ids: Sequence[str], at: datetime) -> None:
        async def work(conn: Connection) -> None:
            await conn.execute(
                "UPDATE gateways SET last_seen_at = greatest(coalesce(last_seen_at, %s), %s) "
                "WHERE gateway_id = ANY(%s)",
                (at, at, list(gateway_ids)),
            )

        await self._db.run(work)


def _identity(row: dict[str, Any]) -> AccountIdentity:
    return AccountIdentity(
        account_id=row["account_id"],
        identity=Identity(IdentityKind(row["kind"]), row["value"]),
        created_at=row["created_at"],
    )


class PostgresIdentities:
    """The Identities port on PostgreSQL."""

    def __init__(self, database: PooledDatabase) -> None:
        self._db = database

    async def add(self, account_id: str, identity: Identity) -> AccountIdentity:
        async def work(conn: Connection) -> dict[str, Any]:
            row = await _one(
                conn,
                "INSERT INTO account_identities (kind, value, account_id) VALUES (%s, %s, %s) "
                "ON CONFLICT (kind, value) DO NOTHING RETURNING kind, value, account_id, "
                "created_at",
                (identity.kind.value, identity.value, account_id),
            )
            if row is None:
                row = await _one(
                    conn,
                    "SELECT kind, value, account_id, created_at FROM account_identities "
                    "WHERE kind = %s AND value = %s",
                    (identity.kind.value, identity.value),
                )
            assert row is not None  # removed between the two statements: very unlikely
            return row

        return _identity(await self._db.run(work))

    async def remove(self, account_id: str, identity: Identity) -> bool:
        async def work(conn: Connection) -> dict[str, Any] | None:
            return await _one(
                conn,
                "DELETE FROM account_identities WHERE kind = %s AND value = %s "
                "AND account_id = %s RETURNING kind",
                (identity.kind.value, identity.value, account_id),
            )

        return await self._db.run(work) is not None

    async def of_account(self, account_id: str) -> list[AccountIdentity]:
        async def work(conn: Connection) -> list[dict[str, Any]]:
            cursor = await conn.execute(
                "SELECT kind, value, account_id, created_at FROM account_identities "
                "WHERE account_id = %s ORDER BY kind, value",
                (account_id,),
            )
            return await cursor.fetchall()

        return [_identity(row) for row in await self._db.run(work)]

    async def resolve(self, identity: Identity) -> str | None:
        async def work(conn: Connection) -> dict[str, Any] | None:
            return await _one(
                conn,
                "SELECT account_id FROM account_identities WHERE kind = %s AND value = %s",
                (identity.kind.value, identity.value),
            )

        row = await self._db.run(work)
        return str(row["account_id"]) if row else None
