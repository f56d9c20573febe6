"""The hot path of the account database, through psycopg 3: account reads and money
movements, each one prepared statement and one round trip on a pooled connection.

A movement is one call of a function of migration 0002 (`ledger_fund`, `ledger_reserve`,
`ledger_settle`): it locks the account row (movements on one account apply one at a
time), looks up the idempotency key, checks what only the locked row can tell, and
writes the transaction, its entries (as the domain rules made them) and the hold, all in
the statement's own transaction. The running balances on the account row move with the
entries (a trigger of the same migration), so reading an account never sums its ledger.

A capture or release needs the hold's account and amount first (they never change): the
store remembers the holds its own reserves opened until they are settled
(`hold_to_settle`), so a reserve and its capture on one billing manager are two
statements in all; `ledger_settle` checks the amount and that the hold is still open.

What the database found is handed back as a `Movement`; the ledger service turns a
refusal into its error. A connection a restart broke is replaced and the statement run
once more (`PooledDatabase.run`): a keyed movement's repeat returns its first result. Two
requests racing with one key on different accounts meet at the unique index: the loser
runs once more and finds the winner's transaction.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import psycopg

from billing_manager.domain.ledger import (
    Account,
    AccountStatus,
    AccountView,
    Balances,
    Entry,
    Hold,
    HoldStatus,
    Settlement,
    Transaction,
    TransactionKind,
)
from billing_manager.domain.vouchers import Voucher
from billing_manager.storage.ledger_store import new_id
from meterline.kernel import metrics
from meterline.kernel.pg_pool import Connection, PooledDatabase

log = logging.getLogger(__name__)

_ACCOUNT = (
    "SELECT account_id, display_name, currency, credit_limit_micros, status AS account_status, "
    "created_at AS account_created_at, available_micros, held_micros "
    "FROM accounts WHERE account_id = %s"
)
_HOLD = (
    "SELECT hold_id, account_id, amount_micros AS hold_amount_micros, captured_micros, "
    "released_micros, status AS hold_status, reference AS hold_reference, "
    "created_at AS hold_created_at, expires_at AS hold_expires_at FROM holds WHERE hold_id = %s"
)
_FUND = "SELECT * FROM ledger_fund(%s, %s, %s, %s, %s, %s, %s)"
_RESERVE = "SELECT * FROM ledger_reserve(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
_EXPIRED = (
    "SELECT hold_id, account_id FROM holds WHERE status = 'OPEN' AND expires_at <= now() "
    "ORDER BY expires_at LIMIT %s FOR UPDATE SKIP LOCKED"
)
_SETTLE = "SELECT * FROM ledger_settle(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
_ADJUST = "SELECT * FROM ledger_adjust(%s, %s, %s, %s, %s, %s, %s, %s)"
_REFUND = "SELECT * FROM ledger_refund(%s, %s, %s, %s, %s, %s, %s, %s, %s)"
_SET_STATUS = "SELECT * FROM ledger_set_account_status(%s, %s)"
_DRIFT = "SELECT * FROM ledger_running_balance_drift(%s)"
_VOUCHER = (
    "SELECT code_hash, batch_id, amount_micros, currency, expires_at FROM vouchers "
    "WHERE code_hash = %s"
)
_NEW_VOUCHER = (
    "INSERT INTO vouchers (code_hash, batch_id, amount_micros, currency, expires_at) "
    "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (code_hash) DO NOTHING"  # a rerun of the batch
)
_REDEEM = "SELECT * FROM ledger_redeem_voucher(%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"

OPEN_HOLDS_REMEMBERED = 50_000
"""Open holds this process made that a store remembers for their settlement (oldest
forgotten first); about 300 bytes each."""


class Outcome(enum.StrEnum):
    """What a movement function found or did."""

    DONE = "DONE"
    """Written: the transaction, its entries, the hold."""
    RECORDED = "RECORDED"
    """The key was used before: `transaction` is that one (compare its fingerprint)."""
    ACCOUNT_NOT_FOUND = "ACCOUNT_NOT_FOUND"
    ACCOUNT_SUSPENDED = "ACCOUNT_SUSPENDED"
    INSUFFICIENT_FUNDS = "INSUFFICIENT_FUNDS"
    """The reserve would take the available balance below minus the credit limit."""
    HOLD_NOT_FOUND = "HOLD_NOT_FOUND"
    HOLD_CLOSED = "HOLD_CLOSED"
    CHECKED = "CHECKED"
    """No entries were given: the checks passed and nothing was written."""
    VOUCHER_UNKNOWN = "VOUCHER_UNKNOWN"
    VOUCHER_USED = "VOUCHER_USED"
    """Redeemed before, on another account (a repeat on the same one is RECORDED)."""
    VOUCHER_EXPIRED = "VOUCHER_EXPIRED"
    CURRENCY_MISMATCH = "CURRENCY_MISMATCH"
    """The voucher's currency is not the account's."""
    ACCOUNT_CLOSED = "ACCOUNT_CLOSED"
    """A closed account's status cannot change."""
    BALANCE_NOT_ZERO = "BALANCE_NOT_ZERO"
    """Only an account with a zero balance and no open holds is closed."""
    HOLD_NOT_CAPTURED = "HOLD_NOT_CAPTURED"
    """Only a captured hold's charge is refunded."""
    REFUND_TOO_LARGE = "REFUND_TOO_LARGE"
    """The hold's refunds would be more than it captured."""


@dataclass(frozen=True, slots=True)
class Movement:
    """A movement's outcome and the rows it saw, as they are after it (the account under
    its lock; the transaction recorded or written; the hold concerned)."""

    outcome: Outcome
    account: AccountView | None
    transaction: Transaction | None
    fingerprint: str | None
    """The recorded transaction's fingerprint (RECORDED)."""
    hold: Hold | None


@dataclass(frozen=True, slots=True)
class BalanceDrift:
    """An account whose running balances are not the sums of its ledger entries."""

    account_id: str
    available_micros: int
    entries_available_micros: int
    held_micros: int
    entries_held_micros: int


def _account_view(row: dict[str, Any]) -> AccountView:
    account = Account(
        account_id=row["account_id"],
        display_name=row["display_name"],
        currency=row["currency"],
        credit_limit_micros=row["credit_limit_micros"],
        status=AccountStatus(row["account_status"]),
        created_at=row["account_created_at"],
    )
    return AccountView(account, Balances(row["available_micros"], row["held_micros"]))


def _hold(row: dict[str, Any], account_id: str) -> Hold:
    return Hold(
        hold_id=row["hold_id"],
        account_id=account_id,
        amount_micros=row["hold_amount_micros"],
        captured_micros=row["captured_micros"],
        released_micros=row["released_micros"],
        status=HoldStatus(row["hold_status"]),
        reference=row["hold_reference"],
        created_at=row["hold_created_at"],
        expires_at=row["hold_expires_at"],
    )


def _movement(row: dict[str, Any]) -> Movement:
    account_id = row["account_id"]
    transaction = None
    if row["transaction_id"] is not None:
        transaction = Transaction(
            transaction_id=row["transaction_id"],
            kind=TransactionKind(row["transaction_kind"]),
            account_id=account_id,
            amount_micros=row["transaction_amount_micros"],
            idempotency_key=row["idempotency_key"],
            created_at=row["transaction_created_at"],
            reference=row["transaction_reference"] or "",
        )
    return Movement(
        outcome=Outcome(row["outcome"]),
        account=_account_view(row) if account_id is not None else None,
        transaction=transaction,
        fingerprint=row["fingerprint"],
        hold=_hold(row, account_id) if row["hold_id"] is not None else None,
    )


def _columns(entries: Sequence[Entry]) -> tuple[list[str], list[int]]:
    return [account.value for account, _ in entries], [amount for _, amount in entries]


class MovementStore:
    """Account reads and money movements on PostgreSQL (the schema of migration 0002)."""

    def __init__(self, database_url: str, pool_size: int = 10) -> None:
        self._db = PooledDatabase(database_url, "account database", max_size=pool_size)
        # The holds this process's reserves opened, by id, until they are settled: a
        # capture or release then needs one statement, not a read of the hold first.
        self._open_holds: dict[str, Hold] = {}

    async def open(self) -> None:
        await self._db.open()

    async def close(self) -> None:
        await self._db.close()

    async def _row(self, sql: str, params: Sequence[Any]) -> dict[str, Any] | None:
        async def work(conn: Connection) -> dict[str, Any] | None:
            return await (await conn.execute(sql, params, prepare=True)).fetchone()

        return await self._db.run(work)

    async def _move(self, sql: str, params: Sequence[Any]) -> Movement:
        for attempt in (1, 2):
            try:
                row = await self._row(sql, params)
            except psycopg.errors.UniqueViolation:
                if attempt == 2:
                    raise
                log.info("idempotency key race; running again")
                continue
            assert row is not None, "a movement function always answers one row"
            movement = _movement(row)
            if movement.outcome is Outcome.DONE and movement.transaction is not None:
                metrics.LEDGER_MOVEMENTS.labels(movement.transaction.kind.value).inc()
            return movement
        raise AssertionError("unreachable")  # pragma: no cover

    async def account(self, account_id: str) -> AccountView | None:
        row = await self._row(_ACCOUNT, (account_id,))
        return _account_view(row) if row else None

    async def hold(self, hold_id: str) -> Hold | None:
        row = await self._row(_HOLD, (hold_id,))
        return _hold(row, row["account_id"]) if row else None

    async def hold_to_settle(self, hold_id: str) -> Hold | None:
        """A hold to capture or release: as this process's reserve opened it, else read.
        Only its account and amount are to be relied on (they never change; `settle`
        passes the amount, which the database checks): its status may be stale, and the
        settle movement checks it under the account's lock."""
        known = self._open_holds.get(hold_id)
        return known if known is not None else await self.hold(hold_id)

    def _remember(self, hold: Hold | None) -> None:
        if hold is None or hold.status is not HoldStatus.OPEN:
            return
        if len(self._open_holds) >= OPEN_HOLDS_REMEMBERED:
            del self._open_holds[next(iter(self._open_holds))]
        self._open_holds[hold.hold_id] = hold

    async def fund(
        self, account_id: str, amount: int, key: str, fingerprint: str, entries: Sequence[Entry]
    ) -> Movement:
        ledger_accounts, amounts = _columns(entries)
        return await self._move(
            _FUND,
            (account_id, amount, key, fingerprint, new_id("txn"), ledger_accounts, amounts),
        )

    async def reserve(
        self,
        account_id: str,
        amount: int,
        key: str,
        fingerprint: str,
        reference: str,
        entries: Sequence[Entry],
        ttl_seconds: int,
    ) -> Movement:
        ledger_accounts, amounts = _columns(entries)
        movement = await self._move(
            _RESERVE,
            (
                account_id,
                amount,
                key,
                fingerprint,
                new_id("txn"),
                new_id("hold"),
                reference,
                ledger_accounts,
                amounts,
                ttl_seconds,
            ),
        )
        self._remember(movement.hold)
        return movement

    async def adjust(
        self,
        account_id: str,
        amount: int,
        key: str,
        fingerprint: str,
        reason: str,
        entries: Sequence[Entry],
    ) -> Movement:
        ledger_accounts, amounts = _columns(entries)
        return await self._move(
            _ADJUST,
            (account_id, amount, key, fingerprint, new_id("txn"), reason, ledger_accounts, amounts),
        )

    async def refund(
        self,
        hold: Hold,
        amount: int,
        key: str,
        fingerprint: str,
        reason: str,
        entries: Sequence[Entry],
    ) -> Movement:
        ledger_accounts, amounts = _columns(entries)
        return await self._move(
            _REFUND,
            (
                hold.hold_id,
                hold.account_id,
                amount,
                key,
                fingerprint,
                new_id("txn"),
                reason,
                ledger_accounts,
                amounts,
            ),
        )

    async def set_status(self, account_id: str, status: AccountStatus) -> Movement:
        """Change the account's status under its row lock, or say why not."""
        return await self._move(_SET_STATUS, (account_id, status.value))

    async def expired_holds(self, limit: int) -> list[str]:
        """Up to `limit` open holds past their expiry, oldest first, skipping those a
        movement has locked at this moment (it may be settling them)."""

        async def work(conn: Connection) -> list[dict[str, Any]]:
            return await (await conn.execute(_EXPIRED, (limit,), prepare=True)).fetchall()

        return [row["hold_id"] for row in await self._db.run(work)]

    async def settle(
        self, hold: Hold, key: str, fingerprint: str, settlement: Settlement | None
    ) -> Movement:
        """Capture or release `hold` as `settlement` says; with None, only the checks
        (key, hold still open) are made and nothing is written."""
        if settlement is None:
            plan: tuple[Any, ...] = (None, 0, None, 0, 0, None, None)
        else:
            plan = (
                settlement.kind.value,
                settlement.amount_micros,
                settlement.status.value,
                settlement.captured_micros,
                settlement.released_micros,
                *_columns(settlement.entries),
            )
        kind, amount, status, captured, released, ledger_accounts, amounts = plan
        movement = await self._move(
            _SETTLE,
            (
                hold.hold_id,
                hold.account_id,
                hold.amount_micros,
                kind,
                amount,
                key,
                fingerprint,
                new_id("txn"),
                status,
                captured,
                released,
                ledger_accounts,
                amounts,
            ),
        )
        now = movement.hold
        if now is None or now.hold_id != hold.hold_id or now.status is not HoldStatus.OPEN:
            self._open_holds.pop(hold.hold_id, None)  # settled (or not there): forgotten
        return movement

    async def voucher(self, voucher_hash: str) -> Voucher | None:
        row = await self._row(_VOUCHER, (voucher_hash,))
        if row is None:
            return None
        return Voucher(
            code_hash=row["code_hash"],
            batch_id=row["batch_id"],
            amount_micros=row["amount_micros"],
            currency=row["currency"],
            expires_at=row["expires_at"],
        )

    async def add_vouchers(self, vouchers: Sequence[Voucher]) -> None:
        """Store a batch, all or none (one transaction)."""

        async def work(conn: Connection) -> None:
            async with conn.transaction(), conn.cursor() as cursor:
                await cursor.executemany(
                    _NEW_VOUCHER,
                    [
                        (v.code_hash, v.batch_id, v.amount_micros, v.currency, v.expires_at)
                        for v in vouchers
                    ],
                )

        await self._db.run(work)

    async def redeem(
        self,
        voucher: Voucher,
        account_id: str,
        key: str,
        fingerprint: str,
        reference: str,
        entries: Sequence[Entry],
    ) -> Movement:
        """Fund `account_id` with `voucher` and mark it used, or say why not."""
        ledger_accounts, amounts = _columns(entries)
        return await self._move(
            _REDEEM,
            (
                voucher.code_hash,
                account_id,
                voucher.amount_micros,
                voucher.currency,
                key,
                fingerprint,
                new_id("txn"),
                reference,
                ledger_accounts,
                amounts,
            ),
        )

    async def running_balance_drift(self, account_id: str | None = None) -> list[BalanceDrift]:
        """Accounts (all, or the one named) whose running balances differ from the sums of
        their ledger entries: none, if the ledger keeps its word. Reads every entry of the
        accounts checked, in one snapshot; an operator runs the same check with
        `SELECT * FROM ledger_running_balance_drift()`."""

        async def work(conn: Connection) -> list[dict[str, Any]]:
            return await (await conn.execute(_DRIFT, (account_id,))).fetchall()

        return [
            BalanceDrift(
                account_id=row["account_id"],
                available_micros=row["available_micros"],
                entries_available_micros=int(row["entries_available_micros"]),
                held_micros=row["held_micros"],
                entries_held_micros=int(row["entries_held_micros"]),
            )
            for row in await self._db.run(work)
        ]
