"""The operators' list of accounts: one read of the accounts table, in id order, a page at
a time, with each account's running balances."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from billing_manager.domain.ledger import Account, AccountStatus, AccountView, Balances
from billing_manager.storage.models import accounts


async def accounts_after(conn: AsyncConnection, after_id: str, limit: int) -> list[AccountView]:
    """Up to `limit` accounts whose ids sort after `after_id` ("" for the first page)."""
    rows = await conn.execute(
        select(accounts)
        .where(accounts.c.account_id > after_id)
        .order_by(accounts.c.account_id)
        .limit(limit)
    )
    return [
        AccountView(
            Account(
                account_id=row.account_id,
                display_name=row.display_name,
                currency=row.currency,
                credit_limit_micros=row.credit_limit_micros,
                status=AccountStatus(row.status),
                created_at=row.created_at,
            ),
            Balances(row.available_micros, row.held_micros),
        )
        for row in rows
    ]
