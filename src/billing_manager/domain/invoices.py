"""The rules of a bill (claims 56-57): which period may be billed, how its number reads,
and how the ledger transactions and usage summaries of a period become its lines,
charges per service type and application, sessions, movements and balances. Pure: the
store hands in what the account database holds, this module adds it up.

The identity every bill satisfies, checked here before it is issued:

    closing = opening + funded + adjusted + refunded - captured

where `closing` is also the balance of the ledger entries before period_end, and
captured = sum of the lines = sum of the charges = sum of their sessions.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from billing_manager.domain.ledger import InvoiceLine, TransactionKind
from meterline.kernel import money
from meterline.kernel.errors import FailedPrecondition, InvalidArgument

OTHER = "OTHER"
"""The service type of a capture that came without a usage summary."""

NUMBER_DIGITS = 6
_NUMBER = re.compile(r"INV-[0-9]{4}-[0-9]{6,}")

MAX_SESSION_ID_LENGTH = 200
MAX_SERVICE_TYPE_LENGTH = 64
MAX_ENDPOINT_LENGTH = 256
MAX_APPLICATION_ID_LENGTH = 256
MAX_UNIT_LENGTH = 32
MAX_DESCRIPTION_LENGTH = 400
MAX_UNITS = 10**15
"""Units one usage summary may name: a bill sums many of them in int64."""


@dataclass(frozen=True, slots=True)
class UsageSummary:
    """What a captured hold paid for, as the service manager reported it on Capture."""

    session_id: str
    service_type: str
    endpoint: str
    application_id: str
    units: int
    unit: str
    start_time: datetime
    end_time: datetime
    charged_micros: int
    """The session's whole charge, over all its holds."""


@dataclass(frozen=True, slots=True)
class PeriodTransaction:
    """One ledger transaction of the account in the period, as a bill sees it."""

    transaction_id: str
    kind: TransactionKind
    created_at: datetime
    customer_micros: int
    """Its signed effect on the balance: the sum of its CUSTOMER_* entries."""
    revenue_micros: int
    """The sum of its REVENUE entries (a capture's charge)."""
    hold_id: str
    reference: str
    """A hold's reference, a voucher batch, an adjustment's or a refund's reason."""
    idempotency_key: str
    usage: UsageSummary | None = None
    """A capture's usage summary, if its Capture carried one."""


@dataclass(frozen=True, slots=True)
class BillSession:
    session_id: str
    start_time: datetime
    endpoint: str
    duration: timedelta
    units: int
    amount_micros: int
    """What its captures in the period took."""


@dataclass(frozen=True, slots=True)
class BillCharge:
    service_type: str
    application_id: str
    unit: str
    units: int
    amount_micros: int
    sessions: tuple[BillSession, ...]


@dataclass(frozen=True, slots=True)
class BillMovement:
    kind: TransactionKind
    amount_micros: int
    """Signed: more than 0 credited the account."""
    created_at: datetime
    description: str
    transaction_id: str


@dataclass(frozen=True, slots=True)
class BillContent:
    """Everything a bill says about its period."""

    opening_balance_micros: int
    funded_micros: int
    adjusted_micros: int
    refunded_micros: int
    captured_micros: int
    closing_balance_micros: int
    lines: tuple[InvoiceLine, ...]
    """One per capture, oldest first."""
    charges: tuple[BillCharge, ...]
    movements: tuple[BillMovement, ...]
    """Fundings (and vouchers), adjustments and refunds, oldest first."""


@dataclass(frozen=True, slots=True)
class Invoice:
    """An issued bill: never changes."""

    invoice_id: str
    number: str
    account_id: str
    account_name: str
    currency: str
    period_start: datetime
    period_end: datetime
    created_at: datetime
    content: BillContent

    @property
    def total_micros(self) -> int:
        return self.content.captured_micros


def validate_period(start: datetime, end: datetime, now: datetime) -> None:
    """A bill covers [start, end), a period that has ended: what is billed never moves."""
    if end <= start:
        raise InvalidArgument("period_start must be before period_end.")
    if end > now:
        raise FailedPrecondition(
            f"The period ends at {end.isoformat()}, which is still to come; a bill is "
            "issued once its period has ended (choose a period_end up to now).",
            reason="PERIOD_NOT_ENDED",
        )


def invoice_number(year: int, sequence: int) -> str:
    """'INV-2026-000123': the installation's `sequence`-th bill issued in `year`."""
    if sequence < 1 or not 1 <= year <= 9999:
        raise ValueError(f"no bill number for year {year}, sequence {sequence}")
    return f"INV-{year:04d}-{sequence:0{NUMBER_DIGITS}d}"


def is_invoice_number(text: str) -> bool:
    """True for 'INV-2026-000123' (an id like 'inv_…' is not a number)."""
    return _NUMBER.fullmatch(text) is not None


def validate_usage(usage: UsageSummary) -> UsageSummary:
    """A usage summary the bill can show: named, within its lengths, not negative; one
    that ends before it started is taken as ending when it started."""
    for field, value, limit in (
        ("session_id", usage.session_id, MAX_SESSION_ID_LENGTH),
        ("service_type", usage.service_type, MAX_SERVICE_TYPE_LENGTH),
        ("endpoint", usage.endpoint, MAX_ENDPOINT_LENGTH),
        ("application_id", usage.application_id, MAX_APPLICATION_ID_LENGTH),
        ("unit", usage.unit, MAX_UNIT_LENGTH),
    ):
        if len(value) > limit:
            raise InvalidArgument(f"usage.{field} is longer than {limit} characters.")
        if value and not value.isprintable():
            raise InvalidArgument(f"usage.{field} may not contain control characters.")
    if not usage.session_id.strip():
        raise InvalidArgument("usage.session_id is empty: name the session the hold paid for.")
    if not usage.service_type.strip():
        raise InvalidArgument("usage.service_type is empty: name the media channel, e.g. VOICE.")
    if usage.service_type == OTHER:
        raise InvalidArgument(f"usage.service_type {OTHER!r} is kept for captures without usage.")
    if usage.units < 0 or usage.charged_micros < 0:
        raise InvalidArgument("usage.units and usage.charged_micros cannot be negative.")
    if usage.units > MAX_UNITS:
        raise InvalidArgument(f"usage.units is more than {MAX_UNITS:,}, the most a summary names.")
    money.check_micros(usage.charged_micros)
    if usage.end_time < usage.start_time:
        # Clocks of two instances (the one that started the session, the one that settled
        # it) may disagree a little: the summary is kept as a session of no duration
        # rather than refusing the capture it rides on.
        return replace(usage, end_time=usage.start_time)
    return usage


def _description(transaction: PeriodTransaction) -> str:
    if transaction.reference:
        text = transaction.reference
    elif transaction.idempotency_key.startswith("payment:"):
        text = f"payment {transaction.idempotency_key.removeprefix('payment:')}"
    else:
        text = {
            TransactionKind.FUND: "funding",
            TransactionKind.ADJUST: "adjustment",
            TransactionKind.REFUND: "refund",
        }.get(transaction.kind, transaction.kind.value.lower())
    if transaction.kind is TransactionKind.REFUND and transaction.hold_id:
        text = f"{text} (hold {transaction.hold_id})"
    return text[:MAX_DESCRIPTION_LENGTH]


@dataclass
class _SessionSum:
    usage: UsageSummary | None
    session_id: str
    first_capture: datetime
    amount_micros: int = 0

    def session(self) -> BillSession:
        if self.usage is None:
            return BillSession(
                self.session_id, self.first_capture, "", timedelta(0), 0, self.amount_micros
            )
        usage = self.usage
        return BillSession(
            session_id=usage.session_id,
            start_time=usage.start_time,
            endpoint=usage.endpoint,
            duration=usage.end_time - usage.start_time,
            units=usage.units,
            amount_micros=self.amount_micros,
        )


def _charges(captures: Iterable[PeriodTransaction]) -> tuple[BillCharge, ...]:
    """Captures grouped per (service type, application, unit), then per session: a
    session with several holds is one session whose amount is the sum of its captures,
    its units and times from its latest summary."""
    groups: dict[tuple[str, str, str], dict[str, _SessionSum]] = {}
    for capture in captures:
        usage = capture.usage
        if usage is None:
            key = (OTHER, "", "")
            session_id = capture.reference or capture.hold_id
        else:
            key = (usage.service_type, usage.application_id, usage.unit)
            session_id = usage.session_id
        sessions = groups.setdefault(key, {})
        found = sessions.setdefault(session_id, _SessionSum(usage, session_id, capture.created_at))
        if usage is not None:
            found.usage = usage  # captures come oldest first: the latest summary wins
        found.amount_micros = money.add(found.amount_micros, capture.revenue_micros)
    charges = []
    for (service_type, application_id, unit), sums in sorted(
        groups.items(), key=lambda item: (item[0][0] == OTHER, item[0])
    ):
        rows = tuple(
            sorted(
                (found.session() for found in sums.values()),
                key=lambda row: (row.start_time, row.session_id),
            )
        )
        charges.append(
            BillCharge(
                service_type=service_type,
                application_id=application_id,
                unit=unit,
                units=sum(row.units for row in rows),
                amount_micros=money.add(*(row.amount_micros for row in rows)),
                sessions=rows,
            )
        )
    return tuple(charges)


def build_bill(
    opening_balance_micros: int,
    transactions: Sequence[PeriodTransaction],
    ledger_closing_balance_micros: int,
) -> BillContent:
    """The bill of a period from the account's opening balance, its transactions in the
    period (oldest first) and the balance of its entries before period_end, which the
    bill's own sums must reach exactly (else AssertionError: the bill is not issued)."""
    ordered = sorted(transactions, key=lambda t: (t.created_at, t.transaction_id))
    funded = adjusted = refunded = 0
    captures: list[PeriodTransaction] = []
    movements: list[BillMovement] = []
    for transaction in ordered:
        kind = transaction.kind
        if kind is TransactionKind.CAPTURE:
            if transaction.customer_micros != -transaction.revenue_micros:
                raise AssertionError(f"capture {transaction.transaction_id} is not balanced")
            if transaction.revenue_micros:
                captures.append(transaction)
            continue
        if kind in (TransactionKind.RESERVE, TransactionKind.RELEASE):
            if transaction.customer_micros != 0:
                raise AssertionError(f"{kind} {transaction.transaction_id} moved the balance")
            continue
        if kind is TransactionKind.FUND:
            funded = money.add(funded, transaction.customer_micros)
        elif kind is TransactionKind.ADJUST:
            adjusted = money.add(adjusted, transaction.customer_micros)
        elif kind is TransactionKind.REFUND:
            refunded = money.add(refunded, transaction.customer_micros)
        movements.append(
            BillMovement(
                kind=kind,
                amount_micros=transaction.customer_micros,
                created_at=transaction.created_at,
                description=_description(transaction),
                transaction_id=transaction.transaction_id,
            )
        )
    lines = tuple(
        InvoiceLine(
            reference=capture.reference,
            amount_micros=capture.revenue_micros,
            captured_at=capture.created_at,
            transaction_id=capture.transaction_id,
        )
        for capture in captures
    )
    captured = money.add(*(line.amount_micros for line in lines))
    charges = _charges(captures)
    if money.add(*(charge.amount_micros for charge in charges)) != captured:
        raise AssertionError("the bill's charges do not add up to its captures")
    closing = money.add(opening_balance_micros, funded, adjusted, refunded, -captured)
    if closing != ledger_closing_balance_micros:
        raise AssertionError(
            f"the bill's closing balance {closing} is not the ledger's "
            f"{ledger_closing_balance_micros}: a transaction of the period is missing"
        )
    return BillContent(
        opening_balance_micros=opening_balance_micros,
        funded_micros=funded,
        adjusted_micros=adjusted,
        refunded_micros=refunded,
        captured_micros=captured,
        closing_balance_micros=closing,
        lines=lines,
        charges=charges,
        movements=tuple(movements),
    )
