"""SQL for the account database. Each method runs on a connection inside the caller's
transaction; the ledger service decides where transactions begin and end."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from billing_manager.domain.ledger import (
    Account,
    AccountStatus,
    Balances,
    Entry,
    Hold,
    HoldStatus,
    InvoiceLine,
    LedgerAccount,
    LedgerLine,
    Transaction,
    TransactionKind,
)
from billing_manager.storage.models import (
    accounts,
    holds,
    ledger_entries,
    ledger_transactions,
)


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


def _account(row: Any) -> Account:
    return Account(
        account_id=row.account_id,
        display_name=row.display_name,
        currency=row.currency,
        credit_limit_micros=row.credit_limit_micros,
        status=AccountStatus(row.status),
        created_at=row.created_at,
    )


def _hold(row: Any) -> Hold:
    return Hold(
        hold_id=row.hold_id,
        account_id=row.account_id,
        amount_micros=row.amount_micros,
        captured_micros=row.captured_micros,
        released_micros=row.released_micros,
        status=HoldStatus(row.status),
        reference=row.reference,
        created_at=row.created_at,
    )


def _transaction(row: Any) -> Transaction:
    return Transaction(
        transaction_id=row.transaction_id,
        kind=TransactionKind(row.kind),
        account_id=row.account_id,
        amount_micros=row.amount_micros,
        idempotency_key=row.idempotency_key,
        created_at=row.created_at,
    )


@dataclass(frozen=True, slots=True)
class RecordedTransaction:
    """A transaction as stored, with what it was asked for and the hold it concerns."""

    transaction: Transaction
    fingerprint: str
    hold_id: str | None


class LedgerStore:
    async def insert_account(
        self, conn: AsyncConnection, display_name: str, currency: str, credit_limit: int
    ) -> Account:
        row = (
            await conn.execute(
                insert(accounts)
                .values(
                    account_id=new_id("acct"),
                    display_name=display_name,
                    currency=currency,
                    credit_limit_micros=credit_limit,
                    status=AccountStatus.ACTIVE.value,
                )
                .returning(accounts)
            )
        ).one()
        return _account(row)

    async def account(
        self, conn: AsyncConnection, account_id: str, lock: bool = False
    ) -> Account | None:
        query = select(accounts).where(accounts.c.account_id == account_id)
        if lock:
            # Every movement on an account holds this lock: they apply one at a time.
            query = query.with_for_update()
        row = (await conn.execute(query)).one_or_none()
        return _account(row) if row else None

    async def account_view(
        self, conn: AsyncConnection, account_id: str
    ) -> tuple[Account, Balances] | None:
        """An account and its balances from its ledger, in one query."""
        entries = ledger_entries.c
        available = func.coalesce(
            func.sum(entries.amount_micros).filter(
                entries.ledger_account == LedgerAccount.CUSTOMER_AVAILABLE.value
            ),
            0,
        )
        held = func.coalesce(
            func.sum(entries.amount_micros).filter(
                entries.ledger_account == LedgerAccount.CUSTOMER_HELD.value
            ),
            0,
        )
        row = (
            await conn.execute(
                select(accounts, available.label("available"), held.label("held"))
                .select_from(
                    accounts.outerjoin(ledger_entries, entries.account_id == accounts.c.account_id)
                )
                .where(accounts.c.account_id == account_id)
                .group_by(accounts.c.account_id)
            )
        ).one_or_none()
        if row is None:
            return None
        return _account(row), Balances(int(row.available), int(row.held))

    async def balances(self, conn: AsyncConnection, account_id: str) -> Balances:
        rows = await conn.execute(
            select(ledger_entries.c.ledger_account, func.sum(ledger_entries.c.amount_micros))
            .where(
                ledger_entries.c.account_id == account_id,
                ledger_entries.c.ledger_account.in_(
                    (LedgerAccount.CUSTOMER_AVAILABLE.value, LedgerAccount.CUSTOMER_HELD.value)
                ),
            )
            .group_by(ledger_entries.c.ledger_account)
        )
        sums = {account: int(total) for account, total in rows}
        return Balances(
            available_micros=sums.get(LedgerAccount.CUSTOMER_AVAILABLE.value, 0),
            held_micros=sums.get(LedgerAccount.CUSTOMER_HELD.value, 0),
        )

    async def transaction_by_key(
        self, conn: AsyncConnection, idempotency_key: str
    ) -> RecordedTransaction | None:
        row = (
            await conn.execute(
                select(ledger_transactions).where(
                    ledger_transactions.c.idempotency_key == idempotency_key
                )
            )
        ).one_or_none()
        return RecordedTransaction(_transaction(row), row.fingerprint, row.hold_id) if row else None

    async def append(
        self,
        conn: AsyncConnection,
        kind: TransactionKind,
        account_id: str,
        amount: int,
        idempotency_key: str,
        fingerprint: str,
        entries: list[Entry],
        hold_id: str | None = None,
        reference: str = "",
    ) -> Transaction:
        transaction_id = new_id("txn")
        row = (
            await conn.execute(
                insert(ledger_transactions)
                .values(
                    transaction_id=transaction_id,
                    kind=kind.value,
                    account_id=account_id,
                    amount_micros=amount,
                    idempotency_key=idempotency_key,
                    fingerprint=fingerprint,
                    hold_id=hold_id,
                    reference=reference,
                )
                .returning(ledger_transactions)
            )
        ).one()
        await conn.execute(
            insert(ledger_entries),
            [
                {
                    "transaction_id": transaction_id,
                    "kind": kind.value,
                    "account_id": account_id,
                    "ledger_account": ledger_account.value,
                    "amount_micros": entry_amount,
                    "hold_id": hold_id,
                }
                for ledger_account, entry_amount in entries
            ],
        )
        return _transaction(row)

    async def insert_hold(
        self, conn: AsyncConnection, hold_id: str, account_id: str, amount: int, reference: str
    ) -> Hold:
        row = (
            await conn.execute(
                insert(holds)
                .values(
                    hold_id=hold_id,
                    account_id=account_id,
                    amount_micros=amount,
                    status=HoldStatus.OPEN.value,
                    reference=reference,
                )
                .returning(holds)
            )
        ).one()
        return _hold(row)

    async def hold(self, conn: AsyncConnection, hold_id: str, lock: bool = False) -> Hold | None:
        query = select(holds).where(holds.c.hold_id == hold_id)
        if lock:
            query = query.with_for_update()
        row = (await conn.execute(query)).one_or_none()
        return _hold(row) if row else None

    async def close_hold(
        self, conn: AsyncConnection, hold_id: str, status: HoldStatus, captured: int, released: int
    ) -> Hold:
        row = (
            await conn.execute(
                update(holds)
                .where(holds.c.hold_id == hold_id, holds.c.status == HoldStatus.OPEN.value)
                .values(
                    status=status.value,
                    captured_micros=captured,
                    released_micros=released,
                    closed_at=func.now(),
                )
                .returning(holds)
            )
        ).one()
        return _hold(row)

    async def entries(
        self, conn: AsyncConnection, account_id: str, after_entry_id: int, limit: int
    ) -> list[LedgerLine]:
        rows = await conn.execute(
            select(ledger_entries)
            .where(
                ledger_entries.c.account_id == account_id,
                ledger_entries.c.entry_id > after_entry_id,
            )
            .order_by(ledger_entries.c.entry_id)
            .limit(limit)
        )
        return [
            LedgerLine(
                entry_id=row.entry_id,
                transaction_id=row.transaction_id,
                kind=TransactionKind(row.kind),
                account_id=row.account_id,
                ledger_account=LedgerAccount(row.ledger_account),
                amount_micros=row.amount_micros,
                hold_id=row.hold_id or "",
                created_at=row.created_at,
            )
            for row in rows
        ]

    async def captures(
        self, conn: AsyncConnection, account_id: str, start: datetime, end: datetime
    ) -> list[InvoiceLine]:
        """Captured charges of a period: the REVENUE entries of the account's captures."""
        rows = await conn.execute(
            select(
                ledger_transactions.c.transaction_id,
                ledger_transactions.c.reference,
                ledger_transactions.c.created_at,
                ledger_entries.c.amount_micros,
            )
            .join(
                ledger_entries,
                ledger_entries.c.transaction_id == ledger_transactions.c.transaction_id,
            )
            .where(
                ledger_transactions.c.account_id == account_id,
                ledger_transactions.c.kind == TransactionKind.CAPTURE.value,
                ledger_entries.c.ledger_account == LedgerAccount.REVENUE.value,
                ledger_transactions.c.created_at >= start,
                ledger_transactions.c.created_at < end,
            )
            .order_by(ledger_transactions.c.created_at, ledger_transactions.c.transaction_id)
        )
        return [
            InvoiceLine(
                reference=row.reference,
                amount_micros=row.amount_micros,
                captured_at=row.created_at,
                transaction_id=row.transaction_id,
            )
            for row in rows
        ]
