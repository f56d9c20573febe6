"""What the SDK hands to device code: plain, typed values (no protobuf). The names of the
enums match the wire's exactly."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime, timedelta

from client_sdk._money import format_amount

__all__ = [
    "AccountEvent",
    "ActiveService",
    "BandPrice",
    "BillingUpdate",
    "Rate",
    "ServiceRecord",
    "ServiceType",
    "TerminationReason",
    "TimeBand",
    "Unit",
    "VolumeTier",
]


class ServiceType(enum.StrEnum):
    """The media channel or kind of service being metered."""

    VOICE = "VOICE"
    VIDEO = "VIDEO"
    INSTANT_MESSAGING = "INSTANT_MESSAGING"
    WEB_BROWSING = "WEB_BROWSING"
    FILE_DOWNLOAD = "FILE_DOWNLOAD"
    APPLICATION = "APPLICATION"


class Unit(enum.StrEnum):
    """What a rate counts."""

    SECOND = "SECOND"
    BYTE = "BYTE"
    MESSAGE = "MESSAGE"
    EVENT = "EVENT"


class TerminationReason(enum.StrEnum):
    """Why a service ended."""

    CLIENT_STOP = "CLIENT_STOP"
    BALANCE_EXHAUSTED = "BALANCE_EXHAUSTED"
    LIVENESS_TIMEOUT = "LIVENESS_TIMEOUT"
    OPERATOR = "OPERATOR"
    GATEWAY = "GATEWAY"
    START_FAILED = "START_FAILED"


@dataclass(frozen=True, slots=True)
class BandPrice:
    """The price in one named time band (PEAK, OFF_PEAK, WEEKEND, ...)."""

    band: str
    price_per_unit_micros: int
    """Per `Rate.unit_size` units, in micro-units."""

    @property
    def price(self) -> str:
        return format_amount(self.price_per_unit_micros)


@dataclass(frozen=True, slots=True)
class VolumeTier:
    """Billed units up to `up_to_units` (counted over the whole service; 0 = no limit) cost
    `price_per_unit_micros` per `Rate.unit_size` units."""

    up_to_units: int
    price_per_unit_micros: int

    @property
    def price(self) -> str:
        return format_amount(self.price_per_unit_micros)


@dataclass(frozen=True, slots=True)
class TimeBand:
    """When a band applies: on `days` (MON-FRI, SAT,SUN, ALL), from `start_time` to
    `end_time` (HH:MM, local time of `Rate.time_zone`; the end is exclusive)."""

    band: str
    days: str
    start_time: str
    end_time: str


@dataclass(frozen=True, slots=True)
class Rate:
    """The rate a service is charged at: everything a device needs to show the price.

    Usage is billed in increments: the first `first_increment_units`, then multiples of
    `increment_units` (30/6: the first 30 seconds, then every 6 started), and never less
    than `minimum_units`. The price is per `unit_size` units (1 second, 1,000,000 bytes);
    in a named time band `band_prices` applies instead, and with `tiers` the price depends
    on the volume used. `setup_fee_micros` is charged once, when a unit is used."""

    tariff_id: str
    prefix: str
    """The endpoint prefix that matched; empty for the fallback tariff."""
    unit: Unit
    price_per_unit_micros: int
    """Per `unit_size` units, outside the named bands, in micro-units of `currency`."""
    increment_units: int
    """The next increment: after the first, usage is billed in multiples of this."""
    minimum_units: int
    setup_fee_micros: int
    currency: str
    first_increment_units: int = 0
    """The first increment; 0 means the same as `increment_units`."""
    unit_size: int = 1
    """How many units the price is for."""
    service_type: ServiceType | None = None
    rate_plan_id: str = ""
    band_prices: tuple[BandPrice, ...] = ()
    """Prices in named time bands; other moments pay `price_per_unit_micros`."""
    tiers: tuple[VolumeTier, ...] = ()
    """Volume tiers, in increasing `up_to_units`; when present they replace the price."""
    time_zone: str = ""
    """The IANA zone the time bands are read in."""
    default_band: str = ""
    """The band of moments no time band covers."""
    time_bands: tuple[TimeBand, ...] = ()
    effective_from: datetime | None = None
    """When this version of the tariff took effect."""

    @property
    def first_increment(self) -> int:
        """The first billing increment in units (`increment_units` when not set apart)."""
        return self.first_increment_units or self.increment_units

    @property
    def increments(self) -> str:
        """The billing increments as written on tariffs: "60/60", "30/6", "1/1"."""
        return f"{self.first_increment}/{self.increment_units}"

    @property
    def price(self) -> str:
        """The price per `unit_size` units as a decimal string, e.g. "0.01"."""
        return format_amount(self.price_per_unit_micros)

    @property
    def setup_fee(self) -> str:
        return format_amount(self.setup_fee_micros)

    def describe(self) -> str:
        """One line for a display, e.g. "0.01 EUR per second, billed 30/6, setup fee 0.10 EUR"."""
        per = _per(self.unit, self.unit_size)
        if self.tiers:
            steps = []
            for tier in self.tiers:
                limit = f"up to {tier.up_to_units:,}" if tier.up_to_units else "beyond"
                steps.append(f"{limit}: {tier.price}")
            text = f"{self.currency} per {per} by volume ({'; '.join(steps)})"
        else:
            text = f"{self.price} {self.currency} per {per}"
            if self.band_prices:
                bands = ", ".join(f"{b.band} {b.price}" for b in self.band_prices)
                text += f" ({bands})"
        text += f", billed {self.increments}"
        if self.minimum_units:
            text += f", minimum {self.minimum_units:,} {_plural(self.unit, self.minimum_units)}"
        if self.setup_fee_micros:
            text += f", setup fee {self.setup_fee} {self.currency}"
        return text


def _plural(unit: Unit, count: int) -> str:
    word = unit.value.lower()
    return word if count == 1 else f"{word}s"


def _per(unit: Unit, size: int) -> str:
    return _plural(unit, 1) if size <= 1 else f"{size:,} {_plural(unit, size)}"


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


@dataclass(frozen=True, slots=True)
class AccountEvent:
    """A change on the device's account, for displays (`MeterlineClient.watch_account`):
    one after each usage update the server applies to one of the account's sessions
    (whichever device or gateway reports it), and one when a session ends."""

    account_id: str
    session_id: str
    """The session the change is about."""
    available_micros: int
    """What the account has left if its running services ended now."""
    charged_micros: int
    """The session's charge so far."""
    used_units: int
    """The session's cumulative usage so far."""
    currency: str
    time: datetime
    """When the server sent it (UTC)."""
    time_left: timedelta | None = None
    """For time-metered services: how long the balance and grants last at this rate."""
    low_balance: bool = False
    """The balance left is below the account's low-balance threshold: warn the user."""
    final_units: bool = False
    """The units granted so far are the last the balance pays for."""
    ended: bool = False
    """The session has ended; `charged_micros` is its final charge."""
    termination_reason: TerminationReason | None = None
    """Why it ended (or, with `final_units`, why it is about to). None on an ended event
    the watch made itself: the session ended while the watch was reconnecting, and
    `charged_micros` is the last charge it saw (client_sdk.watch)."""
    message: str = ""
    """A sentence for the user when it ended or reached its final units."""

    @property
    def charged(self) -> str:
        """The session's charge as a decimal string, e.g. "0.42"."""
        return format_amount(self.charged_micros)

    @property
    def available(self) -> str:
        return format_amount(self.available_micros)


@dataclass(frozen=True, slots=True)
class ActiveService:
    """A running service of the device's account (`MeterlineClient.active_services`),
    started by this device or another one of the account."""

    session_id: str
    service_type: ServiceType
    endpoint: str
    rate: Rate
    started_at: datetime
    """When it started (UTC); the duration is the time since."""
    used_units: int
    """The usage last reported."""
    gateway_id: str = ""
