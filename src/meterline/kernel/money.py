"""Money: integer micro-units of a currency, and the only arithmetic done on amounts.

Amounts are never floats. Text amounts ("1.00") are parsed exactly; rounding of rated
charges happens on units (up to the billing increment), never inside a sum.
"""

from __future__ import annotations

import re
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from functools import cache

from babel import default_locale
from babel.numbers import format_currency, get_currency_precision, list_currencies

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
    """An ISO 4217 code (one the Unicode CLDR, through babel, knows)."""
    if not _CURRENCY.fullmatch(code):
        raise AmountError(f"'{code}' is not a currency code: use three capital letters, like EUR")
    if code not in _currencies():
        raise AmountError(f"'{code}' is not an ISO 4217 currency code, such as EUR, USD or GBP")
    return code


@cache
def _currencies() -> frozenset[str]:
    return frozenset(list_currencies())


@cache
def _display_locale() -> str:
    """The locale amounts are shown in: the user's (LC_ALL, LC_NUMERIC, LANG), else en."""
    found = default_locale("LC_NUMERIC")
    return "en" if not found or found.endswith("POSIX") else found


def format_money(
    micros: int, currency: str, exact: bool = False, *, locale: str | None = None
) -> str:
    """An amount for people, in the currency's own precision and the user's locale (or
    `locale`, e.g. "de_DE" for a bill): "0.19 EUR" for 188,000 micro-units (rounded half
    up, for display only). With `exact`, every significant digit of the micro-units is
    kept ("0.000001 EUR"): for prices, which may be finer than the currency's smallest
    coin, and for bills, which are exact to the micro-unit."""
    value = Decimal(micros) / MICROS_PER_UNIT
    try:
        digits = get_currency_precision(currency)
    except (KeyError, ValueError):  # pragma: no cover - codes are checked when stored
        digits = 2
    if not exact:
        value = value.quantize(Decimal(1).scaleb(-digits), rounding=ROUND_HALF_UP)
    return (
        format_currency(
            value,
            currency,
            format="#,##0.00 \xa4\xa4",
            locale=locale or _display_locale(),
            decimal_quantization=not exact,
        )
        .replace("\xa0", " ")
        .replace("\u202f", " ")
    )  # no-break spaces (fr: "1 234,50 EUR")


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
