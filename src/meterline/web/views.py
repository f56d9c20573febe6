"""What the page shows, from the services' messages: amounts in the account's currency
(kernel/money.py, babel), quantities in their unit (cli/prices.py), times as ISO 8601 in
UTC for the browser to show in its own time zone (static/page.js, Intl). No arithmetic on
amounts here: every amount shown is one the services computed."""

from __future__ import annotations

from datetime import UTC
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from meterline.billing.v1 import billing_pb2
from meterline.cli.prices import quantity
from meterline.kernel.money import format_money
from meterline.rating.v1 import types_pb2
from meterline.service.v1 import service_pb2

_SERVICE_NAMES = {
    types_pb2.VOICE: "Voice call",
    types_pb2.VIDEO: "Video call",
    types_pb2.INSTANT_MESSAGING: "Messaging",
    types_pb2.WEB_BROWSING: "Web browsing",
    types_pb2.FILE_DOWNLOAD: "File download",
    types_pb2.APPLICATION: "Application",
}
_REASONS = {
    service_pb2.TERMINATION_REASON_CLIENT_STOP: "stopped",
    service_pb2.TERMINATION_REASON_BALANCE_EXHAUSTED: "balance used up",
    service_pb2.TERMINATION_REASON_LIVENESS_TIMEOUT: "device went silent",
    service_pb2.TERMINATION_REASON_OPERATOR: "ended by the operator",
    service_pb2.TERMINATION_REASON_GATEWAY: "ended by the network",
    service_pb2.TERMINATION_REASON_START_FAILED: "did not start",
}


def money(micros: int, currency: str) -> str:
    return format_money(micros, currency)


def iso(stamp: Timestamp) -> str:
    """An ISO 8601 time in UTC ('' when unset), for a <time datetime=...> the browser shows
    in its own zone."""
    if not stamp.seconds and not stamp.nanos:
        return ""
    return stamp.ToDatetime(tzinfo=UTC).isoformat(timespec="seconds")


def service_name(service_type: types_pb2.ServiceType.ValueType) -> str:
    return _SERVICE_NAMES.get(service_type, "Service")


def reason_text(reason: service_pb2.TerminationReason.ValueType) -> str:
    return _REASONS.get(reason, "ended")


def account_view(account: billing_pb2.Account) -> dict[str, Any]:
    currency = account.currency
    return {
        "account_id": account.account_id,
        "name": account.display_name,
        "currency": currency,
        "balance": money(account.balance_micros, currency),
        "balance_micros": account.balance_micros,
        "available": money(account.available_micros, currency),
        "available_micros": account.available_micros,
        "postpaid": account.postpaid,
        "credit_limit": money(account.credit_limit_micros, currency),
        "suspended": account.status == billing_pb2.ACCOUNT_STATUS_SUSPENDED,
    }


def session_view(session: service_pb2.ActiveSession) -> dict[str, Any]:
    """A running session as the page first shows it (its charge comes with its events)."""
    return {
        "session_id": session.session_id,
        "service": service_name(session.service_type),
        "endpoint": session.endpoint,
        "started_at": iso(session.started_at),
        "unit": session.rate.unit,
        "units": quantity(session.rate.unit, session.used_units),
        "used_units": session.used_units,
    }


def event_view(
    event: service_pb2.AccountEvent, currency: str, unit: types_pb2.Unit.ValueType | None
) -> dict[str, Any]:
    """One WatchAccount event as the page's live script gets it (JSON)."""
    view: dict[str, Any] = {
        "session_id": event.session_id,
        "available": money(event.balance_micros, currency),
        "available_micros": event.balance_micros,
        "charged": money(event.charged_micros, currency),
        "charged_micros": event.charged_micros,
        "used_units": event.used_units,
        "units": str(event.used_units) if unit is None else quantity(unit, event.used_units),
        "low_balance": event.low_balance,
        "seconds_left": (
            event.estimated_time_left.seconds if event.HasField("estimated_time_left") else None
        ),
        "final_units": bool(
            event.HasField("termination") and event.termination.final_unit_indication
        ),
        "ended": bool(event.HasField("termination") and event.termination.ended),
        "reason": reason_text(event.termination.reason) if event.HasField("termination") else "",
        "event_time": iso(event.event_time),
    }
    return view


def record_view(record: service_pb2.ServiceRecord, currency: str) -> dict[str, Any]:
    return {
        "session_id": record.session_id,
        "service": service_name(record.service_type),
        "endpoint": record.endpoint,
        "started_at": iso(record.started_at),
        "ended_at": iso(record.ended_at),
        "duration_seconds": record.duration.seconds,
        "units": quantity(record.rate.unit, record.used_units),
        "charged": money(record.charged_micros, currency),
        "charged_micros": record.charged_micros,
        "reason": reason_text(record.termination_reason),
    }


CUSTOMER_SIDES = (
    billing_pb2.LEDGER_ACCOUNT_CUSTOMER_AVAILABLE,
    billing_pb2.LEDGER_ACCOUNT_CUSTOMER_HELD,
)
"""The ledger lines an end user is shown: their own money, available and held (the other
side of each transaction, funding, revenue and adjustments, is the operator's books)."""


def entry_view(entry: billing_pb2.LedgerEntry, currency: str) -> dict[str, Any]:
    kind = billing_pb2.TransactionKind.Name(entry.kind).removeprefix("TRANSACTION_KIND_")
    side = billing_pb2.LedgerAccount.Name(entry.ledger_account).removeprefix("LEDGER_ACCOUNT_")
    return {
        "entry_id": entry.entry_id,
        "kind": kind.lower(),
        "side": side.removeprefix("CUSTOMER_").replace("_", " ").lower(),
        "amount": money(entry.amount_micros, currency),
        "created_at": iso(entry.create_time),
    }


def invoice_view(invoice: billing_pb2.Invoice) -> dict[str, Any]:
    return {
        "invoice_id": invoice.invoice_id,
        "number": invoice.number or invoice.invoice_id,
        "period_start": iso(invoice.period_start),
        "period_end": iso(invoice.period_end),
        "total": money(invoice.total_micros, invoice.currency),
        "created_at": iso(invoice.create_time),
    }
