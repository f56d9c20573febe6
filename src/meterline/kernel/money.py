"""Money: integer micro-units of a currency, and the only arithmetic done on amounts.

Amounts are never floats. Text amounts ("1.00") are parsed exactly; rounding of rated
charges happens on units (up to the billing increment), never inside a sum.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

MICROS_PER_UNIT = 1_000_000
MAX_AMOUNT_MICROS = 2**63 - 1

_AMOUNT_TEXT = re.compile(r"-?[0-9]+(\.[0-9]{1,6})?")
_CURRENCY = re.compile(r"[A-Z]{3}")


class AmountError(ValueError):
    """A text amount or currency that cannot be taken as money."""


def parse_amount(text: str) -> int:
    """Turn a decimal string in currency units ("1.00", "0.005") into micro-units."""
    cleaned = text.strip()
    if not _AMOUNT_TEXT.fullmatch(cleaned):
        raise AmountError(
            f"'{text}' is not an amount: write a decimal number with at most 6 decimal "
            "places, such as 1.00"
        )
    try:
        micros = int(Decimal(cleaned) * MICROS_PER_UNIT)
    except InvalidOperation as exc:  # pragma: no cover - the pattern already excludes it
        raise AmountError(f"'{text}' is not an amount") from exc
    check_micros(micros)
    return micros


def format_amount(micros: int) -> str:
    """Micro-units as a decimal string with at least two decimal places ("0.42")."""
    sign = "-" if micros < 0 else ""
    whole, fraction = divmod(abs(micros), MICROS_PER_UNIT)
    digits = f"{fraction:06d}".rstrip("0").ljust(2, "0")
    return f"{sign}{whole}.{digits}"


def check_micros(micros: int) -> int:
    """Refuse amounts that do not fit the wire's int64."""
    if abs(micros) > MAX_AMOUNT_MICROS:
        raise AmountError(f"{micros} micro-units is more than an amount can hold")
    return micros


def check_currency(code: str) -> str:
    """An ISO 4217 code: three capital letters."""
    if not _CURRENCY.fullmatch(code):
        raise AmountError(f"'{code}' is not a currency code: use three capital letters, like EUR")
    return code


def round_up_units(units: int, increment: int) -> int:
    """Units rounded up to a whole number of billing increments."""
    if increment < 1:
        raise AmountError("a billing increment must be at least 1 unit")
    return -(-units // increment) * increment


def units_times_price(units: int, price_per_unit_micros: int) -> int:
    """The exact cost of whole units at an integer price."""
    return check_micros(units * price_per_unit_micros)


def cost_of_units(units: int, price_per_unit_size: int, unit_size: int = 1) -> int:
    """The cost of `units` at a price per `unit_size` units, rounded up to a whole
    micro-unit (once, for this product)."""
    if unit_size < 1:
        raise AmountError("a unit size must be at least 1")
    return check_micros(-(-units * price_per_unit_size // unit_size))


def add(*amounts: int) -> int:
    """A sum of amounts, checked to fit int64."""
    return check_micros(sum(amounts))
