"""What a bill shows, in words: one `InvoiceView` of strings made from the wire
`Invoice`, shared by the HTML and the PDF so that both say exactly the same. Amounts keep
every micro-unit (`format_money(..., exact=True)`): a bill's figures are the ledger's."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from babel import Locale, UnknownLocaleError
from babel.dates import format_datetime
from babel.numbers import format_decimal
from google.protobuf.timestamp_pb2 import Timestamp

from meterline.billing.v1 import billing_pb2
from meterline.kernel.money import format_money

DEFAULT_LOCALE = "en_GB"
DEFAULT_TIME_ZONE = "UTC"

_KINDS = {
    billing_pb2.TRANSACTION_KIND_FUND: "Funding",
    billing_pb2.TRANSACTION_KIND_ADJUST: "Adjustment",
    billing_pb2.TRANSACTION_KIND_REFUND: "Refund",
}
_UNIT_NAMES = {"SECOND": "seconds", "BYTE": "bytes", "MESSAGE": "messages", "EVENT": "events"}
_SINGULAR = {"seconds": "second", "bytes": "byte", "messages": "message", "events": "event"}


class RenderError(ValueError):
    """A locale or time zone a bill cannot be shown in."""


@dataclass(frozen=True, slots=True)
class SessionRow:
    session_id: str
    start: str
    endpoint: str
    duration: str
    units: str
    amount: str


@dataclass(frozen=True, slots=True)
class ChargeRow:
    title: str
    """"Voice", "File download", "Application game-42", "Other charges"."""
    units: str
    amount: str
    sessions: tuple[SessionRow, ...]


@dataclass(frozen=True, slots=True)
class MovementRow:
    date: str
    kind: str
    description: str
    amount: str


@dataclass(frozen=True, slots=True)
class InvoiceView:
    number: str
    invoice_id: str
    account_name: str
    account_id: str
    currency: str
    period_start: str
    period_end: str
    issued: str
    time_zone: str
    opening_balance: str
    funded: str
    adjusted: str
    refunded: str
    total: str
    """The captured charges of the period: the sum of the charges and of the lines."""
    closing_balance: str
    charges: tuple[ChargeRow, ...]
    movements: tuple[MovementRow, ...]


def _locale(name: str) -> str:
    try:
        Locale.parse(name)
    except (UnknownLocaleError, ValueError, TypeError) as error:
        raise RenderError(f"{name!r} is not a locale: use one like en_GB or de_DE") from error
    return name


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as error:
        raise RenderError(
            f"{name!r} is not a time zone: use an IANA name like UTC or Europe/Paris"
        ) from error


def check_place(locale: str, time_zone: str) -> None:
    """Refuse (RenderError) a locale or time zone no bill can be shown in, before the bill
    is fetched."""
    _locale(locale)
    _zone(time_zone)


def _duration(value: timedelta) -> str:
    """'0:01:05', '12:00:00' (hours may pass 24)."""
    seconds = int(value.total_seconds())
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"


def _title(charge: billing_pb2.InvoiceCharge) -> str:
    if charge.service_type == "OTHER":
        return "Other charges"
    name = charge.service_type.replace("_", " ").capitalize()
    return f"{name} {charge.application_id}" if charge.application_id else name


def invoice_view(
    invoice: billing_pb2.Invoice,
    *,
    locale: str = DEFAULT_LOCALE,
    time_zone: str = DEFAULT_TIME_ZONE,
) -> InvoiceView:
    """The bill in words, in `locale` (numbers, dates) and `time_zone` (IANA name)."""
    locale = _locale(locale)
    zone = _zone(time_zone)
    currency = invoice.currency

    def money(micros: int) -> str:
        return format_money(micros, currency, exact=True, locale=locale)

    def when(stamp: Timestamp) -> str:
        moment = stamp.ToDatetime(tzinfo=UTC)
        return format_datetime(moment, "medium", tzinfo=zone, locale=locale).replace("\u202f", " ")

    def units(count: int, unit: str) -> str:
        if not unit:
            return ""
        noun = _UNIT_NAMES.get(unit, unit.lower())
        if count == 1:
            noun = _SINGULAR.get(noun, noun)
        return f"{format_decimal(count, locale=locale)} {noun}"

    def created(stamp: Timestamp) -> datetime:
        return stamp.ToDatetime(tzinfo=UTC)

    charges = tuple(
        ChargeRow(
            title=_title(charge),
            units=units(charge.units, charge.unit),
            amount=money(charge.amount_micros),
            sessions=tuple(
                SessionRow(
                    session_id=session.session_id,
                    start=when(session.start_time),
                    endpoint=session.endpoint,
                    duration=_duration(session.duration.ToTimedelta()),
                    units=units(session.units, charge.unit),
                    amount=money(session.amount_micros),
                )
                for session in charge.sessions
            ),
        )
        for charge in invoice.charges
    )
    movements = tuple(
        MovementRow(
            date=when(movement.create_time),
            kind=_KINDS.get(movement.kind, "Movement"),
            description=movement.description,
            amount=money(movement.amount_micros),
        )
        for movement in sorted(invoice.movements, key=lambda m: created(m.create_time))
    )
    return InvoiceView(
        number=invoice.number or invoice.invoice_id,
        invoice_id=invoice.invoice_id,
        account_name=invoice.account_name,
        account_id=invoice.account_id,
        currency=currency,
        period_start=when(invoice.period_start),
        period_end=when(invoice.period_end),
        issued=when(invoice.create_time),
        time_zone=time_zone,
        opening_balance=money(invoice.opening_balance_micros),
        funded=money(invoice.funded_micros),
        adjusted=money(invoice.adjusted_micros),
        refunded=money(invoice.refunded_micros),
        total=money(invoice.total_micros),
        closing_balance=money(invoice.closing_balance_micros),
        charges=charges,
        movements=movements,
    )
