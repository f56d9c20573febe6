"""Sessions, their holds, gateways and service records in PostgreSQL."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, func, insert, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from meterline.kernel.media import ServiceType
from service_manager.domain.sessions import (
    Session,
    SessionStatus,
    TerminationReason,
)
from service_manager.rates import session_rate_from_json, session_rate_to_json
from service_manager.storage.models import gateways, service_records, session_holds, sessions


def _session(row: Any) -> Session:
    return Session(
        session_id=row.session_id,
        account_id=row.account_id,
        service_type=ServiceType(row.service_type),
        endpoint=row.endpoint,
        application_id=row.application_id,
        gateway_id=row.gateway_id,
        rate=session_rate_from_json(row.rate),
        status=SessionStatus(row.status),
        started_at=row.started_at,
        last_update_at=row.last_update_at,
        last_sequence=row.last_sequence,
        used_units=row.used_units,
        granted_units=row.granted_units,
        held_micros=row.held_micros,
        termination_reason=(
            TerminationReason(row.termination_reason) if row.termination_reason else None
        ),
        pending_hold_micros=row.pending_hold_micros,
        client_used_units=row.client_used_units,
        gateway_used_units=row.gateway_used_units,
    )


def _apply_usage_statement(by_account: bool, by_gateway: bool) -> Any:
    statement = update(sessions).where(
        sessions.c.session_id == bindparam("b_session"),
        sessions.c.status == SessionStatus.ACTIVE.value,
        sessions.c.last_sequence < bindparam("b_sequence"),
        sessions.c.client_used_units <= bindparam("b_used"),
    )
    if by_account:
        statement = statement.where(sessions.c.account_id == bindparam("b_account"))
    if by_gateway:
        statement = statement.where(sessions.c.gateway_id == bindparam("b_gateway"))
    return statement.values(
        last_sequence=bindparam("b_sequence"),
        client_used_units=bindparam("b_used"),
        used_units=func.greatest(sessions.c.used_units, bindparam("b_used")),
        last_update_at=bindparam("b_at"),
    ).returning(sessions)


# Built once: the per-update statement is the hot path of every usage stream.
_APPLY_USAGE = {
    (by_account, by_gateway): _apply_usage_statement(by_account, by_gateway)
    for by_account in (False, True)
    for by_gateway in (False, True)
}


class SessionStore:
    async def relax_durability(self, conn: AsyncConnection) -> None:
        await conn.execute(text("SET LOCAL synchronous_commit = off"))

    async def full_durability(self, conn: AsyncConnection) -> None:
        await conn.execute(text("SET LOCAL synchronous_commit = on"))

    async def choose_gateway(
        self, conn: AsyncConnection, service_type: ServiceType
    ) -> tuple[str, str] | None:
        """The enabled gateway for a service type with the fewest active sessions."""
        load = (
            select(sessions.c.gateway_id, func.count().label("active"))
            .where(sessions.c.status == SessionStatus.ACTIVE.value)
            .group_by(sessions.c.gateway_id)
            .subquery()
        )
        row = (
            await conn.execute(
                select(gateways.c.gateway_id, gateways.c.address)
                .outerjoin(load, load.c.gateway_id == gateways.c.gateway_id)
                .where(
                    gateways.c.enabled,
                    (gateways.c.service_types == "*")
                    | func.strpos(
                        "," + gateways.c.service_types + ",", f",{service_type.value},"
                    ).__gt__(0),
                )
                .order_by(func.coalesce(load.c.active, 0), gateways.c.gateway_id)
                .limit(1)
            )
        ).one_or_none()
        return (row.gateway_id, row.address) if row else None

    async def gateway_address(self, conn: AsyncConnection, gateway_id: str) -> str:
        row = (
            await conn.execute(
                select(gateways.c.address).where(gateways.c.gateway_id == gateway_id)
            )
        ).one_or_none()
        return row.address if row else ""

    async def by_request_id(self, conn: AsyncConnection, request_id: str) -> Session | None:
        row = (
            await conn.execute(select(sessions).where(sessions.c.request_id == request_id))
        ).one_or_none()
        return _session(row) if row else None

    async def insert(self, conn: AsyncConnection, session: Session, request_id: str | None) -> None:
        await conn.execute(
            insert(sessions).values(
                session_id=session.session_id,
                account_id=session.account_id,
                service_type=session.service_type.value,
                endpoint=session.endpoint,
                application_id=session.application_id,
                gateway_id=session.gateway_id,
                rate=session_rate_to_json(session.rate),
                status=session.status.value,
                started_at=session.started_at,
                last_update_at=session.last_update_at,
                granted_units=session.granted_units,
                held_micros=session.held_micros,
                pending_hold_micros=session.pending_hold_micros,
                request_id=request_id,
            )
        )

    async def get(
        self, conn: AsyncConnection, session_id: str, lock: bool = False
    ) -> Session | None:
        query = select(sessions).where(sessions.c.session_id == session_id)
        if lock:
            # Every change to a session holds this lock, so a primary and a secondary
            # serving the same session apply its updates one at a time.
            query = query.with_for_update()
        row = (await conn.execute(query)).one_or_none()
        return _session(row) if row else None

    async def apply_usage(
        self,
        conn: AsyncConnection,
        session_id: str,
        sequence: int,
        used_units: int,
        at: datetime,
        account_id: str = "",
        gateway_id: str = "",
    ) -> Session | None:
        """The usual usage update in one statement: applied only to an active session of
        this account (or gateway) when it is newer and does not go backwards; None when
        any of that does not hold (the caller then looks closer, under the row lock)."""
        row = (
            await conn.execute(
                _APPLY_USAGE[(bool(account_id), bool(gateway_id))],
                {
                    "b_session": session_id,
                    "b_sequence": sequence,
                    "b_used": used_units,
                    "b_at": at,
                    "b_account": account_id,
                    "b_gateway": gateway_id,
                },
            )
        ).one_or_none()
        return _session(row) if row else None

    async def save_usage(
        self,
        conn: AsyncConnection,
        session_id: str,
        sequence: int,
        used_units: int,
        at: datetime,
        from_gateway: bool = False,
    ) -> Session:
        """Store a reporter's counter; the session's usage becomes the larger of the two."""
        counter = sessions.c.gateway_used_units if from_gateway else sessions.c.client_used_units
        row = (
            await conn.execute(
                update(sessions)
                .where(sessions.c.session_id == session_id)
                .values(
                    {
                        counter: used_units,
                        sessions.c.last_sequence: sequence,
                        sessions.c.used_units: func.greatest(sessions.c.used_units, used_units),
                        sessions.c.last_update_at: at,
                    }
                )
                .returning(sessions)
            )
        ).one()
        return _session(row)

    async def add_hold(
        self,
        conn: AsyncConnection,
        session_id: str,
        hold_number: int,
        hold_id: str,
        amount: int,
        granted_units: int,
    ) -> None:
        await conn.execute(
            insert(session_holds).values(
                session_id=session_id,
                hold_number=hold_number,
                hold_id=hold_id,
                amount_micros=amount,
                granted_units_after=granted_units,
            )
        )
        await conn.execute(
            update(sessions)
            .where(sessions.c.session_id == session_id)
            .values(
                granted_units=granted_units,
                held_micros=sessions.c.held_micros + amount,
                pending_hold_micros=0,
            )
        )

    async def extend_grant(self, conn: AsyncConnection, session_id: str, granted: int) -> None:
        await conn.execute(
            update(sessions)
            .where(sessions.c.session_id == session_id)
            .values(granted_units=granted, pending_hold_micros=0)
        )

    async def forget_pending_hold(self, conn: AsyncConnection, session_id: str) -> None:
        await conn.execute(
            update(sessions)
            .where(sessions.c.session_id == session_id)
            .values(pending_hold_micros=0)
        )

    async def delete_unstarted(self, conn: AsyncConnection, session_id: str) -> None:
        """Remove a session whose first hold was refused: it never started."""
        await conn.execute(
            sessions.delete().where(
                sessions.c.session_id == session_id, sessions.c.granted_units == 0
            )
        )

    async def hold_count(self, conn: AsyncConnection, session_id: str) -> int:
        return int(
            (
                await conn.execute(
                    select(func.count()).where(session_holds.c.session_id == session_id)
                )
            ).scalar_one()
        )

    async def holds(self, conn: AsyncConnection, session_id: str) -> list[tuple[str, int]]:
        rows = await conn.execute(
            select(session_holds.c.hold_id, session_holds.c.amount_micros)
            .where(session_holds.c.session_id == session_id)
            .order_by(session_holds.c.hold_number)
        )
        return [(row.hold_id, row.amount_micros) for row in rows]

    async def begin_settling(
        self,
        conn: AsyncConnection,
        session_id: str,
        used_units: int,
        reason: TerminationReason,
        at: datetime,
    ) -> None:
        await conn.execute(
            update(sessions)
            .where(sessions.c.session_id == session_id)
            .values(
                status=SessionStatus.SETTLING.value,
                used_units=used_units,
                termination_reason=reason.value,
                last_update_at=at,
            )
        )

    async def finish(self, conn: AsyncConnection, session: Session, ended_at: datetime) -> None:
        """Write the service record and mark the session ended, together."""
        await conn.execute(
            pg_insert(service_records)
            .values(
                session_id=session.session_id,
                account_id=session.account_id,
                service_type=session.service_type.value,
                endpoint=session.endpoint,
                application_id=session.application_id,
                gateway_id=session.gateway_id,
                rate=session_rate_to_json(session.rate),
                started_at=session.started_at,
                ended_at=ended_at,
                used_units=session.used_units,
                billed_units=session.billable_units,
                charged_micros=session.charged_micros,
                termination_reason=(
                    session.termination_reason or TerminationReason.CLIENT_STOP
                ).value,
            )
            .on_conflict_do_nothing(index_elements=["session_id"])
        )
        await conn.execute(
            update(sessions)
            .where(sessions.c.session_id == session.session_id)
            .values(status=SessionStatus.ENDED.value)
        )

    async def record(self, conn: AsyncConnection, session_id: str) -> dict[str, Any] | None:
        row = (
            await conn.execute(
                select(service_records).where(service_records.c.session_id == session_id)
            )
        ).one_or_none()
        return dict(row._mapping) if row else None

    async def claim_idle(self, conn: AsyncConnection, before: datetime, limit: int) -> list[str]:
        """Claim sessions silent since `before` (and settlements a crash left unfinished)
        for settlement: they move to SETTLING with reason LIVENESS_TIMEOUT and a fresh
        last_update_at, in one statement, so another instance's sweep skips them."""
        silent = (
            select(sessions.c.session_id)
            .where(
                sessions.c.status.in_((SessionStatus.ACTIVE.value, SessionStatus.SETTLING.value)),
                sessions.c.last_update_at < before,
            )
            .order_by(sessions.c.last_update_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
            .scalar_subquery()
        )
        rows = await conn.execute(
            update(sessions)
            .where(sessions.c.session_id.in_(silent))
            .values(
                status=SessionStatus.SETTLING.value,
                termination_reason=func.coalesce(
                    sessions.c.termination_reason, TerminationReason.LIVENESS_TIMEOUT.value
                ),
                last_update_at=func.now(),
            )
            .returning(sessions.c.session_id)
        )
        return [row.session_id for row in rows]
