"""A metered session's rules: which updates count, when to grant the next quota slice,
what to charge at the end. Pure functions over plain values."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime, timedelta

from meterline.kernel import money
from meterline.kernel.bands import FLAT, BandSchedule
from meterline.kernel.errors import InvalidArgument, UsageWentBackwards
from meterline.kernel.media import ServiceType, Unit
from meterline.kernel.pricing import RateTerms, affordable_units, price_units

MAX_UNITS = 10**15
# Ask for the next slice once this share of the newest slice is used.
REFILL_AT_REMAINING_FRACTION = 0.2


class SessionStatus(enum.StrEnum):
    ACTIVE = "ACTIVE"
    SETTLING = "SETTLING"
    ENDED = "ENDED"


class TerminationReason(enum.StrEnum):
    CLIENT_STOP = "CLIENT_STOP"
    BALANCE_EXHAUSTED = "BALANCE_EXHAUSTED"
    LIVENESS_TIMEOUT = "LIVENESS_TIMEOUT"
    OPERATOR = "OPERATOR"
    GATEWAY = "GATEWAY"


TERMINATION_MESSAGES = {
    TerminationReason.CLIENT_STOP: "The service was stopped by the client.",
    TerminationReason.BALANCE_EXHAUSTED: "The balance is used up; fund the account to go on.",
    TerminationReason.LIVENESS_TIMEOUT: "No usage update arrived in time; the service was ended.",
    TerminationReason.OPERATOR: "An operator ended the service.",
    TerminationReason.GATEWAY: "The gateway ended the service.",
}


@dataclass(frozen=True, slots=True)
class SessionRate:
    """The rate a session was started at, with its plan's time bands; it prices the
    whole session (a record is rated by the tariff in force when it started)."""

    tariff_id: str
    prefix: str
    unit: Unit
    terms: RateTerms
    currency: str
    schedule: BandSchedule = FLAT
    plan_id: str = ""

    def price(self, units: int, start: int) -> int:
        """The charge of `units` cumulative units of a session that started at `start`."""
        return price_units(
            self.terms, units, start, self.schedule, over_time=self.unit is Unit.SECOND
        ).amount_micros


@dataclass(frozen=True, slots=True)
class Session:
    session_id: str
    account_id: str
    service_type: ServiceType
    endpoint: str
    application_id: str
    gateway_id: str
    rate: SessionRate
    status: SessionStatus
    started_at: datetime
    last_update_at: datetime
    last_sequence: int
    used_units: int
    granted_units: int
    held_micros: int
    termination_reason: TerminationReason | None = None
    pending_hold_micros: int = 0
    """The first hold asked for but not yet recorded (only while a start is under way)."""
    client_used_units: int = 0
    """The device's own last cumulative report."""
    gateway_used_units: int = 0
    """The gateway's own last cumulative report."""

    @property
    def charged_micros(self) -> int:
        """The charge of the usage so far (never beyond what was granted)."""
        return self.rate.price(self.billable_units, self.start_epoch)

    @property
    def start_epoch(self) -> int:
        return int(self.started_at.timestamp())

    @property
    def billable_units(self) -> int:
        return min(self.used_units, self.granted_units)

    def quota_valid_until(self, validity: timedelta) -> datetime:
        return self.last_update_at + validity


class UpdateKind(enum.Enum):
    APPLY = "apply"
    DUPLICATE = "duplicate"


def validate_used_units(used_units: int) -> int:
    if used_units < 0:
        raise InvalidArgument(f"used_units cannot be negative (got {used_units}).")
    if used_units > MAX_UNITS:
        raise InvalidArgument(f"used_units cannot exceed {MAX_UNITS}.")
    return used_units


def classify_update(session: Session, sequence: int, used_units: int) -> UpdateKind:
    """A repeated or older update changes nothing; a newer one must not go backwards."""
    if sequence < 1:
        raise InvalidArgument(f"sequence must start at 1 and increase (got {sequence}).")
    validate_used_units(used_units)
    if sequence <= session.last_sequence:
        return UpdateKind.DUPLICATE
    ensure_not_backwards(session.client_used_units, used_units)
    return UpdateKind.APPLY


def ensure_not_backwards(last_reported: int, used_units: int) -> None:
    """Each reporter's counter is cumulative: never below its own last report."""
    if used_units < last_reported:
        raise UsageWentBackwards(
            f"used_units is cumulative and cannot go backwards: {used_units} was given "
            f"after {last_reported} was reported."
        )


def needs_next_slice(session: Session, used_units: int, slice_units: int) -> bool:
    remaining = session.granted_units - used_units
    return remaining <= slice_units * REFILL_AT_REMAINING_FRACTION


@dataclass(frozen=True, slots=True)
class Grant:
    granted_units: int
    """Cumulative units granted after this grant."""
    amount_micros: int
    """What the hold for this grant must be."""


def next_grant(
    rate: SessionRate,
    granted_units: int,
    used_units: int,
    slice_units: int,
    budget_micros: int,
    start: int = 0,
) -> Grant | None:
    """The next slice the budget can fund: enough to cover `used_units` plus a slice,
    less if the budget is short; None if not one more increment fits."""
    target = max(granted_units, used_units) + slice_units
    new_granted = affordable_units(
        rate.terms,
        granted_units,
        max(budget_micros, 0),
        target,
        start,
        rate.schedule,
        over_time=rate.unit is Unit.SECOND,
    )
    if new_granted <= granted_units:
        return None
    amount = money.add(
        rate.price(new_granted, start),
        -rate.price(granted_units, start),
    )
    if amount == 0:
        # A free slice needs no hold, but still extends the grant.
        return Grant(new_granted, 0)
    return Grant(new_granted, amount)


def split_capture(charge_micros: int, holds: list[tuple[str, int]]) -> list[tuple[str, int]]:
    """How much to capture from each hold, oldest first, to take exactly the charge."""
    remaining = charge_micros
    plan = []
    for hold_id, amount in holds:
        take = min(remaining, amount)
        plan.append((hold_id, take))
        remaining -= take
    if remaining:
        raise AssertionError(f"holds fall {remaining} micro-units short of the charge")
    return plan


def estimated_seconds_left(session: Session, available_micros: int) -> int | None:
    """For time-metered sessions: granted seconds left plus what the balance buys."""
    if session.rate.unit is not Unit.SECOND:
        return None
    granted_left = max(session.granted_units - session.used_units, 0)
    price = session.rate.terms.price_per_unit_micros
    if price <= 0:
        return None
    return granted_left + max(available_micros, 0) // price
