"""What the SDK hands to device code: plain, typed values (no protobuf)."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime, timedelta

from meterline.kernel.media import ServiceType, Unit
from meterline.kernel.money import format_amount

__all__ = ["BillingUpdate", "Rate", "ServiceRecord", "ServiceType", "TerminationReason", "Unit"]


class TerminationReason(enum.StrEnum):
    CLIENT_STOP = "CLIENT_STOP"
    BALANCE_EXHAUSTED = "BALANCE_EXHAUSTED"
    LIVENESS_TIMEOUT = "LIVENESS_TIMEOUT"
    OPERATOR = "OPERATOR"
    GATEWAY = "GATEWAY"
    START_FAILED = "START_FAILED"


@dataclass(frozen=True, slots=True)
class Rate:
    """The rate a service is charged at."""

    tariff_id: str
    prefix: str
    unit: Unit
    price_per_unit_micros: int
    increment_units: int
    minimum_units: int
    setup_fee_micros: int
    currency: str


@dataclass(frozen=True, slots=True)
class BillingUpdate:
    """The real-time state of a service, after each usage update the server acknowledged."""

    session_id: str
    sequence: int
    """The highest usage update the server has applied."""
    used_units: int
    charged_micros: int
    """The charge of the usage so far."""
    balance_micros: int
    """What the account has left if the service ended now."""
    granted_units: int
    currency: str
    time_left: timedelta | None = None
    """For time-metered services: how long the balance lasts at this rate."""
    final_units: bool = False
    """The units granted so far are the last the balance pays for."""
    ended: bool = False
    termination_reason: TerminationReason | None = None
    message: str = ""

    @property
    def charged(self) -> str:
        """The charge as a decimal string, e.g. "0.42"."""
        return format_amount(self.charged_micros)

    @property
    def balance(self) -> str:
        return format_amount(self.balance_micros)


@dataclass(frozen=True, slots=True)
class ServiceRecord:
    """The record written when a service ends; bills are built from these."""

    session_id: str
    account_id: str
    service_type: ServiceType
    endpoint: str
    rate: Rate
    started_at: datetime
    ended_at: datetime
    duration: timedelta
    used_units: int
    billed_units: int
    charged_micros: int
    termination_reason: TerminationReason
    gateway_id: str

    @property
    def charged(self) -> str:
        return format_amount(self.charged_micros)
