"""The service record written when a session ends, and the events the service manager
sends to displays and gateways."""

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


@dataclass(frozen=True, slots=True)
class TerminationNotice:
    """What a gateway must act on: the session has ended."""

    session_id: str
    gateway_id: str
    reason: TerminationReason
    message: str
