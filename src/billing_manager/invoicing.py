"""Bills: issue one for an account and a period that has ended, read and list them, and
keep the usage summaries captures carry. One transaction per bill, under the account's
row lock (no movement lands while it is built) and its year's number counter (so
numbers have no gaps); the rules and sums are in domain/invoices.py."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from billing_manager.domain import invoices as bills
from billing_manager.domain import ledger as rules
from billing_manager.domain.invoices import Invoice, UsageSummary
from billing_manager.storage.invoice_store import InvoiceStore
from billing_manager.storage.ledger_store import LedgerStore
from billing_manager.storage.usage_store import UsageStore
from meterline.kernel.db import run_in_transaction, run_on_connection
from meterline.kernel.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound

log = logging.getLogger(__name__)


def _now() -> datetime:
    return datetime.now(UTC)


def _no_invoice(invoice_id: str) -> NotFound:
    return NotFound(f"There is no invoice {invoice_id!r}.", reason="INVOICE_NOT_FOUND")


class Invoicing:
    def __init__(self, engine: AsyncEngine, clock: Callable[[], datetime] = _now) -> None:
        self._engine = engine
        self._clock = clock
        self._accounts = LedgerStore()
        self._invoices = InvoiceStore()
        self._usage = UsageStore()

    async def generate(self, account_id: str, start: datetime, end: datetime, key: str) -> Invoice:
        """The bill of [start, end): issued now, or the one issued before for the same
        account and period (whatever key that was made with)."""
        rules.validate_idempotency_key(key)
        bills.validate_period(start, end, self._clock())
        fingerprint = f"INVOICE|{account_id}|{start.isoformat()}|{end.isoformat()}"

        async def work(conn: AsyncConnection) -> Invoice:
            account = await self._accounts.account(conn, account_id, lock=True)
            if account is None:
                raise NotFound(f"There is no account {account_id!r}.", reason="ACCOUNT_NOT_FOUND")
            keyed = await self._invoices.by_key(conn, key)
            if keyed is not None:
                if keyed[1] != fingerprint:
                    raise AlreadyExists(
                        f"The idempotency key {key!r} was already used for a bill of another "
                        "account or period; use a new key for a new bill."
                    )
                return keyed[0]
            issued = await self._invoices.by_period(conn, account_id, start, end)
            if issued is not None:
                return issued
            overlapping = await self._invoices.overlapping(conn, account_id, start, end)
            if overlapping is not None:
                raise FailedPrecondition(
                    f"Bill {overlapping} of account {account_id} already covers part of this "
                    "period; a charge is billed once, so periods of one account do not "
                    "overlap (start this one where that one ends).",
                    reason="PERIOD_OVERLAPS",
                )
            content = bills.build_bill(
                await self._invoices.balance_before(conn, account_id, start),
                await self._invoices.period_transactions(conn, account_id, start, end),
                await self._invoices.balance_before(conn, account_id, end),
            )
            invoice = await self._invoices.insert(
                conn, account, start, end, content, key, fingerprint
            )
            log.info(
                "invoice %s issued for account %s: %d micros captured",
                invoice.number,
                account_id,
                invoice.total_micros,
            )
            return invoice

        return await run_in_transaction(self._engine, work, repeatable=True)

    async def get(self, invoice_id: str) -> Invoice:
        """A bill by its id or its number."""
        if not invoice_id.strip():
            raise InvalidArgument("invoice_id is empty: give a bill's id or its number.")
        if len(invoice_id) > 64:
            raise _no_invoice(invoice_id[:64])
        invoice = await run_on_connection(
            self._engine, lambda conn: self._invoices.by_id(conn, invoice_id)
        )
        if invoice is None:
            raise _no_invoice(invoice_id)
        return invoice

    async def page(
        self, account_id: str, before: tuple[datetime, str] | None, limit: int
    ) -> list[Invoice]:
        """The account's bills, newest first, older than `before`."""

        async def read(conn: AsyncConnection) -> list[Invoice]:
            if await self._accounts.account(conn, account_id) is None:
                raise NotFound(f"There is no account {account_id!r}.", reason="ACCOUNT_NOT_FOUND")
            return await self._invoices.page(conn, account_id, before, limit)

        return await run_on_connection(self._engine, read)

    async def record_usage(self, hold_id: str, usage: UsageSummary) -> None:
        """Keep what a captured hold paid for (a repeat keeps the first)."""
        await run_in_transaction(
            self._engine,
            lambda conn: self._usage.record(conn, hold_id, usage),
            repeatable=True,
        )
