"""The service record written when a session ends, and the events the service manager
sends to displays (gateways hear of sessions through domain/notices.py)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from meterline.kernel.media import ServiceType
from service_manager.domain.sessions import SessionRate, TerminationReason


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
