"""The ledger service: each money movement one statement in the account database, under
the account's row lock, keyed for idempotency (storage/movement_store.py). A repeat with
the same key and request returns the first result; the same key with another request is
refused. The domain rules make the entries and say why a movement is refused; the
database applies them to the locked row.

Account creation, ledger listings and bills are cold paths: they stay on SQLAlchemy
(storage/ledger_store.py; bills in invoicing.py), each in a transaction of its own."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from billing_manager.domain import ledger as rules
from billing_manager.domain import vouchers as voucher_rules
from billing_manager.domain.invoices import UsageSummary, validate_usage
from billing_manager.domain.ledger import (
    AccountStatus,
    AccountView,
    Hold,
    HoldStatus,
    LedgerLine,
    Settlement,
    Transaction,
    TransactionKind,
)
from billing_manager.domain.vouchers import GuessThrottle, Voucher
from billing_manager.invoicing import Invoicing
from billing_manager.storage.account_list import accounts_after
from billing_manager.storage.ledger_store import LedgerStore, new_id
from billing_manager.storage.movement_store import Movement, MovementStore, Outcome
from meterline.kernel import money
from meterline.kernel.db import run_in_transaction, run_on_connection
from meterline.kernel.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    MeterlineError,
    NotFound,
)

log = logging.getLogger(__name__)


def _key_reused(key: str) -> AlreadyExists:
    return AlreadyExists(
        f"The idempotency key {key!r} was already used for a different request; use a new "
        "key for a new movement, or repeat the first request exactly."
    )


def _no_account(account_id: str) -> NotFound:
    return NotFound(f"There is no account {account_id!r}.", reason="ACCOUNT_NOT_FOUND")


def _no_hold(hold_id: str) -> NotFound:
    return NotFound(f"There is no hold {hold_id!r}.", reason="HOLD_NOT_FOUND")


def _refused(movement: Movement, key: str, fingerprint: str) -> None:
    """Raise the error of a movement the database did not make (or found recorded under
    another request), in the order the checks are made there."""
    if movement.outcome is Outcome.RECORDED and movement.fingerprint != fingerprint:
        raise _key_reused(key)
    if movement.outcome is Outcome.HOLD_CLOSED:
        assert movement.hold is not None
        raise FailedPrecondition(
            f"Hold {movement.hold.hold_id} is already {movement.hold.status.lower()}; a hold "
            "is settled only once.",
            reason="HOLD_CLOSED",
        )


MAX_PAYMENT_REFERENCE_LENGTH = 180  # "payment:" + it fits an idempotency key


def _voucher_refusal(outcome: Outcome, account_id: str) -> MeterlineError | None:
    """The error of a redemption the database refused for the voucher's sake."""
    if outcome is Outcome.VOUCHER_UNKNOWN:
        return NotFound("There is no such voucher code.", reason="VOUCHER_UNKNOWN")
    if outcome is Outcome.VOUCHER_USED:
        return FailedPrecondition(
            "This voucher was already redeemed; a voucher funds one account once.",
            reason="VOUCHER_USED",
        )
    if outcome is Outcome.VOUCHER_EXPIRED:
        return FailedPrecondition("This voucher has expired.", reason="VOUCHER_EXPIRED")
    if outcome is Outcome.CURRENCY_MISMATCH:
        return FailedPrecondition(
            f"This voucher is in another currency than account {account_id}.",
            reason="CURRENCY_MISMATCH",
        )
    return None


@dataclass(frozen=True, slots=True)
class Redemption:
    transaction: Transaction
    """The funding: this one, or the first one if the voucher had funded the account."""
    account: AccountView
    already_redeemed: bool
    """The voucher had funded this account before: nothing moved now."""


class Ledger:
    def __init__(
        self,
        engine: AsyncEngine,
        movements: MovementStore,
        voucher_secret: str = "",
        throttle: GuessThrottle | None = None,
        clock: Callable[[], float] = time.monotonic,
        hold_ttl_seconds: int = 24 * 3600,
    ) -> None:
        self._engine = engine
        self._movements = movements
        self._voucher_secret = voucher_secret
        self._throttle = throttle or GuessThrottle()
        self._clock = clock
        self._hold_ttl_seconds = rules.validate_hold_ttl(hold_ttl_seconds)
        self._store = LedgerStore()
        self.invoices = Invoicing(engine)
        """Bills, and the usage summaries of captures."""

    async def create_account(
        self, display_name: str, currency: str, credit_limit_micros: int
    ) -> AccountView:
        rules.validate_new_account(display_name, currency, credit_limit_micros)

        async def work(conn: AsyncConnection) -> AccountView:
            return await self._store.insert_account(
                conn, display_name.strip(), currency, credit_limit_micros
            )

        # No key: a repeat would open a second account, so not after a drop at COMMIT.
        view = await run_in_transaction(self._engine, work, repeatable=False)
        log.info("account %s created", view.account.account_id)
        return view

    async def get_account(self, account_id: str) -> AccountView:
        found = await self._movements.account(account_id)
        if found is None:
            raise _no_account(account_id)
        return found

    async def fund(
        self, account_id: str, amount: int, key: str, payment_reference: str = ""
    ) -> tuple[Transaction, AccountView]:
        """Fund an account; with an external payment's reference, the key is made from it,
        so that one payment funds once across the installation."""
        rules.validate_amount(amount)
        parts: tuple[object, ...] = (account_id, amount)
        if payment_reference:
            if key:
                raise InvalidArgument(
                    "give idempotency_key or payment_reference, not both: a payment's "
                    "reference is its key."
                )
            if (
                len(payment_reference) > MAX_PAYMENT_REFERENCE_LENGTH
                or not payment_reference.strip()
            ):
                raise InvalidArgument(
                    f"payment_reference must be 1 to {MAX_PAYMENT_REFERENCE_LENGTH} characters."
                )
            key = f"payment:{payment_reference}"
            parts = (*parts, payment_reference)
        rules.validate_idempotency_key(key)
        fingerprint = rules.fingerprint(TransactionKind.FUND, *parts)
        movement = await self._movements.fund(
            account_id, amount, key, fingerprint, rules.fund_entries(amount)
        )
        if movement.outcome is Outcome.ACCOUNT_NOT_FOUND:
            raise _no_account(account_id)
        if payment_reference and movement.fingerprint not in (None, fingerprint):
            raise AlreadyExists(
                f"The payment {payment_reference!r} was already recorded for another account "
                "or amount; a payment funds once.",
                reason="PAYMENT_ALREADY_RECORDED",
            )
        _refused(movement, key, fingerprint)
        if movement.outcome is Outcome.ACCOUNT_SUSPENDED:
            assert movement.account is not None
            raise rules.not_active(movement.account.account, "be funded")
        assert movement.transaction is not None and movement.account is not None
        if movement.outcome is Outcome.DONE:
            log.info("account %s funded with %d micros", account_id, amount)
        return movement.transaction, movement.account

    async def reserve(
        self, account_id: str, amount: int, key: str, reference: str, ttl_seconds: int | None = None
    ) -> Hold:
        """Put a hold on the account, open until captured, released or `ttl_seconds` old
        (default: the installation's hold TTL). The TTL is not part of the request's
        fingerprint: a retry that states it otherwise is still the same reserve."""
        rules.validate_amount(amount)
        rules.validate_idempotency_key(key)
        ttl = rules.validate_hold_ttl(
            self._hold_ttl_seconds if ttl_seconds is None else ttl_seconds
        )
        if len(reference) > 200:
            raise InvalidArgument("reference is longer than 200 characters.")
        fingerprint = rules.fingerprint(TransactionKind.RESERVE, account_id, amount, reference)
        movement = await self._movements.reserve(
            account_id, amount, key, fingerprint, reference, rules.reserve_entries(amount), ttl
        )
        if movement.outcome is Outcome.ACCOUNT_NOT_FOUND:
            raise _no_account(account_id)
        _refused(movement, key, fingerprint)
        if movement.outcome is Outcome.ACCOUNT_SUSPENDED:
            assert movement.account is not None
            raise rules.not_active(movement.account.account, "take new charges")
        if movement.outcome is Outcome.INSUFFICIENT_FUNDS:
            assert movement.account is not None
            view = movement.account
            rules.ensure_can_reserve(view.balances, view.account.credit_limit_micros, amount)
            raise AssertionError(f"the account database refused a reserve the rules allow: {view}")
        if movement.hold is None:  # a key recorded for a movement that made no hold
            raise _key_reused(key)
        return movement.hold

    async def capture(
        self, hold_id: str, amount: int, key: str, usage: UsageSummary | None = None
    ) -> Hold:
        """Capture `amount` of the hold. With `usage` (what it paid for, for the bill),
        the summary is kept right after the capture, by a statement of its own; a retry
        of the same Capture writes it if the first attempt did not."""
        rules.validate_idempotency_key(key)
        if usage is not None:
            usage = validate_usage(usage)
        fingerprint = rules.fingerprint(TransactionKind.CAPTURE, hold_id, amount)
        hold = await self._settle(
            hold_id, key, fingerprint, lambda hold: rules.capture_settlement(hold, amount)
        )
        if usage is not None and hold.status is HoldStatus.CAPTURED:
            await self.invoices.record_usage(hold_id, usage)
        return hold

    async def get_hold(self, hold_id: str) -> Hold:
        """A hold as it stands now (its amounts captured and released so far)."""
        if not hold_id:
            raise InvalidArgument("hold_id is required: name the hold to read.")
        hold = await self._movements.hold(hold_id)
        if hold is None:
            raise _no_hold(hold_id)
        return hold

    async def release(self, hold_id: str, key: str) -> Hold:
        rules.validate_idempotency_key(key)
        fingerprint = rules.fingerprint(TransactionKind.RELEASE, hold_id)
        return await self._settle(hold_id, key, fingerprint, rules.release_settlement)

    async def expire_holds(self, batch: int = 100) -> int:
        """Release a batch of open holds past their expiry; how many this call released.
        Each with its own key (`rules.expiry_key`) under the account's lock, so that
        several billing managers sweeping at once release each hold once; a hold settled
        in the meantime is left as it is."""
        released = 0
        for hold_id in await self._movements.expired_holds(batch):
            hold = await self._movements.hold(hold_id)
            if hold is None or hold.status is not HoldStatus.OPEN:
                continue
            key = rules.expiry_key(hold_id)
            fingerprint = rules.fingerprint(TransactionKind.RELEASE, hold_id)
            movement = await self._movements.settle(
                hold, key, fingerprint, rules.release_settlement(hold)
            )
            if movement.outcome is Outcome.DONE:
                released += 1
                log.info(
                    "hold %s of account %s expired: %d micros released",
                    hold_id,
                    hold.account_id,
                    hold.amount_micros,
                )
        return released

    async def _settle(
        self,
        hold_id: str,
        key: str,
        fingerprint: str,
        settlement_of: Callable[[Hold], Settlement],
    ) -> Hold:
        """Capture or release an open hold. Its amount and account never change, so they
        are read first (or known from this process's reserve), without a lock; the
        movement then checks the key and that the hold is still open under the account's
        lock. A request the rules refuse (more than the hold) is refused after those
        checks, so that a repeat or a closed hold answers first, as they would for any
        request."""
        hold = await self._movements.hold_to_settle(hold_id)
        if hold is None:
            raise _no_hold(hold_id)
        refusal: MeterlineError | None = None
        try:
            settlement: Settlement | None = settlement_of(hold)
        except InvalidArgument as error:
            settlement, refusal = None, error
        movement = await self._movements.settle(hold, key, fingerprint, settlement)
        if movement.outcome is Outcome.ACCOUNT_NOT_FOUND:
            raise _no_account(hold.account_id)
        if movement.outcome is Outcome.HOLD_NOT_FOUND:
            raise _no_hold(hold_id)
        _refused(movement, key, fingerprint)
        if movement.outcome is Outcome.CHECKED:
            assert refusal is not None
            raise refusal
        assert movement.hold is not None
        return movement.hold

    async def create_vouchers(
        self, count: int, amount: int, currency: str, expires_at: datetime | None
    ) -> tuple[str, list[str]]:
        """A batch of vouchers: its id and the codes, which are shown only here."""
        voucher_rules.validate_batch(count, amount, currency)
        secret = self._require_voucher_secret()
        batch_id = new_id("vch")
        codes = [voucher_rules.new_code() for _ in range(count)]
        await self._movements.add_vouchers(
            [
                Voucher(
                    voucher_rules.code_hash(secret, code), batch_id, amount, currency, expires_at
                )
                for code in codes
            ]
        )
        log.info("voucher batch %s: %d of %d micros %s", batch_id, count, amount, currency)
        return batch_id, codes

    def _require_voucher_secret(self) -> str:
        if not self._voucher_secret:
            raise FailedPrecondition(
                "Vouchers are not set up on this billing manager (no voucher secret).",
                reason="VOUCHERS_NOT_CONFIGURED",
            )
        return self._voucher_secret

    async def redeem_voucher(self, caller: str, account_id: str, code: str) -> Redemption:
        """Fund the account with the voucher, once per voucher (a repeat on the same
        account answers with the first funding). `caller` names the credential, whose
        refused codes are counted (GuessThrottle)."""
        self._throttle.check(caller, self._clock())
        try:
            voucher_hash = voucher_rules.code_hash(self._require_voucher_secret(), code)
        except InvalidArgument:
            self._throttle.refused(caller, self._clock())
            raise
        voucher = await self._movements.voucher(voucher_hash)
        if voucher is None:
            self._throttle.refused(caller, self._clock())
            raise NotFound("There is no such voucher code.", reason="VOUCHER_UNKNOWN")
        key = voucher_rules.idempotency_key(voucher_hash)
        fingerprint = rules.fingerprint(
            TransactionKind.FUND, account_id, voucher.amount_micros, "voucher"
        )
        movement = await self._movements.redeem(
            voucher,
            account_id,
            key,
            fingerprint,
            f"voucher {voucher.batch_id}",
            rules.fund_entries(voucher.amount_micros),
        )
        if movement.outcome is Outcome.ACCOUNT_NOT_FOUND:
            raise _no_account(account_id)
        outcome = movement.outcome
        if outcome is Outcome.RECORDED and movement.fingerprint != fingerprint:
            outcome = Outcome.VOUCHER_USED  # by another account
        refusal = _voucher_refusal(outcome, account_id)
        if refusal is not None:
            self._throttle.refused(caller, self._clock())
            raise refusal
        if outcome is Outcome.ACCOUNT_SUSPENDED:
            assert movement.account is not None
            raise rules.not_active(movement.account.account, "be funded")
        assert movement.transaction is not None and movement.account is not None
        if outcome is Outcome.DONE:
            log.info(
                "account %s funded with %d micros by a voucher of batch %s",
                account_id,
                voucher.amount_micros,
                voucher.batch_id,
            )
        return Redemption(
            movement.transaction, movement.account, already_redeemed=outcome is Outcome.RECORDED
        )

    async def adjust(
        self, account_id: str, amount: int, reason: str, key: str
    ) -> tuple[Transaction, AccountView]:
        """An operator's correction of the balance (signed), with its reason kept."""
        rules.validate_adjustment(amount)
        reason = rules.validate_reason(reason)
        rules.validate_idempotency_key(key)
        fingerprint = rules.fingerprint(TransactionKind.ADJUST, account_id, amount, reason)
        movement = await self._movements.adjust(
            account_id, amount, key, fingerprint, reason, rules.adjust_entries(amount)
        )
        if movement.outcome is Outcome.ACCOUNT_NOT_FOUND:
            raise _no_account(account_id)
        _refused(movement, key, fingerprint)
        assert movement.account is not None
        if movement.outcome is Outcome.ACCOUNT_CLOSED:
            raise rules.not_active(movement.account.account, "be adjusted")
        if movement.outcome is Outcome.INSUFFICIENT_FUNDS:
            view = movement.account
            rules.ensure_can_reserve(view.balances, view.account.credit_limit_micros, -amount)
            raise AssertionError(f"the account database refused an adjustment: {view}")
        assert movement.transaction is not None
        if movement.outcome is Outcome.DONE:
            log.info("account %s adjusted by %d micros: %s", account_id, amount, reason)
        return movement.transaction, movement.account

    async def refund(
        self, hold_id: str, amount: int, reason: str, key: str
    ) -> tuple[Transaction, AccountView]:
        """Give back part or all of a captured hold's charge; never more than it
        captured, over all its refunds."""
        rules.validate_amount(amount)
        reason = rules.validate_reason(reason)
        rules.validate_idempotency_key(key)
        hold = await self._movements.hold(hold_id)
        if hold is None:
            raise _no_hold(hold_id)
        fingerprint = rules.fingerprint(TransactionKind.REFUND, hold_id, amount, reason)
        movement = await self._movements.refund(
            hold, amount, key, fingerprint, reason, rules.refund_entries(amount)
        )
        if movement.outcome is Outcome.ACCOUNT_NOT_FOUND:
            raise _no_account(hold.account_id)
        if movement.outcome is Outcome.HOLD_NOT_FOUND:
            raise _no_hold(hold_id)
        _refused(movement, key, fingerprint)
        assert movement.account is not None
        if movement.outcome is Outcome.ACCOUNT_CLOSED:
            raise rules.not_active(movement.account.account, "be refunded")
        if movement.outcome is Outcome.HOLD_NOT_CAPTURED:
            raise FailedPrecondition(
                f"Hold {hold_id} was not captured; only a captured charge is refunded.",
                reason="HOLD_NOT_CAPTURED",
            )
        if movement.outcome is Outcome.REFUND_TOO_LARGE:
            raise FailedPrecondition(
                f"Hold {hold_id} captured {money.format_amount(hold.captured_micros)}; its "
                f"refunds cannot be more than that.",
                reason="REFUND_TOO_LARGE",
            )
        assert movement.transaction is not None
        if movement.outcome is Outcome.DONE:
            log.info("hold %s: %d micros refunded: %s", hold_id, amount, reason)
        return movement.transaction, movement.account

    async def set_account_status(self, account_id: str, status: AccountStatus) -> AccountView:
        """Suspend, reactivate or close an account. Setting the status it has changes
        nothing (a retry is safe)."""
        movement = await self._movements.set_status(account_id, status)
        if movement.outcome is Outcome.ACCOUNT_NOT_FOUND:
            raise _no_account(account_id)
        if movement.outcome is Outcome.ACCOUNT_CLOSED:
            raise FailedPrecondition(
                f"Account {account_id} is closed; a closed account stays closed.",
                reason="ACCOUNT_CLOSED",
            )
        assert movement.account is not None
        if movement.outcome is Outcome.BALANCE_NOT_ZERO:
            balances = movement.account.balances
            raise FailedPrecondition(
                f"Account {account_id} cannot be closed: its balance is "
                f"{money.format_amount(balances.balance_micros)} with "
                f"{money.format_amount(balances.held_micros)} held; only an account with a "
                "zero balance and no open holds is closed (refund or adjust it first).",
                reason="BALANCE_NOT_ZERO",
            )
        log.info("account %s is now %s", account_id, movement.account.account.status.value)
        return movement.account

    async def list_accounts(self, after_id: str, limit: int) -> list[AccountView]:
        """A page of accounts in id order, for operators (a read of its own)."""
        return await run_on_connection(
            self._engine, lambda conn: accounts_after(conn, after_id, limit)
        )

    async def entries(
        self,
        account_id: str,
        after_entry_id: int,
        limit: int,
        kinds: tuple[TransactionKind, ...] = (),
        start: datetime | None = None,
        end: datetime | None = None,
    ) -> list[LedgerLine]:
        if start is not None and end is not None and end <= start:
            raise InvalidArgument("end_time must be after start_time.")

        async def read(conn: AsyncConnection) -> list[LedgerLine]:
            if await self._store.account(conn, account_id) is None:
                raise _no_account(account_id)
            return await self._store.entries(
                conn, account_id, after_entry_id, limit, kinds, start, end
            )

        return await run_on_connection(self._engine, read)
