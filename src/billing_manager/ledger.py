"""The ledger service: each money movement in one database transaction, under the
account's row lock, keyed for idempotency. A repeat with the same key and request returns
the first result; the same key with another request is refused."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import TypeVar

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from billing_manager.domain import ledger as rules
from billing_manager.domain.ledger import (
    Account,
    AccountView,
    Hold,
    HoldStatus,
    Invoice,
    LedgerLine,
    Transaction,
    TransactionKind,
)
from billing_manager.storage.invoice_store import InvoiceStore
from billing_manager.storage.ledger_store import LedgerStore, RecordedTransaction, new_id
from meterline.kernel.db import run_in_transaction, run_on_connection, single_statement_engine
from meterline.kernel.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound

log = logging.getLogger(__name__)
T = TypeVar("T")


def _key_reused(key: str) -> AlreadyExists:
    return AlreadyExists(
        f"The idempotency key {key!r} was already used for a different request; use a new "
        "key for a new movement, or repeat the first request exactly."
    )


class Ledger:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        # A read is one statement: no BEGIN and ROLLBACK around it.
        self._reads = single_statement_engine(engine)
        self._store = LedgerStore()
        self._invoices = InvoiceStore()

    async def _once(self, work: Callable[[AsyncConnection], Awaitable[T]]) -> T:
        """Run a movement in a transaction; if a concurrent request with the same key won
        the race to the unique index, run it again to return that one's result. Every
        movement carries its key, so it is also run again if its connection dropped (a
        database restart): a repeat returns the first result."""
        for attempt in (1, 2):
            try:
                return await run_in_transaction(self._engine, work, repeatable=True)
            except IntegrityError:
                if attempt == 2:
                    raise
                log.info("idempotency key race; replaying")
        raise AssertionError("unreachable")  # pragma: no cover

    async def _locked_account(self, conn: AsyncConnection, account_id: str) -> Account:
        account = await self._store.account(conn, account_id, lock=True)
        if account is None:
            raise NotFound(f"There is no account {account_id!r}.", reason="ACCOUNT_NOT_FOUND")
        return account

    async def _replay(
        self, conn: AsyncConnection, key: str, fingerprint: str
    ) -> RecordedTransaction | None:
        recorded = await self._store.transaction_by_key(conn, key)
        if recorded is not None and recorded.fingerprint != fingerprint:
            raise _key_reused(key)
        return recorded

    async def create_account(
        self, display_name: str, currency: str, credit_limit_micros: int
    ) -> AccountView:
        rules.validate_new_account(display_name, currency, credit_limit_micros)

        async def work(conn: AsyncConnection) -> AccountView:
            account = await self._store.insert_account(
                conn, display_name.strip(), currency, credit_limit_micros
            )
            return AccountView(account, await self._store.balances(conn, account.account_id))

        # No key: a repeat would open a second account, so not after a drop at COMMIT.
        view = await run_in_transaction(self._engine, work, repeatable=False)
        log.info("account %s created", view.account.account_id)
        return view

    async def get_account(self, account_id: str) -> AccountView:
        found = await run_on_connection(
            self._reads, lambda conn: self._store.account_view(conn, account_id)
        )
        if found is None:
            raise NotFound(f"There is no account {account_id!r}.", reason="ACCOUNT_NOT_FOUND")
        return AccountView(*found)

    async def fund(self, account_id: str, amount: int, key: str) -> tuple[Transaction, AccountView]:
        rules.validate_amount(amount)
        rules.validate_idempotency_key(key)
        fingerprint = rules.fingerprint(TransactionKind.FUND, account_id, amount)

        async def work(conn: AsyncConnection) -> tuple[Transaction, AccountView]:
            account = await self._locked_account(conn, account_id)
            recorded = await self._replay(conn, key, fingerprint)
            if recorded is not None:
                transaction = recorded.transaction
            else:
                transaction = await self._store.append(
                    conn,
                    TransactionKind.FUND,
                    account_id,
                    amount,
                    key,
                    fingerprint,
                    rules.fund_entries(amount),
                )
                log.info("account %s funded with %d micros", account_id, amount)
            return transaction, AccountView(account, await self._store.balances(conn, account_id))

        return await self._once(work)

    async def reserve(self, account_id: str, amount: int, key: str, reference: str) -> Hold:
        rules.validate_amount(amount)
        rules.validate_idempotency_key(key)
        if len(reference) > 200:
            raise InvalidArgument("reference is longer than 200 characters.")
        fingerprint = rules.fingerprint(TransactionKind.RESERVE, account_id, amount, reference)

        async def work(conn: AsyncConnection) -> Hold:
            account = await self._locked_account(conn, account_id)
            recorded = await self._replay(conn, key, fingerprint)
            if recorded is not None and recorded.hold_id:
                return await self._existing_hold(conn, recorded.hold_id)
            if account.status is not rules.AccountStatus.ACTIVE:
                raise FailedPrecondition(
                    f"Account {account_id} is suspended; it cannot take new charges.",
                    reason="ACCOUNT_SUSPENDED",
                )
            balances = await self._store.balances(conn, account_id)
            rules.ensure_can_reserve(balances, account.credit_limit_micros, amount)
            hold_id = new_id("hold")
            hold = await self._store.insert_hold(conn, hold_id, account_id, amount, reference)
            await self._store.append(
                conn,
                TransactionKind.RESERVE,
                account_id,
                amount,
                key,
                fingerprint,
                rules.reserve_entries(amount),
                hold_id=hold_id,
                reference=reference,
            )
            return hold

        return await self._once(work)

    async def capture(self, hold_id: str, amount: int, key: str) -> Hold:
        rules.validate_idempotency_key(key)
        fingerprint = rules.fingerprint(TransactionKind.CAPTURE, hold_id, amount)
        return await self._once(lambda conn: self._close(conn, hold_id, key, fingerprint, amount))

    async def release(self, hold_id: str, key: str) -> Hold:
        rules.validate_idempotency_key(key)
        fingerprint = rules.fingerprint(TransactionKind.RELEASE, hold_id)
        return await self._once(lambda conn: self._close(conn, hold_id, key, fingerprint, None))

    async def _close(
        self, conn: AsyncConnection, hold_id: str, key: str, fingerprint: str, capture: int | None
    ) -> Hold:
        """Capture (capture = amount) or release (capture = None) an open hold."""
        hold = await self._existing_hold(conn, hold_id)
        await self._locked_account(conn, hold.account_id)
        recorded = await self._replay(conn, key, fingerprint)
        if recorded is not None:
            return await self._existing_hold(conn, hold_id)
        hold = await self._existing_hold(conn, hold_id, lock=True)
        if hold.status is not HoldStatus.OPEN:
            raise FailedPrecondition(
                f"Hold {hold_id} is already {hold.status.lower()}; a hold is settled only once.",
                reason="HOLD_CLOSED",
            )
        if capture is None:
            entries = rules.release_entries(hold.amount_micros)
            kind, status, captured = TransactionKind.RELEASE, HoldStatus.RELEASED, 0
        else:
            captured = rules.validate_capture(hold, capture)
            entries = rules.capture_entries(hold.amount_micros, captured)
            kind, status = TransactionKind.CAPTURE, HoldStatus.CAPTURED
        await self._store.append(
            conn,
            kind,
            hold.account_id,
            captured if capture is not None else hold.amount_micros,
            key,
            fingerprint,
            entries,
            hold_id=hold_id,
            reference=hold.reference,
        )
        return await self._store.close_hold(
            conn, hold_id, status, captured, hold.amount_micros - captured
        )

    async def _existing_hold(self, conn: AsyncConnection, hold_id: str, lock: bool = False) -> Hold:
        hold = await self._store.hold(conn, hold_id, lock=lock)
        if hold is None:
            raise NotFound(f"There is no hold {hold_id!r}.", reason="HOLD_NOT_FOUND")
        return hold

    async def entries(self, account_id: str, after_entry_id: int, limit: int) -> list[LedgerLine]:
        async def read(conn: AsyncConnection) -> list[LedgerLine]:
            if await self._store.account(conn, account_id) is None:
                raise NotFound(f"There is no account {account_id!r}.", reason="ACCOUNT_NOT_FOUND")
            return await self._store.entries(conn, account_id, after_entry_id, limit)

        return await run_on_connection(self._engine, read)

    async def generate_invoice(
        self, account_id: str, start: datetime, end: datetime, key: str
    ) -> Invoice:
        rules.validate_idempotency_key(key)
        if end <= start:
            raise InvalidArgument("period_end must be after period_start.")
        fingerprint = f"INVOICE|{account_id}|{start.isoformat()}|{end.isoformat()}"

        async def work(conn: AsyncConnection) -> Invoice:
            account = await self._locked_account(conn, account_id)
            existing = await self._invoices.by_key(conn, key)
            if existing is not None:
                if existing[1] != fingerprint:
                    raise _key_reused(key)
                return existing[0]
            lines = await self._store.captures(conn, account_id, start, end)
            return await self._invoices.insert(
                conn, account, start, end, tuple(lines), key, fingerprint
            )

        return await run_in_transaction(self._engine, work, repeatable=True)

    async def get_invoice(self, invoice_id: str) -> Invoice:
        invoice = await run_on_connection(
            self._engine, lambda conn: self._invoices.by_id(conn, invoice_id)
        )
        if invoice is None:
            raise NotFound(f"There is no invoice {invoice_id!r}.", reason="INVOICE_NOT_FOUND")
        return invoice
