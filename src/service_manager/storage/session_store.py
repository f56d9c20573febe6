"""Sessions, their holds and service records in PostgreSQL, through psycopg 3
and a pool of connections (the tables are SQLAlchemy's in models.py, for Alembic). Every
write of an owner carries the session's status and epoch (a Fence) and is refused when
they no longer match. Connections a PostgreSQL restart broke are dropped and the work is
tried once more; a database that cannot be reached is Unavailable."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any, TypeVar

import psycopg
from psycopg.rows import dict_row, tuple_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from meterline.kernel import metrics
from meterline.kernel.db import libpq_dsn
from meterline.kernel.media import ServiceType
from meterline.kernel.pg_pool import IDLE_SECONDS, run_on_pool
from service_manager.app.ports import Fence, Ownership, UsageWrite
from service_manager.domain.notices import GatewayNotice
from service_manager.domain.records import ServiceRecord
from service_manager.domain.sessions import Session, SessionStatus, TerminationReason
from service_manager.rates import session_rate_from_json, session_rate_to_json
from service_manager.storage.notice_log import APPEND_SQL, append_params

log = logging.getLogger(__name__)
T = TypeVar("T")
Connection = psycopg.AsyncConnection[dict[str, Any]]

_SESSION_COLUMNS = (
    "session_id, account_id, service_type, endpoint, application_id, gateway_id, rate, "
    "status, started_at, last_update_at, last_sequence, used_units, client_used_units, "
    "gateway_used_units, granted_units, held_micros, pending_hold_micros, termination_reason, "
    "owner_id, owner_epoch, hold_count, pending_hold_number, pending_granted_units"
)


def _rate_json(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else dict(json.loads(value))


def _session(row: dict[str, Any]) -> Session:
    return Session(
        session_id=row["session_id"],
        account_id=row["account_id"],
        service_type=ServiceType(row["service_type"]),
        endpoint=row["endpoint"],
        application_id=row["application_id"],
        gateway_id=row["gateway_id"],
        rate=session_rate_from_json(_rate_json(row["rate"])),
        status=SessionStatus(row["status"]),
        started_at=row["started_at"],
        last_update_at=row["last_update_at"],
        last_sequence=row["last_sequence"],
        used_units=row["used_units"],
        granted_units=row["granted_units"],
        held_micros=row["held_micros"],
        termination_reason=(
            TerminationReason(row["termination_reason"]) if row["termination_reason"] else None
        ),
        pending_hold_micros=row["pending_hold_micros"],
        client_used_units=row["client_used_units"],
        gateway_used_units=row["gateway_used_units"],
        owner_epoch=row["owner_epoch"],
        hold_count=row["hold_count"],
        # A pending amount without a number is a first hold from before migration 0004.
        pending_hold_number=row["pending_hold_number"] or (1 if row["pending_hold_micros"] else 0),
        pending_granted_units=row["pending_granted_units"],
        owner_id=row["owner_id"],
    )


def _record(row: dict[str, Any]) -> ServiceRecord:
    return ServiceRecord(
        session_id=row["session_id"],
        account_id=row["account_id"],
        service_type=ServiceType(row["service_type"]),
        endpoint=row["endpoint"],
        application_id=row["application_id"],
        gateway_id=row["gateway_id"],
        rate=session_rate_from_json(_rate_json(row["rate"])),
        started_at=row["started_at"],
        ended_at=row["ended_at"],
        used_units=row["used_units"],
        billed_units=row["billed_units"],
        charged_micros=row["charged_micros"],
        termination_reason=TerminationReason(row["termination_reason"]),
        unbilled_units=row["unbilled_units"],
        unbilled_reason=row["unbilled_reason"],
        usage_discrepancy=row["usage_discrepancy"],
        client_used_units=row["client_used_units"],
        gateway_used_units=row["gateway_used_units"],
        settlement_difference_micros=row["settlement_difference_micros"],
        settlement_note=row["settlement_note"],
    )


class PostgresSessionStore:
    """The SessionStore port on PostgreSQL."""

    def __init__(self, database_url: str, pool_size: int = 10) -> None:
        dsn = libpq_dsn(database_url)
        self._pool: AsyncConnectionPool[Connection] = AsyncConnectionPool(
            dsn,
            min_size=2,
            max_size=pool_size,
            kwargs={"autocommit": True, "row_factory": dict_row, "connect_timeout": 5},
            open=False,
            timeout=10,
            max_idle=IDLE_SECONDS,
        )
        # Usage batches need not wait for the WAL flush: usage is cumulative, and the
        # client's next update repairs a batch lost in a crash of the database itself.
        self._usage_pool: AsyncConnectionPool[Connection] = AsyncConnectionPool(
            dsn,
            min_size=1,
            max_size=2,
            kwargs={
                "autocommit": True,
                "row_factory": dict_row,
                "connect_timeout": 5,
                "options": "-c synchronous_commit=off",
            },
            open=False,
            timeout=10,
            max_idle=IDLE_SECONDS,
        )
        metrics.track_pool("sessions", self._pool, metrics.psycopg_usage)
        metrics.track_pool("usage batches", self._usage_pool, metrics.psycopg_usage)

    async def open(self) -> None:
        await self._pool.open(wait=False)
        await self._usage_pool.open(wait=False)

    async def close(self) -> None:
        await self._usage_pool.close()
        await self._pool.close()

    async def _run(
        self,
        work: Callable[[Connection], Awaitable[T]],
        pool: AsyncConnectionPool[Connection] | None = None,
    ) -> T:
        """Run work on a pooled connection. A connection a restart broke is thrown away
        and the work tried once more on a checked one (every piece of work here is one
        transaction, so a failed one left nothing)."""
        return await run_on_pool(
            pool or self._pool, work, "The service database cannot be reached; try again shortly."
        )

    async def _one(self, sql: str, params: Sequence[Any] | dict[str, Any]) -> dict[str, Any] | None:
        async def work(conn: Connection) -> dict[str, Any] | None:
            return await (await conn.execute(sql, params)).fetchone()

        return await self._run(work)

    # -- starting ------------------------------------------------------------------------

    async def insert_new(self, session: Session, request_id: str | None) -> bool:
        row = await self._one(
            "INSERT INTO sessions (session_id, account_id, service_type, endpoint, "
            "application_id, gateway_id, rate, status, started_at, last_update_at, "
            "granted_units, held_micros, pending_hold_micros, pending_hold_number, "
            "pending_granted_units, owner_id, owner_epoch, request_id) VALUES "
            "(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) "
            "ON CONFLICT (request_id) DO NOTHING RETURNING session_id",
            (
                session.session_id,
                session.account_id,
                session.service_type.value,
                session.endpoint,
                session.application_id,
                session.gateway_id,
                Jsonb(session_rate_to_json(session.rate)),
                session.status.value,
                session.started_at,
                session.last_update_at,
                session.granted_units,
                session.held_micros,
                session.pending_hold_micros,
                session.pending_hold_number,
                session.pending_granted_units,
                session.owner_id,
                session.owner_epoch,
                request_id,
            ),
        )
        return row is not None

    async def by_request_id(self, request_id: str) -> Session | None:
        row = await self._one(
            f"SELECT {_SESSION_COLUMNS} FROM sessions WHERE request_id = %s", (request_id,)
        )
        return _session(row) if row else None

    async def get(self, session_id: str) -> Session | None:
        row = await self._one(
            f"SELECT {_SESSION_COLUMNS} FROM sessions WHERE session_id = %s", (session_id,)
        )
        return _session(row) if row else None

    async def get_many(self, session_ids: Sequence[str]) -> dict[str, Session]:
        return await self._sessions_of(
            f"SELECT {_SESSION_COLUMNS} FROM sessions WHERE session_id = ANY(%b::text[])",
            (list(session_ids),),
        )

    async def _sessions_of(self, sql: str, params: Sequence[Any]) -> dict[str, Session]:
        async def work(conn: Connection) -> list[dict[str, Any]]:
            return await (await conn.execute(sql, params)).fetchall()

        return {row["session_id"]: _session(row) for row in await self._run(work)}

    async def delete_unstarted(self, session_id: str) -> None:
        await self._one(
            "DELETE FROM sessions WHERE session_id = %s AND hold_count = 0 RETURNING session_id",
            (session_id,),
        )

    # -- owning and metering ---------------------------------------------------------------

    async def take_over(self, session_id: str, owner: str) -> Session | None:
        return (await self.take_over_many([session_id], owner)).get(session_id)

    async def take_over_many(self, session_ids: Sequence[str], owner: str) -> dict[str, Session]:
        return await self._sessions_of(
            "UPDATE sessions SET owner_epoch = owner_epoch + 1, owner_id = %s "
            "WHERE session_id = ANY(%b::text[]) AND status = 'ACTIVE' "
            f"RETURNING {_SESSION_COLUMNS}",
            (owner, list(session_ids)),
        )

    async def save_usage(self, writes: Sequence[UsageWrite]) -> set[str]:
        if not writes:
            return set()

        async def work(conn: Connection) -> set[str]:
            cursor = conn.cursor(row_factory=tuple_row)  # one column: no dict per row
            await cursor.execute(
                "UPDATE sessions AS s SET "
                "last_sequence = greatest(s.last_sequence, v.last_sequence), "
                "client_used_units = greatest(s.client_used_units, v.client_used), "
                "gateway_used_units = greatest(s.gateway_used_units, v.gateway_used), "
                "used_units = greatest(s.used_units, v.used), "
                "last_update_at = greatest(s.last_update_at, v.at) "
                # Binary parameters: the text form of an array has psycopg quote every
                # element through a regex, most of the CPU a batch costs.
                "FROM unnest(%b::text[], %b::bigint[], %b::bigint[], %b::bigint[], "
                "%b::bigint[], %b::bigint[], %b::timestamptz[]) "
                "AS v(session_id, epoch, last_sequence, client_used, gateway_used, used, at) "
                "WHERE s.session_id = v.session_id AND s.owner_epoch = v.epoch "
                "AND s.status = 'ACTIVE' RETURNING s.session_id",
                (
                    [w.session_id for w in writes],
                    [w.epoch for w in writes],
                    [w.last_sequence for w in writes],
                    [w.client_used_units for w in writes],
                    [w.gateway_used_units for w in writes],
                    [w.used_units for w in writes],
                    [w.last_update_at for w in writes],
                ),
            )
            return {row[0] for row in await cursor.fetchall()}

        return await self._run(work, self._usage_pool)

    async def ownership(self, session_ids: Sequence[str]) -> dict[str, Ownership]:
        async def work(conn: Connection) -> list[dict[str, Any]]:
            cursor = await conn.execute(
                "SELECT session_id, owner_epoch, status, gateway_used_units FROM sessions "
                "WHERE session_id = ANY(%s)",
                (list(session_ids),),
            )
            return await cursor.fetchall()

        return {
            row["session_id"]: Ownership(
                row["owner_epoch"], SessionStatus(row["status"]), row["gateway_used_units"]
            )
            for row in await self._run(work)
        }

    # -- holds -----------------------------------------------------------------------------

    async def mark_pending_hold(
        self, session_id: str, fence: Fence, number: int, amount: int, granted_after: int
    ) -> bool:
        # Synchronous commit (the default): the trace must outlive a crash of the database
        # before the hold is asked for.
        row = await self._one(
            "UPDATE sessions SET pending_hold_number = %s, pending_hold_micros = %s, "
            "pending_granted_units = %s WHERE session_id = %s AND status = %s "
            "AND owner_epoch = %s AND hold_count = %s RETURNING session_id",
            (
                number,
                amount,
                granted_after,
                session_id,
                fence.status.value,
                fence.epoch,
                number - 1,
            ),
        )
        return row is not None

    async def record_hold(
        self,
        session_id: str,
        fence: Fence,
        number: int,
        hold_id: str,
        amount: int,
        granted_after: int,
    ) -> Session | None:
        # One statement (one round trip, its own transaction): lock the session if this
        # fence still holds it, add the hold unless it is already counted, and clear the
        # pending one.
        row = await self._one(
            "WITH current AS (SELECT hold_count FROM sessions WHERE session_id = %(sid)s "
            "AND status = %(status)s AND owner_epoch = %(epoch)s FOR UPDATE), "
            "grow AS (SELECT %(hold_id)s <> '' AND hold_count < %(number)s AS adds "
            "FROM current), "
            "added AS (INSERT INTO session_holds (session_id, hold_number, hold_id, "
            "amount_micros, granted_units_after) SELECT %(sid)s, %(number)s, %(hold_id)s, "
            "%(amount)s, %(granted)s FROM grow WHERE adds ON CONFLICT DO NOTHING) "
            "UPDATE sessions SET "
            "held_micros = held_micros + CASE WHEN grow.adds THEN %(amount)s ELSE 0 END, "
            "hold_count = CASE WHEN grow.adds THEN %(number)s ELSE hold_count END, "
            "granted_units = greatest(granted_units, %(granted)s), pending_hold_number = 0, "
            "pending_hold_micros = 0, pending_granted_units = 0 "
            f"FROM grow WHERE session_id = %(sid)s RETURNING {_SESSION_COLUMNS}",
            {
                "sid": session_id,
                "status": fence.status.value,
                "epoch": fence.epoch,
                "hold_id": hold_id,
                "number": number,
                "amount": amount,
                "granted": granted_after,
            },
        )
        return None if row is None else _session(row)

    async def clear_pending_hold(self, session_id: str, fence: Fence) -> bool:
        row = await self._one(
            "UPDATE sessions SET pending_hold_number = 0, pending_hold_micros = 0, "
            "pending_granted_units = 0 WHERE session_id = %s AND status = %s "
            "AND owner_epoch = %s RETURNING session_id",
            (session_id, fence.status.value, fence.epoch),
        )
        return row is not None

    async def holds(self, session_id: str) -> list[tuple[str, int]]:
        async def work(conn: Connection) -> list[dict[str, Any]]:
            cursor = await conn.execute(
                "SELECT hold_id, amount_micros FROM session_holds WHERE session_id = %s "
                "ORDER BY hold_number",
                (session_id,),
            )
            return await cursor.fetchall()

        return [(row["hold_id"], row["amount_micros"]) for row in await self._run(work)]

    # -- settling ----------------------------------------------------------------------------

    async def claim_settlement(
        self,
        session_id: str,
        final_used: int,
        reason: TerminationReason,
        client_final: int = 0,
        gateway_final: int = 0,
    ) -> Session | None:
        row = await self._one(
            "UPDATE sessions SET status = 'SETTLING', used_units = greatest(used_units, %s), "
            "client_used_units = greatest(client_used_units, %s), "
            "gateway_used_units = greatest(gateway_used_units, %s), "
            "termination_reason = %s, owner_epoch = owner_epoch + 1, last_update_at = now() "
            f"WHERE session_id = %s AND status = 'ACTIVE' RETURNING {_SESSION_COLUMNS}",
            (final_used, client_final, gateway_final, reason.value, session_id),
        )
        return _session(row) if row else None

    async def claim_stale_settlement(self, session_id: str, before: datetime) -> Session | None:
        row = await self._one(
            "UPDATE sessions SET owner_epoch = owner_epoch + 1, last_update_at = now(), "
            "termination_reason = coalesce(termination_reason, 'LIVENESS_TIMEOUT') "
            "WHERE session_id = %s AND status = 'SETTLING' AND last_update_at < %s "
            f"RETURNING {_SESSION_COLUMNS}",
            (session_id, before),
        )
        return _session(row) if row else None

    async def finish(
        self, record: ServiceRecord, fence: Fence, notice: GatewayNotice
    ) -> ServiceRecord:
        async def work(conn: Connection) -> ServiceRecord:
            async with conn.transaction():
                inserted = await conn.execute(
                    "INSERT INTO service_records (session_id, account_id, service_type, "
                    "endpoint, application_id, gateway_id, rate, started_at, ended_at, "
                    "used_units, billed_units, charged_micros, termination_reason, "
                    "unbilled_units, unbilled_reason, usage_discrepancy, client_used_units, "
                    "gateway_used_units, settlement_difference_micros, settlement_note) "
                    "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, "
                    "%s, %s, %s, %s) ON CONFLICT (session_id) DO NOTHING "
                    "RETURNING session_id",
                    (
                        record.session_id,
                        record.account_id,
                        record.service_type.value,
                        record.endpoint,
                        record.application_id,
                        record.gateway_id,
                        Jsonb(session_rate_to_json(record.rate)),
                        record.started_at,
                        record.ended_at,
                        record.used_units,
                        record.billed_units,
                        record.charged_micros,
                        record.termination_reason.value,
                        record.unbilled_units,
                        record.unbilled_reason,
                        record.usage_discrepancy,
                        record.client_used_units,
                        record.gateway_used_units,
                        record.settlement_difference_micros,
                        record.settlement_note,
                    ),
                )
                if await inserted.fetchone() is not None:
                    # The gateway's ENDED notice commits with the record, or neither does.
                    await conn.execute(APPEND_SQL, append_params(notice))
                await conn.execute(
                    "UPDATE sessions SET status = 'ENDED' WHERE session_id = %s "
                    "AND status = 'SETTLING'",
                    (record.session_id,),
                )
                row = await (
                    await conn.execute(
                        "SELECT * FROM service_records WHERE session_id = %s",
                        (record.session_id,),
                    )
                ).fetchone()
                assert row is not None
                return _record(row)

        return await self._run(work)

    async def record(self, session_id: str) -> ServiceRecord | None:
        row = await self._one("SELECT * FROM service_records WHERE session_id = %s", (session_id,))
        return _record(row) if row else None

    async def claim_idle(
        self, silent_before: datetime, settling_before: datetime, limit: int
    ) -> list[str]:
        async def work(conn: Connection) -> list[dict[str, Any]]:
            cursor = await conn.execute(
                "UPDATE sessions SET status = 'SETTLING', "
                "termination_reason = coalesce(termination_reason, 'LIVENESS_TIMEOUT'), "
                "last_update_at = now(), owner_epoch = owner_epoch + 1 "
                "WHERE session_id IN (SELECT session_id FROM sessions WHERE "
                "(status = 'ACTIVE' AND last_update_at < %s) OR "
                "(status = 'SETTLING' AND last_update_at < %s) "
                "ORDER BY last_update_at LIMIT %s FOR UPDATE SKIP LOCKED) "
                "RETURNING session_id",
                (silent_before, settling_before, limit),
            )
            return await cursor.fetchall()

        return [row["session_id"] for row in await self._run(work)]

    async def active_sessions(self) -> list[Session]:
        async def work(conn: Connection) -> list[dict[str, Any]]:
            cursor = await conn.execute(
                f"SELECT {_SESSION_COLUMNS} FROM sessions WHERE status = 'ACTIVE'"
            )
            return await cursor.fetchall()

        return [_session(row) for row in await self._run(work)]

    async def active_of_account(self, account_id: str) -> list[Session]:
        async def work(conn: Connection) -> list[dict[str, Any]]:
            cursor = await conn.execute(
                f"SELECT {_SESSION_COLUMNS} FROM sessions "
                "WHERE status = 'ACTIVE' AND account_id = %s ORDER BY started_at",
                (account_id,),
            )
            return await cursor.fetchall()

        return [_session(row) for row in await self._run(work)]

    async def probe(self) -> None:
        """Raises Unavailable if the database cannot be reached (for health)."""

        async def work(conn: Connection) -> None:
            await conn.execute("SELECT 1")

        await self._run(work)
