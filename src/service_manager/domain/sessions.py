"""A metered session and its rules: which updates count, what the usage so far costs.
Pure functions and plain values; no I/O."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from meterline.kernel.bands import FLAT, BandSchedule
from meterline.kernel.errors import InvalidArgument, UsageWentBackwards
from meterline.kernel.media import ServiceType, Unit
from meterline.kernel.pricing import RateTerms, price_amount

MAX_UNITS = 10**15
DEFAULT_MAX_SEQUENCE_GAP = 10_000


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
    START_FAILED = "START_FAILED"


TERMINATION_MESSAGES = {
    TerminationReason.CLIENT_STOP: "The service was stopped by the client.",
    TerminationReason.BALANCE_EXHAUSTED: "The balance is used up; fund the account to go on.",
    TerminationReason.LIVENESS_TIMEOUT: "No usage update arrived in time; the service was ended.",
    TerminationReason.OPERATOR: "An operator ended the service.",
    TerminationReason.GATEWAY: "The gateway ended the service.",
    TerminationReason.START_FAILED: (
        "The service could not be started; nothing was charged and the hold was released."
    ),
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
        return price_amount(
            self.terms, units, start, self.schedule, over_time=self.unit is Unit.SECOND
        )[0]

    @property
    def is_free(self) -> bool:
        terms = self.terms
        return (
            terms.price_per_unit_micros <= 0
            and terms.setup_fee_micros <= 0
            and all(price <= 0 for _, price in terms.band_prices)
            and all(tier.price_per_unit_micros <= 0 for tier in terms.tiers)
        )


@dataclass(slots=True)
class Session:
    """One session as the service database holds it. The instance that holds the
    session's stream keeps it in memory and changes it through the rules here."""

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
    """The session's usage: the larger of the device's and the gateway's counters."""
    granted_units: int
    """Cumulative units granted (covered by recorded holds)."""
    held_micros: int
    """The sum of the recorded holds."""
    termination_reason: TerminationReason | None = None
    pending_hold_micros: int = 0
    """A hold asked for but not yet recorded: its amount (0 when none)."""
    client_used_units: int = 0
    """The device's own last cumulative report."""
    gateway_used_units: int = 0
    """The gateway's own last cumulative report."""
    owner_epoch: int = 0
    """The fencing token: raised by every instance that takes the session over; a write
    carrying an older one is refused."""
    hold_count: int = 0
    """Recorded holds; the next is number hold_count + 1."""
    pending_hold_number: int = 0
    """The number of the pending hold (0 when none)."""
    pending_granted_units: int = 0
    """The cumulative grant the pending hold pays for."""
    owner_id: str = ""
    """The instance that last took the session over."""
    _charge_cache: tuple[int, int] = field(default=(-1, 0), repr=False, compare=False)
    _epoch_cache: tuple[datetime | None, int] = field(default=(None, 0), repr=False, compare=False)

    @property
    def start_epoch(self) -> int:
        # Remembered for the started_at it was computed from: every charge on the usage
        # path needs it, and datetime.timestamp() is the dearest step of one.
        started_at, epoch = self._epoch_cache
        if started_at is not self.started_at:
            epoch = int(self.started_at.timestamp())
            self._epoch_cache = (self.started_at, epoch)
        return epoch

    @property
    def billable_units(self) -> int:
        return min(self.used_units, self.granted_units)

    @property
    def charged_micros(self) -> int:
        """The charge of the usage so far (never beyond what was granted)."""
        used, granted = self.used_units, self.granted_units
        billable = used if used < granted else granted  # billable_units, read 3x an update
        cached_units, cached_charge = self._charge_cache
        if cached_units == billable:
            return cached_charge
        charge = self.rate.price(billable, self.start_epoch)
        self._charge_cache = (billable, charge)
        return charge

    @property
    def is_active(self) -> bool:
        return self.status is SessionStatus.ACTIVE

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


def classify_update(
    session: Session,
    sequence: int,
    used_units: int,
    max_sequence_gap: int = DEFAULT_MAX_SEQUENCE_GAP,
) -> UpdateKind:
    """A repeated or older update changes nothing; a newer one must not go backwards,
    nor jump so far ahead that later updates would all look like repeats."""
    if sequence < 1:
        raise InvalidArgument(f"sequence must start at 1 and increase (got {sequence}).")
    validate_used_units(used_units)
    if sequence <= session.last_sequence:
        return UpdateKind.DUPLICATE
    if sequence - session.last_sequence > max_sequence_gap:
        raise InvalidArgument(
            f"sequence {sequence} is more than {max_sequence_gap} ahead of the last one "
            f"applied ({session.last_sequence}); send the next sequence number."
        )
    ensure_not_backwards(session.client_used_units, used_units)
    return UpdateKind.APPLY


def ensure_not_backwards(last_reported: int, used_units: int) -> None:
    """Each reporter's counter is cumulative: never below its own last report."""
    if used_units < last_reported:
        raise UsageWentBackwards(
            f"used_units is cumulative and cannot go backwards: {used_units} was given "
            f"after {last_reported} was reported."
        )


def apply_client_usage(session: Session, sequence: int, used_units: int, at: datetime) -> None:
    """Take a device's update that classify_update found new."""
    session.last_sequence = sequence
    session.client_used_units = used_units
    if used_units > session.used_units:
        session.used_units = used_units
    session.last_update_at = at


def apply_gateway_usage(session: Session, used_units: int, at: datetime) -> None:
    """Take a gateway's cumulative report (checked with ensure_not_backwards)."""
    session.gateway_used_units = used_units
    if used_units > session.used_units:
        session.used_units = used_units
    session.last_update_at = at
