"""The double-entry ledger's rules: which entries each movement writes, and when a
movement is allowed. Every transaction's entries sum to zero.

Ledger accounts of one customer account:
    CUSTOMER_AVAILABLE  funds the customer may still spend
    CUSTOMER_HELD       funds under open credit holds
and the house's:
    FUNDING             where prepaid funds come from (goes negative as they come in)
    REVENUE             captured charges

balance = AVAILABLE + HELD = funded - captured;  available = AVAILABLE = balance - held.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime

from meterline.kernel import money
from meterline.kernel.errors import FailedPrecondition, InsufficientFunds, InvalidArgument

MAX_IDEMPOTENCY_KEY_LENGTH = 200
MAX_DISPLAY_NAME_LENGTH = 200


class LedgerAccount(enum.StrEnum):
    CUSTOMER_AVAILABLE = "CUSTOMER_AVAILABLE"
    CUSTOMER_HELD = "CUSTOMER_HELD"
    FUNDING = "FUNDING"
    REVENUE = "REVENUE"
    ADJUSTMENTS = "ADJUSTMENTS"


class TransactionKind(enum.StrEnum):
    FUND = "FUND"
    RESERVE = "RESERVE"
    CAPTURE = "CAPTURE"
    RELEASE = "RELEASE"
    ADJUST = "ADJUST"
    REFUND = "REFUND"


class AccountStatus(enum.StrEnum):
    ACTIVE = "ACTIVE"
    SUSPENDED = "SUSPENDED"
    """Cannot take new holds, be funded or redeem vouchers; may be reactivated."""
    CLOSED = "CLOSED"
    """For good; only an account with a zero balance and no open holds is closed."""


class HoldStatus(enum.StrEnum):
    OPEN = "OPEN"
    CAPTURED = "CAPTURED"
    RELEASED = "RELEASED"


Entry = tuple[LedgerAccount, int]


@dataclass(frozen=True, slots=True)
class Account:
    account_id: str
    display_name: str
    currency: str
    credit_limit_micros: int
    status: AccountStatus
    created_at: datetime

    @property
    def postpaid(self) -> bool:
        """An account with a credit limit is postpaid: available may go down to minus
        the limit, and the customer pays afterwards."""
        return self.credit_limit_micros > 0


def not_active(account: Account, action: str) -> FailedPrecondition:
    """The refusal of `action` ("take new charges", "be funded") on an account that is
    not active."""
    if account.status is AccountStatus.CLOSED:
        return FailedPrecondition(
            f"Account {account.account_id} is closed; it cannot {action}.",
            reason="ACCOUNT_CLOSED",
        )
    return FailedPrecondition(
        f"Account {account.account_id} is suspended; it cannot {action}.",
        reason="ACCOUNT_SUSPENDED",
    )


@dataclass(frozen=True, slots=True)
class Balances:
    available_micros: int
    held_micros: int

    @property
    def balance_micros(self) -> int:
        return money.add(self.available_micros, self.held_micros)


@dataclass(frozen=True, slots=True)
class AccountView:
    account: Account
    balances: Balances


@dataclass(frozen=True, slots=True)
class Hold:
    hold_id: str
    account_id: str
    amount_micros: int
    captured_micros: int
    released_micros: int
    status: HoldStatus
    reference: str
    created_at: datetime
    expires_at: datetime
    """When an open hold is released by the sweep."""


@dataclass(frozen=True, slots=True)
class Transaction:
    transaction_id: str
    kind: TransactionKind
    account_id: str
    amount_micros: int
    idempotency_key: str
    created_at: datetime
    reference: str = ""
    """A hold's reference, a voucher batch, an adjustment's or a refund's reason."""


@dataclass(frozen=True, slots=True)
class LedgerLine:
    entry_id: int
    transaction_id: str
    kind: TransactionKind
    account_id: str
    ledger_account: LedgerAccount
    amount_micros: int
    hold_id: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class InvoiceLine:
    """A bill's line: one capture (the bill itself: domain/invoices.py)."""

    reference: str
    amount_micros: int
    captured_at: datetime
    transaction_id: str


def fund_entries(amount: int) -> list[Entry]:
    return balanced([(LedgerAccount.FUNDING, -amount), (LedgerAccount.CUSTOMER_AVAILABLE, amount)])


def adjust_entries(amount: int) -> list[Entry]:
    """An operator's correction: `amount` (signed) onto the customer's available funds,
    the other side on the house's ADJUSTMENTS account."""
    return balanced(
        [(LedgerAccount.ADJUSTMENTS, -amount), (LedgerAccount.CUSTOMER_AVAILABLE, amount)]
    )


def refund_entries(amount: int) -> list[Entry]:
    """Part of a captured charge back from revenue to the customer's available funds."""
    return balanced([(LedgerAccount.REVENUE, -amount), (LedgerAccount.CUSTOMER_AVAILABLE, amount)])


MAX_REASON_LENGTH = 200


def validate_reason(reason: str) -> str:
    """An adjustment's or a refund's reason: kept on its transaction for the customer and
    the auditor."""
    if not reason.strip():
        raise InvalidArgument("reason is empty: say why, for the customer and the auditor.")
    if len(reason) > MAX_REASON_LENGTH:
        raise InvalidArgument(f"reason is longer than {MAX_REASON_LENGTH} characters.")
    return reason.strip()


def validate_adjustment(amount: int) -> int:
    if amount == 0:
        raise InvalidArgument("amount_micros must not be 0: an adjustment moves money.")
    return money.check_micros(amount)


def reserve_entries(amount: int) -> list[Entry]:
    return balanced(
        [(LedgerAccount.CUSTOMER_AVAILABLE, -amount), (LedgerAccount.CUSTOMER_HELD, amount)]
    )


def capture_entries(held: int, captured: int) -> list[Entry]:
    """Capture `captured` of a hold of `held` and give the rest back."""
    released = held - captured
    entries: list[Entry] = [(LedgerAccount.CUSTOMER_HELD, -held)]
    if captured:
        entries.append((LedgerAccount.REVENUE, captured))
    if released:
        entries.append((LedgerAccount.CUSTOMER_AVAILABLE, released))
    return balanced(entries)


def release_entries(held: int) -> list[Entry]:
    return balanced(
        [(LedgerAccount.CUSTOMER_HELD, -held), (LedgerAccount.CUSTOMER_AVAILABLE, held)]
    )


@dataclass(frozen=True, slots=True)
class Settlement:
    """How an open hold is closed: the transaction, the hold's new state, the entries."""

    kind: TransactionKind
    status: HoldStatus
    captured_micros: int
    released_micros: int
    entries: list[Entry]

    @property
    def amount_micros(self) -> int:
        """The transaction's amount: what a capture captured, what a release gave back."""
        if self.kind is TransactionKind.CAPTURE:
            return self.captured_micros
        return self.released_micros


def capture_settlement(hold: Hold, amount: int) -> Settlement:
    """Capture `amount` of an open hold; the rest goes back to the available balance."""
    captured = validate_capture(hold, amount)
    return Settlement(
        kind=TransactionKind.CAPTURE,
        status=HoldStatus.CAPTURED,
        captured_micros=captured,
        released_micros=money.add(hold.amount_micros, -captured),
        entries=capture_entries(hold.amount_micros, captured),
    )


def release_settlement(hold: Hold) -> Settlement:
    """Give all of an open hold back."""
    return Settlement(
        kind=TransactionKind.RELEASE,
        status=HoldStatus.RELEASED,
        captured_micros=0,
        released_micros=hold.amount_micros,
        entries=release_entries(hold.amount_micros),
    )


def balanced(entries: list[Entry]) -> list[Entry]:
    if sum(amount for _, amount in entries) != 0:
        raise AssertionError(f"unbalanced ledger transaction: {entries}")
    return entries


def ensure_can_reserve(balances: Balances, credit_limit_micros: int, amount: int) -> None:
    """A reserve may take the available balance down to minus the credit limit, no
    further. The account database applies the same comparison under the account's row
    lock (`ledger_reserve`, migration 0002) and reports a refusal with the balances it
    saw; this function then says why."""
    if balances.available_micros - amount < -credit_limit_micros:
        raise InsufficientFunds(
            f"Insufficient funds: {money.format_amount(amount)} is needed but only "
            f"{money.format_amount(balances.available_micros + credit_limit_micros)} is "
            "available. Fund the account and try again."
        )


def validate_amount(amount: int, field: str = "amount_micros") -> int:
    if amount <= 0:
        raise InvalidArgument(f"{field} must be more than 0 (got {amount}).")
    return money.check_micros(amount)


def validate_capture(hold: Hold, amount: int) -> int:
    if amount < 0:
        raise InvalidArgument(f"amount_micros cannot be negative (got {amount}).")
    if amount > hold.amount_micros:
        raise InvalidArgument(
            f"Cannot capture {amount} micro-units from a hold of {hold.amount_micros}."
        )
    return amount


MAX_HOLD_TTL_SECONDS = 30 * 24 * 3600


def validate_hold_ttl(seconds: int) -> int:
    """A hold's time to live: 1 second to 30 days."""
    if not 1 <= seconds <= MAX_HOLD_TTL_SECONDS:
        raise InvalidArgument(
            f"ttl must be 1 second to 30 days (got {seconds} seconds): a hold that never "
            "expires would keep the money locked if its session and service manager vanish."
        )
    return seconds


def expiry_key(hold_id: str) -> str:
    """The key the sweep releases an expired hold with: one per hold, so it is released
    once, whichever billing manager gets there first."""
    return f"hold-expired:{hold_id}"


def validate_idempotency_key(key: str) -> str:
    if not key or not key.strip():
        raise InvalidArgument(
            "idempotency_key is missing: every money movement needs a unique key so that "
            "a retry cannot move money twice."
        )
    if len(key) > MAX_IDEMPOTENCY_KEY_LENGTH:
        raise InvalidArgument(
            f"idempotency_key is longer than {MAX_IDEMPOTENCY_KEY_LENGTH} characters."
        )
    return key


def validate_new_account(display_name: str, currency: str, credit_limit_micros: int) -> None:
    if not display_name.strip():
        raise InvalidArgument("display_name is empty: give the account a name.")
    if len(display_name) > MAX_DISPLAY_NAME_LENGTH:
        raise InvalidArgument(f"display_name is longer than {MAX_DISPLAY_NAME_LENGTH} characters.")
    try:
        money.check_currency(currency)
    except money.AmountError as exc:
        raise InvalidArgument(str(exc)) from exc
    if credit_limit_micros < 0:
        raise InvalidArgument("credit_limit_micros cannot be negative.")
    money.check_micros(credit_limit_micros)


def fingerprint(kind: TransactionKind, *parts: object) -> str:
    """What a request asked for, to tell a true retry from a reused key."""
    return "|".join((kind.value, *(str(part) for part in parts)))
