"""SQL for the account database's cold paths, through SQLAlchemy: opening accounts,
listing entries, the account lock a bill takes (bills: invoice_store.py). Each
method runs on a connection inside the caller's transaction; the ledger service decides
where transactions begin and end. Money movements and account reads are in
movement_store.py."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from billing_manager.domain.ledger import (
    Account,
    AccountStatus,
    AccountView,
    Balances,
    LedgerAccount,
    LedgerLine,
    TransactionKind,
)
from billing_manager.storage.models import accounts, ledger_entries


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


class LedgerStore:
    async def insert_account(
        self, conn: AsyncConnection, display_name: str, currency: str, credit_limit: int
    ) -> AccountView:
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
        return AccountView(_account(row), Balances(row.available_micros, row.held_micros))

    async def account(
        self, conn: AsyncConnection, account_id: str, lock: bool = False
    ) -> Account | None:
        query = select(accounts).where(accounts.c.account_id == account_id)
        if lock:
            # Every movement on an account holds this lock: they apply one at a time.
            query = query.with_for_update()
        row = (await conn.execute(query)).one_or_none()
        return _account(row) if row else None

    async def entries(
        self,
        conn: AsyncConnection,
        account_id: str,
        after_entry_id: int,
        limit: int,
        kinds: Sequence[TransactionKind] = (),
        start: datetime | None = None,
        end: datetime | None = None,
    ) -> list[LedgerLine]:
        """A page of the account's entries in order, of the `kinds` given (all if none),
        written in [start, end)."""
        query = select(ledger_entries).where(
            ledger_entries.c.account_id == account_id,
            ledger_entries.c.entry_id > after_entry_id,
        )
        if kinds:
            query = query.where(ledger_entries.c.kind.in_([kind.value for kind in kinds]))
        if start is not None:
            query = query.where(ledger_entries.c.created_at >= start)
        if end is not None:
            query = query.where(ledger_entries.c.created_at < end)
        rows = await conn.execute(query.order_by(ledger_entries.c.entry_id).limit(limit))
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
