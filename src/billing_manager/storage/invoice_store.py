"""Bills in the account database (migration 0007): what a period's bill is built from,
its gapless number, and the issued bill with its lines, charges, sessions and movements.
Each method runs on a connection inside the caller's transaction."""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, case, func, insert, or_, select, text
from sqlalchemy.ext.asyncio import AsyncConnection

from billing_manager.domain.invoices import (
    BillCharge,
    BillContent,
    BillMovement,
    BillSession,
    Invoice,
    PeriodTransaction,
    UsageSummary,
    invoice_number,
)
from billing_manager.domain.ledger import Account, InvoiceLine, LedgerAccount, TransactionKind
from billing_manager.storage.ledger_store import new_id
from billing_manager.storage.models import (
    capture_usage,
    invoice_charges,
    invoice_lines,
    invoice_movements,
    invoice_sessions,
    invoices,
    ledger_entries,
    ledger_transactions,
)

_CUSTOMER = (LedgerAccount.CUSTOMER_AVAILABLE.value, LedgerAccount.CUSTOMER_HELD.value)

# The year's counter row, locked until the bill's transaction ends; the year is the
# year of issue (the transaction's clock, in UTC).
_NEXT_NUMBER = text(
    """
    INSERT INTO invoice_counters AS c (year, last_number)
    VALUES (extract(year FROM now() AT TIME ZONE 'UTC')::int, 1)
    ON CONFLICT (year) DO UPDATE SET last_number = c.last_number + 1
    RETURNING year, last_number
    """
)


_USAGE_COLUMNS = (
    "session_id",
    "service_type",
    "endpoint",
    "application_id",
    "units",
    "unit",
    "start_time",
    "end_time",
    "charged_micros",
)


def _micros(value: timedelta) -> int:
    return (value.days * 86_400 + value.seconds) * 1_000_000 + value.microseconds


class InvoiceStore:
    async def balance_before(self, conn: AsyncConnection, account_id: str, moment: datetime) -> int:
        """The account's balance from its entries written before `moment`."""
        total = await conn.scalar(
            select(func.coalesce(func.sum(ledger_entries.c.amount_micros), 0)).where(
                ledger_entries.c.account_id == account_id,
                ledger_entries.c.ledger_account.in_(_CUSTOMER),
                ledger_entries.c.created_at < moment,
            )
        )
        return int(total or 0)

    async def period_transactions(
        self, conn: AsyncConnection, account_id: str, start: datetime, end: datetime
    ) -> list[PeriodTransaction]:
        """The account's transactions of [start, end), oldest first, each with its effect
        on the balance, its revenue and, for a capture, its hold's usage summary."""
        customer = func.coalesce(
            func.sum(
                case(
                    (
                        ledger_entries.c.ledger_account.in_(_CUSTOMER),
                        ledger_entries.c.amount_micros,
                    ),
                    else_=0,
                )
            ),
            0,
        )
        revenue = func.coalesce(
            func.sum(
                case(
                    (
                        ledger_entries.c.ledger_account == LedgerAccount.REVENUE.value,
                        ledger_entries.c.amount_micros,
                    ),
                    else_=0,
                )
            ),
            0,
        )
        t = ledger_transactions
        rows = await conn.execute(
            select(
                t.c.transaction_id,
                t.c.kind,
                t.c.created_at,
                t.c.hold_id,
                t.c.reference,
                t.c.idempotency_key,
                customer.label("customer_micros"),
                revenue.label("revenue_micros"),
                *(capture_usage.c[name] for name in _USAGE_COLUMNS),
            )
            .join(ledger_entries, ledger_entries.c.transaction_id == t.c.transaction_id)
            .outerjoin(
                capture_usage,
                and_(
                    capture_usage.c.hold_id == t.c.hold_id,
                    t.c.kind == TransactionKind.CAPTURE.value,
                ),
            )
            .where(t.c.account_id == account_id, t.c.created_at >= start, t.c.created_at < end)
            # Both keys are primary keys: the other columns follow from them.
            .group_by(t.c.transaction_id, capture_usage.c.hold_id)
            .order_by(t.c.created_at, t.c.transaction_id)
        )
        return [
            PeriodTransaction(
                transaction_id=row.transaction_id,
                kind=TransactionKind(row.kind),
                created_at=row.created_at,
                customer_micros=int(row.customer_micros),
                revenue_micros=int(row.revenue_micros),
                hold_id=row.hold_id or "",
                reference=row.reference or "",
                idempotency_key=row.idempotency_key,
                usage=_usage(row) if row.session_id is not None else None,
            )
            for row in rows
        ]

    async def next_number(self, conn: AsyncConnection) -> str:
        row = (await conn.execute(_NEXT_NUMBER)).one()
        return invoice_number(row.year, row.last_number)

    async def insert(
        self,
        conn: AsyncConnection,
        account: Account,
        start: datetime,
        end: datetime,
        content: BillContent,
        key: str,
        fingerprint: str,
    ) -> Invoice:
        invoice_id = new_id("inv")
        number = await self.next_number(conn)
        await conn.execute(
            insert(invoices).values(
                invoice_id=invoice_id,
                number=number,
                account_id=account.account_id,
                account_name=account.display_name,
                period_start=start,
                period_end=end,
                currency=account.currency,
                total_micros=content.captured_micros,
                opening_balance_micros=content.opening_balance_micros,
                funded_micros=content.funded_micros,
                adjusted_micros=content.adjusted_micros,
                refunded_micros=content.refunded_micros,
                closing_balance_micros=content.closing_balance_micros,
                idempotency_key=key,
                fingerprint=fingerprint,
            )
        )
        if content.lines:
            await conn.execute(
                insert(invoice_lines),
                [
                    {
                        "invoice_id": invoice_id,
                        "line_number": number,
                        "transaction_id": line.transaction_id,
                        "reference": line.reference,
                        "amount_micros": line.amount_micros,
                        "captured_at": line.captured_at,
                    }
                    for number, line in enumerate(content.lines, start=1)
                ],
            )
        if content.charges:
            await conn.execute(
                insert(invoice_charges),
                [
                    {
                        "invoice_id": invoice_id,
                        "charge_number": position,
                        "service_type": charge.service_type,
                        "application_id": charge.application_id,
                        "unit": charge.unit,
                        "units": charge.units,
                        "amount_micros": charge.amount_micros,
                    }
                    for position, charge in enumerate(content.charges, start=1)
                ],
            )
            await conn.execute(
                insert(invoice_sessions),
                [
                    {
                        "invoice_id": invoice_id,
                        "charge_number": position,
                        "session_number": place,
                        "session_id": session.session_id,
                        "start_time": session.start_time,
                        "endpoint": session.endpoint,
                        "duration_micros": _micros(session.duration),
                        "units": session.units,
                        "amount_micros": session.amount_micros,
                    }
                    for position, charge in enumerate(content.charges, start=1)
                    for place, session in enumerate(charge.sessions, start=1)
                ],
            )
        if content.movements:
            await conn.execute(
                insert(invoice_movements),
                [
                    {
                        "invoice_id": invoice_id,
                        "movement_number": position,
                        "kind": movement.kind.value,
                        "amount_micros": movement.amount_micros,
                        "created_at": movement.created_at,
                        "description": movement.description,
                        "transaction_id": movement.transaction_id,
                    }
                    for position, movement in enumerate(content.movements, start=1)
                ],
            )
        found = await self.by_id(conn, invoice_id)
        assert found is not None
        return found

    async def by_id(self, conn: AsyncConnection, invoice_id: str) -> Invoice | None:
        """The bill with this id or this number."""
        column = invoices.c.number if invoice_id.startswith("INV-") else invoices.c.invoice_id
        found = await self._load(conn, select(invoices).where(column == invoice_id))
        return found[0] if found else None

    async def by_key(self, conn: AsyncConnection, key: str) -> tuple[Invoice, str] | None:
        """The bill made with this idempotency key, and its request's fingerprint."""
        fingerprint = await conn.scalar(
            select(invoices.c.fingerprint).where(invoices.c.idempotency_key == key)
        )
        if fingerprint is None:
            return None
        found = await self._load(conn, select(invoices).where(invoices.c.idempotency_key == key))
        return found[0], fingerprint

    async def by_period(
        self, conn: AsyncConnection, account_id: str, start: datetime, end: datetime
    ) -> Invoice | None:
        """The bill already issued for the account and period (the first, if bills made
        before one-per-period repeat it)."""
        found = await self._load(
            conn,
            select(invoices)
            .where(
                invoices.c.account_id == account_id,
                invoices.c.period_start == start,
                invoices.c.period_end == end,
            )
            .order_by(invoices.c.created_at, invoices.c.invoice_id)
            .limit(1),
        )
        return found[0] if found else None

    async def overlapping(
        self, conn: AsyncConnection, account_id: str, start: datetime, end: datetime
    ) -> str | None:
        """The number of a bill of the account whose period overlaps [start, end), if
        any (the bill of exactly that period is `by_period`'s)."""
        found = await conn.scalar(
            select(invoices.c.number)
            .where(
                invoices.c.account_id == account_id,
                invoices.c.period_start < end,
                invoices.c.period_end > start,
            )
            .order_by(invoices.c.period_start)
            .limit(1)
        )
        return str(found) if found is not None else None

    async def page(
        self,
        conn: AsyncConnection,
        account_id: str,
        before: tuple[datetime, str] | None,
        limit: int,
    ) -> list[Invoice]:
        """The account's bills newest first, after (older than) `before`, the
        (created_at, invoice_id) of the last bill of the previous page."""
        query = select(invoices).where(invoices.c.account_id == account_id)
        if before is not None:
            created, invoice_id = before
            query = query.where(
                or_(
                    invoices.c.created_at < created,
                    and_(invoices.c.created_at == created, invoices.c.invoice_id < invoice_id),
                )
            )
        return await self._load(
            conn,
            query.order_by(invoices.c.created_at.desc(), invoices.c.invoice_id.desc()).limit(limit),
        )

    async def _load(self, conn: AsyncConnection, query: Any) -> list[Invoice]:
        """The bills the query selects, in its order, each with everything it holds (one
        query per child table for all of them)."""
        rows = list(await conn.execute(query))
        if not rows:
            return []
        ids = [row.invoice_id for row in rows]
        lines: dict[str, list[InvoiceLine]] = defaultdict(list)
        for line in await conn.execute(
            select(invoice_lines)
            .where(invoice_lines.c.invoice_id.in_(ids))
            .order_by(invoice_lines.c.invoice_id, invoice_lines.c.line_number)
        ):
            lines[line.invoice_id].append(
                InvoiceLine(
                    line.reference, line.amount_micros, line.captured_at, line.transaction_id
                )
            )
        sessions: dict[tuple[str, int], list[BillSession]] = defaultdict(list)
        for session in await conn.execute(
            select(invoice_sessions)
            .where(invoice_sessions.c.invoice_id.in_(ids))
            .order_by(
                invoice_sessions.c.invoice_id,
                invoice_sessions.c.charge_number,
                invoice_sessions.c.session_number,
            )
        ):
            sessions[(session.invoice_id, session.charge_number)].append(
                BillSession(
                    session_id=session.session_id,
                    start_time=session.start_time,
                    endpoint=session.endpoint,
                    duration=timedelta(microseconds=session.duration_micros),
                    units=session.units,
                    amount_micros=session.amount_micros,
                )
            )
        charges: dict[str, list[BillCharge]] = defaultdict(list)
        for charge in await conn.execute(
            select(invoice_charges)
            .where(invoice_charges.c.invoice_id.in_(ids))
            .order_by(invoice_charges.c.invoice_id, invoice_charges.c.charge_number)
        ):
            charges[charge.invoice_id].append(
                BillCharge(
                    service_type=charge.service_type,
                    application_id=charge.application_id,
                    unit=charge.unit,
                    units=charge.units,
                    amount_micros=charge.amount_micros,
                    sessions=tuple(sessions[(charge.invoice_id, charge.charge_number)]),
                )
            )
        movements: dict[str, list[BillMovement]] = defaultdict(list)
        for movement in await conn.execute(
            select(invoice_movements)
            .where(invoice_movements.c.invoice_id.in_(ids))
            .order_by(invoice_movements.c.invoice_id, invoice_movements.c.movement_number)
        ):
            movements[movement.invoice_id].append(
                BillMovement(
                    kind=TransactionKind(movement.kind),
                    amount_micros=movement.amount_micros,
                    created_at=movement.created_at,
                    description=movement.description,
                    transaction_id=movement.transaction_id,
                )
            )
        return [
            Invoice(
                invoice_id=row.invoice_id,
                number=row.number,
                account_id=row.account_id,
                account_name=row.account_name,
                currency=row.currency,
                period_start=row.period_start,
                period_end=row.period_end,
                created_at=row.created_at,
                content=BillContent(
                    opening_balance_micros=row.opening_balance_micros,
                    funded_micros=row.funded_micros,
                    adjusted_micros=row.adjusted_micros,
                    refunded_micros=row.refunded_micros,
                    captured_micros=row.total_micros,
                    closing_balance_micros=row.closing_balance_micros,
                    lines=tuple(lines[row.invoice_id]),
                    charges=tuple(charges[row.invoice_id]),
                    movements=tuple(movements[row.invoice_id]),
                ),
            )
            for row in rows
        ]


def _usage(row: Any) -> UsageSummary:
    return UsageSummary(
        session_id=row.session_id,
        service_type=row.service_type,
        endpoint=row.endpoint,
        application_id=row.application_id,
        units=row.units,
        unit=row.unit,
        start_time=row.start_time,
        end_time=row.end_time,
        charged_micros=row.charged_micros,
    )
