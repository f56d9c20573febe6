"""Pricing of usage under one rate: billing increments of the first/next form, minimum
units, setup fee, prices per unit size (per second, per MB, per GiB, ...), time bands and
volume tiers. A pure function of the rate terms and the usage, shared by the rating
service (which finds the rate) and the service manager (which prices a session under the
rate it was granted at the start).

Rounding: usage is rounded up to the billing increments once, for the whole record; the
exact charge of all its priced parts (a band's seconds, a tier's bytes) is rounded up to
a whole micro-unit once. Nothing is rounded inside a sum.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from meterline.kernel import money
from meterline.kernel.bands import FLAT, BandSchedule

SETUP_FEE_PART = "SETUP_FEE"


@dataclass(frozen=True, slots=True)
class VolumeTier:
    """Billed units up to `up_to_units` (cumulative within one record; 0 = no limit) cost
    `price_per_unit_micros` per unit size."""

    up_to_units: int
    price_per_unit_micros: int


@dataclass(frozen=True, slots=True)
class RateTerms:
    """The numbers of a rate that decide a price."""

    price_per_unit_micros: int
    """Price of one unit size of usage, in micro-units (the price outside named bands)."""
    increment_units: int
    """The next increment: after the first, usage is billed in multiples of this."""
    minimum_units: int
    """Usage below this is billed as this many units."""
    setup_fee_micros: int
    """Charged once when at least one unit is used."""
    first_increment_units: int = 0
    """The first increment (the 30 of 30/6); 0 means the same as increment_units."""
    unit_size: int = 1
    """How many units the price is for: 1 per second, 1_000_000 per MB, 2**30 per GiB."""
    band_prices: tuple[tuple[str, int], ...] = ()
    """Price per unit size in named time bands; other bands pay price_per_unit_micros."""
    tiers: tuple[VolumeTier, ...] = ()
    """Volume tiers; when given they replace price_per_unit_micros."""

    def band_price(self, band: str) -> int:
        for name, price in self.band_prices:
            if name == band:
                return price
        return self.price_per_unit_micros


@dataclass(frozen=True, slots=True)
class PricePart:
    """One priced part of a record: a band's share, a tier's share, or the setup fee."""

    label: str
    units: int
    price_per_unit_micros: int
    amount_micros: int
    start: int = 0
    """Epoch second the part starts at (time-banded parts only)."""


@dataclass(frozen=True, slots=True)
class Price:
    """What some usage costs."""

    amount_micros: int
    billed_units: int
    parts: tuple[PricePart, ...] = ()


ZERO = Price(amount_micros=0, billed_units=0)


def billed_units(terms: RateTerms, units: int) -> int:
    """Usage below the minimum is billed as the minimum, then rounded up to the first
    increment and whole next increments after it."""
    if units < 0:
        raise money.AmountError("units used cannot be negative")
    if units == 0:
        return 0
    units = max(units, terms.minimum_units)
    first = terms.first_increment_units or terms.increment_units
    if units <= first:
        return first
    return first + money.round_up_units(units - first, terms.increment_units)


def price_units(
    terms: RateTerms,
    units: int,
    start: int = 0,
    schedule: BandSchedule = FLAT,
    over_time: bool = False,
) -> Price:
    """Price of `units` cumulative units of one record starting at epoch second `start`.
    With banded prices, seconds (`over_time`) are split across the bands they fall in;
    other units pay the band of `start`. No usage costs nothing, not even the setup fee."""
    billed = billed_units(terms, units)
    if billed == 0:
        return ZERO
    if terms.tiers:
        pieces = _tiered(terms, billed)
    elif terms.band_prices and not schedule.is_flat and over_time:
        pieces = [
            (band, seconds, terms.band_price(band), at)
            for band, at, seconds in schedule.split(start, billed)
        ]
    else:
        band = schedule.band_at(start)
        pieces = [(band, billed, terms.band_price(band), start)]
    parts = _priced(terms, pieces)
    if terms.setup_fee_micros:
        parts.append(PricePart(SETUP_FEE_PART, 0, 0, terms.setup_fee_micros))
    amount = money.add(*(part.amount_micros for part in parts))
    return Price(amount_micros=amount, billed_units=billed, parts=tuple(parts))


def price_amount(
    terms: RateTerms,
    units: int,
    start: int = 0,
    schedule: BandSchedule = FLAT,
    over_time: bool = False,
) -> tuple[int, int]:
    """(amount_micros, billed_units): the same figures as price_units, without building
    the parts, for bulk rating."""
    if terms.tiers or (terms.band_prices and over_time and not schedule.is_flat):
        price = price_units(terms, units, start, schedule, over_time)
        return price.amount_micros, price.billed_units
    billed = billed_units(terms, units)
    if billed == 0:
        return 0, 0
    unit_price = (
        terms.band_price(schedule.band_at(start))
        if terms.band_prices
        else terms.price_per_unit_micros
    )
    amount = -(-billed * unit_price // terms.unit_size) + terms.setup_fee_micros
    return money.check_micros(amount), billed


Piece = tuple[str, int, int, int]
"""(label, units, price per unit size, start) of a part before it is priced."""


def _priced(terms: RateTerms, pieces: list[Piece]) -> list[PricePart]:
    """The parts' amounts, rounded once for the record: each part gets the rounded-up
    running total less what the parts before it got, so no fraction of a micro-unit is
    rounded inside the sum and the parts still add up to the amount."""
    parts: list[PricePart] = []
    exact = 0  # the running total times unit_size
    charged = 0
    for label, units, price, start in pieces:
        exact += units * price
        total = money.cost_of_units(exact, 1, terms.unit_size)
        parts.append(PricePart(label, units, price, total - charged, start))
        charged = total
    return parts


def _tiered(terms: RateTerms, billed: int) -> list[Piece]:
    parts: list[Piece] = []
    covered = 0
    for number, tier in enumerate(terms.tiers, start=1):
        limit = tier.up_to_units or billed
        units = min(billed, limit) - covered
        if units > 0:
            parts.append((f"TIER_{number}", units, tier.price_per_unit_micros, 0))
            covered += units
        if covered >= billed:
            break
    if covered < billed:  # the last tier had a limit: it also prices the rest
        last = terms.tiers[-1]
        parts.append((f"TIER_{len(terms.tiers)}", billed - covered, last.price_per_unit_micros, 0))
    return parts


def affordable_units(
    terms: RateTerms,
    from_units: int,
    budget_micros: int,
    limit: int,
    start: int = 0,
    schedule: BandSchedule = FLAT,
    over_time: bool = False,
) -> int:
    """The most units, `from_units` plus whole next increments and at most `limit`, whose
    price beyond the price of `from_units` fits in `budget_micros`; `from_units` if not one
    more increment fits. Grants start at 0, so they stay whole increments.

    Used to size a quota grant to what the balance can fund."""

    def price(units: int) -> int:
        return price_units(terms, units, start, schedule, over_time).amount_micros

    base = price(from_units)
    step = terms.increment_units
    # Price grows with units, so binary search over whole increments beyond from_units.
    low, high = 0, max(0, (limit - from_units) // step)
    while low < high:
        middle = (low + high + 1) // 2
        if price(from_units + middle * step) - base <= budget_micros:
            low = middle
        else:
            high = middle - 1
    return from_units + low * step


def terms_to_json(terms: RateTerms) -> dict[str, Any]:
    """The stored form of rate terms (in PostgreSQL rows and session snapshots)."""
    return {
        "price_per_unit_micros": terms.price_per_unit_micros,
        "increment_units": terms.increment_units,
        "minimum_units": terms.minimum_units,
        "setup_fee_micros": terms.setup_fee_micros,
        "first_increment_units": terms.first_increment_units,
        "unit_size": terms.unit_size,
        "band_prices": [list(pair) for pair in terms.band_prices],
        "tiers": [[tier.up_to_units, tier.price_per_unit_micros] for tier in terms.tiers],
    }


def terms_from_json(data: Mapping[str, Any]) -> RateTerms:
    """Reads what terms_to_json wrote; keys added later default (older snapshots)."""
    return RateTerms(
        price_per_unit_micros=data["price_per_unit_micros"],
        increment_units=data["increment_units"],
        minimum_units=data["minimum_units"],
        setup_fee_micros=data["setup_fee_micros"],
        first_increment_units=data.get("first_increment_units", 0),
        unit_size=data.get("unit_size", 1),
        band_prices=tuple((band, price) for band, price in data.get("band_prices", [])),
        tiers=tuple(VolumeTier(limit, price) for limit, price in data.get("tiers", [])),
    )
