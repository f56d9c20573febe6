"""The service record written when a session ends, and the events the service manager
sends to displays (gateways hear of sessions through domain/notices.py)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from meterline.kernel.media import ServiceType, Unit
from service_manager.domain.sessions import Session, SessionRate, TerminationReason


@dataclass(frozen=True, slots=True)
class ServiceRecord:
    """One ended service, from which bills are built."""

    session_id: str
    account_id: str
    service_type: ServiceType
    endpoint: str
    application_id: str
    gateway_id: str
    rate: SessionRate
    started_at: datetime
    ended_at: datetime
    used_units: int
    billed_units: int
    charged_micros: int
    termination_reason: TerminationReason
    unbilled_units: int = 0
    """Usage reported beyond what the holds paid for: recorded, never charged."""
    unbilled_reason: str = ""
    usage_discrepancy: int = 0
    """The gateway's count less the device's, when both reported."""
    client_used_units: int = 0
    gateway_used_units: int = 0
    settlement_difference_micros: int = 0
    """The usage's charge less what the ledger captured, when someone else closed one of
    the session's holds first (charged_micros is what was captured)."""
    settlement_note: str = ""
    """Why the charge differs from the usage's, a sentence; empty when it does not."""


@dataclass(frozen=True, slots=True)
class UsageSummary:
    """What a session used, sent with each capture at settlement so the bill can show
    the service behind the charge."""

    session_id: str
    service_type: ServiceType
    endpoint: str
    application_id: str
    units: int
    """The units charged for (the final usage up to the grant)."""
    unit: Unit
    started_at: datetime
    ended_at: datetime
    charged_micros: int
    """The session's whole charge, over all its holds."""


def usage_summary(session: Session, charged_micros: int, ended_at: datetime) -> UsageSummary:
    """The summary a settled session's captures carry."""
    return UsageSummary(
        session_id=session.session_id,
        service_type=session.service_type,
        endpoint=session.endpoint,
        application_id=session.application_id,
        units=session.billable_units,
        unit=session.rate.unit,
        started_at=session.started_at,
        ended_at=ended_at,
        charged_micros=charged_micros,
    )


def unbilled(used_units: int, billed_units: int) -> tuple[int, str]:
    """Units used beyond the grant, and why they were not charged."""
    beyond = used_units - billed_units
    if beyond <= 0:
        return 0, ""
    return beyond, (
        f"{used_units} units were reported but the balance paid for {billed_units}; the "
        f"{beyond} beyond the grant were not charged and the session was ended at the grant."
    )


def usage_discrepancy(device_reported: bool, client_used: int, gateway_used: int) -> int:
    """How far the gateway's count is from the device's, when both reported (the larger
    one is the session's usage)."""
    if not device_reported or gateway_used <= 0:
        return 0
    return gateway_used - client_used


@dataclass(frozen=True, slots=True)
class UsageEvent:
    """A change a display shows: a session's charge and the account's balance."""

    account_id: str
    session_id: str
    balance_micros: int
    charged_micros: int
    used_units: int
    ended: bool = False
    reason: TerminationReason | None = None
    final_units: bool = False
    low_balance: bool = False
    """The balance left is below the account's low-balance threshold."""
    seconds_left: int | None = None
    """How long the grant and the balance last (SECOND services)."""
