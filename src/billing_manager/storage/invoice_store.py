"""Bills in the account database."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from billing_manager.domain.ledger import Account, Invoice, InvoiceLine
from billing_manager.storage.ledger_store import new_id
from billing_manager.storage.models import invoice_lines, invoices


class InvoiceStore:
    async def insert(
        self,
        conn: AsyncConnection,
        account: Account,
        start: datetime,
        end: datetime,
        lines: tuple[InvoiceLine, ...],
        key: str,
        fingerprint: str,
    ) -> Invoice:
        invoice_id = new_id("inv")
        total = sum(line.amount_micros for line in lines)
        row = (
            await conn.execute(
                insert(invoices)
                .values(
                    invoice_id=invoice_id,
                    account_id=account.account_id,
                    period_start=start,
                    period_end=end,
                    currency=account.currency,
                    total_micros=total,
                    idempotency_key=key,
                    fingerprint=fingerprint,
                )
                .returning(invoices)
            )
        ).one()
        if lines:
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
                    for number, line in enumerate(lines, start=1)
                ],
            )
        return self._invoice(row, lines)

    @staticmethod
    def _invoice(row: Any, lines: tuple[InvoiceLine, ...]) -> Invoice:
        return Invoice(
            invoice_id=row.invoice_id,
            account_id=row.account_id,
            period_start=row.period_start,
            period_end=row.period_end,
            currency=row.currency,
            lines=lines,
            created_at=row.created_at,
        )

    async def _lines(self, conn: AsyncConnection, invoice_id: str) -> tuple[InvoiceLine, ...]:
        rows = await conn.execute(
            select(invoice_lines)
            .where(invoice_lines.c.invoice_id == invoice_id)
            .order_by(invoice_lines.c.line_number)
        )
        return tuple(
            InvoiceLine(row.reference, row.amount_micros, row.captured_at, row.transaction_id)
            for row in rows
        )

    async def by_id(self, conn: AsyncConnection, invoice_id: str) -> Invoice | None:
        row = (
            await conn.execute(select(invoices).where(invoices.c.invoice_id == invoice_id))
        ).one_or_none()
        return self._invoice(row, await self._lines(conn, invoice_id)) if row else None

    async def by_key(self, conn: AsyncConnection, key: str) -> tuple[Invoice, str] | None:
        row = (
            await conn.execute(select(invoices).where(invoices.c.idempotency_key == key))
        ).one_or_none()
        if row is None:
            return None
        return self._invoice(row, await self._lines(conn, row.invoice_id)), row.fingerprint
