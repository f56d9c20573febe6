"""Pricing of usage under one rate: increments, minimums, setup fee.

A pure function of the rate terms and the units, shared by the rating service (which
finds the rate) and the service manager (which prices a session under the rate it was
granted at the start).
"""

from __future__ import annotations

from dataclasses import dataclass

from meterline.kernel import money


@dataclass(frozen=True, slots=True)
class RateTerms:
    """The numbers of a rate that decide a price."""

    price_per_unit_micros: int
    """Price of one unit in micro-units."""
    increment_units: int
    """Usage is billed in whole multiples of this many units."""
    minimum_units: int
    """Usage below this is billed as this many units."""
    setup_fee_micros: int
    """Charged once when at least one unit is used."""


@dataclass(frozen=True, slots=True)
class Price:
    """What some usage costs."""

    amount_micros: int
    billed_units: int


def price_units(terms: RateTerms, units: int) -> Price:
    """Price of `units` cumulative units. No usage costs nothing, not even the setup fee."""
    if units < 0:
        raise money.AmountError("units used cannot be negative")
    if units == 0:
        return Price(amount_micros=0, billed_units=0)
    billed = money.round_up_units(max(units, terms.minimum_units), terms.increment_units)
    amount = money.add(
        terms.setup_fee_micros, money.units_times_price(billed, terms.price_per_unit_micros)
    )
    return Price(amount_micros=amount, billed_units=billed)


def affordable_units(terms: RateTerms, from_units: int, budget_micros: int, limit: int) -> int:
    """The most units, `from_units` plus whole billing increments and at most `limit`,
    whose price beyond the price of `from_units` fits in `budget_micros`; `from_units` if
    not one more increment fits. Grants start at 0, so they stay whole increments.

    Used to size a quota grant to what the balance can fund.
    """
    base = price_units(terms, from_units).amount_micros
    step = terms.increment_units
    # Price grows with units, so binary search over whole increments beyond from_units.
    low, high = 0, max(0, (limit - from_units) // step)
    while low < high:
        middle = (low + high + 1) // 2
        if price_units(terms, from_units + middle * step).amount_micros - base <= budget_micros:
            low = middle
        else:
            high = middle - 1
    return from_units + low * step
