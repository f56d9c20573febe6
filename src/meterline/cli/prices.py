"""Prices as they are priced: a tariff's or a rate's price per its unit size ("0.60 EUR per
minute", "0.50 EUR per GB"), its billing increments, minimum, setup fee, time bands and
volume tiers, in words for the CLI's tables and as numbers for its JSON. Amounts are
formatted by `money.format_money` (babel) in the tariff's currency; prices keep every
digit they have, charges are shown in the currency's precision."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeAlias

from meterline.kernel.money import format_money
from meterline.rating.v1 import rating_pb2, types_pb2

DEFAULT_PLAN = "default"

# Unit sizes with a name, per unit (the sizes tariff sheets know, docs/tariffs.md).
_SIZE_NAMES: dict[Unit, dict[int, str]] = {
    types_pb2.SECOND: {1: "second", 60: "minute", 3600: "hour"},
    types_pb2.BYTE: {
        1: "byte",
        10**3: "kB",
        10**6: "MB",
        10**9: "GB",
        10**12: "TB",
        2**10: "KiB",
        2**20: "MiB",
        2**30: "GiB",
        2**40: "TiB",
    },
    types_pb2.MESSAGE: {1: "message"},
    types_pb2.EVENT: {1: "event"},
}
_PLURALS = {
    types_pb2.SECOND: "seconds",
    types_pb2.BYTE: "bytes",
    types_pb2.MESSAGE: "messages",
    types_pb2.EVENT: "events",
}


PricedTerms = rating_pb2.Tariff | rating_pb2.Rate
"""A tariff and a rate carry the same terms (rating.proto)."""
Unit: TypeAlias = types_pb2.Unit.ValueType


def unit_name(unit: Unit) -> str:
    return types_pb2.Unit.Name(unit).removeprefix("UNIT_").lower()


def per_size(unit: Unit, size: int) -> str:
    """'minute' for 60 seconds, 'GB' for 10**9 bytes, '30 seconds' for 30."""
    size = size or 1
    named = _SIZE_NAMES.get(unit, {}).get(size)
    if named:
        return named
    return f"{size:,} {_PLURALS.get(unit) or unit_name(unit)}"


def quantity(unit: Unit, units: int) -> str:
    """Units as people read them: '42 s', '1.5 MB', '20 messages'."""
    if unit == types_pb2.BYTE:
        for size, name in ((10**12, "TB"), (10**9, "GB"), (10**6, "MB"), (10**3, "kB")):
            if units >= size:
                text = f"{units / size:.1f}".removesuffix(".0")
                return f"{text} {name}"
        return f"{units} B"
    if unit == types_pb2.SECOND:
        return f"{units} s"
    noun = _PLURALS.get(unit, "units")
    return f"{units} {noun[:-1] if units == 1 else noun}"


def price_text(micros: int, currency: str, unit: Unit, size: int) -> str:
    """'0.60 EUR per minute'."""
    return f"{format_money(micros, currency, exact=True)} per {per_size(unit, size)}"


def increments_text(terms: PricedTerms) -> str:
    """'per 1 s', 'per 60 s', 'first 30 s, then per 6 s', 'per 1 kB'."""
    following = quantity(terms.unit, terms.increment_units or 1)
    if terms.first_increment_units and terms.first_increment_units != terms.increment_units:
        return f"first {quantity(terms.unit, terms.first_increment_units)}, then per {following}"
    return f"per {following}"


def bands_text(terms: PricedTerms) -> str:
    """'PEAK 0.90 EUR, WEEKEND 0.30 EUR' (per the same unit size), or ''."""
    return ", ".join(
        f"{band.band} {format_money(band.price_per_unit_micros, terms.currency, exact=True)}"
        for band in terms.band_prices
    )


def tiers_text(terms: PricedTerms) -> str:
    """'up to 1 GB 0.50 EUR, then 0.20 EUR' (per the unit size), or ''."""
    parts = []
    for tier in terms.tiers:
        price = format_money(tier.price_per_unit_micros, terms.currency, exact=True)
        if tier.up_to_units:
            parts.append(f"up to {quantity(terms.unit, tier.up_to_units)} {price}")
        else:
            parts.append(f"then {price}" if parts else price)
    return ", ".join(parts)


@dataclass(frozen=True)
class PriceColumns:
    """One tariff's or rate's terms in words, a column each."""

    plan: str
    price: str
    increments: str
    minimum: str
    setup_fee: str
    bands: str
    tiers: str


def columns(terms: PricedTerms) -> PriceColumns:
    return PriceColumns(
        plan=terms.rate_plan_id or DEFAULT_PLAN,
        price=price_text(terms.price_per_unit_micros, terms.currency, terms.unit, terms.unit_size),
        increments=increments_text(terms),
        minimum=quantity(terms.unit, terms.minimum_units) if terms.minimum_units else "",
        setup_fee=format_money(terms.setup_fee_micros, terms.currency, exact=True)
        if terms.setup_fee_micros
        else "",
        bands=bands_text(terms),
        tiers=tiers_text(terms),
    )


def terms_json(terms: PricedTerms) -> dict[str, Any]:
    """The numbers of the terms, every one present (0 and empty included), plus the price
    in words: what a script needs to price usage the way the service does."""
    return {
        "rate_plan_id": terms.rate_plan_id or DEFAULT_PLAN,
        "unit": types_pb2.Unit.Name(terms.unit),
        "unit_size": terms.unit_size or 1,
        "price_per_unit_micros": terms.price_per_unit_micros,
        "currency": terms.currency,
        "first_increment_units": terms.first_increment_units or terms.increment_units,
        "increment_units": terms.increment_units,
        "minimum_units": terms.minimum_units,
        "setup_fee_micros": terms.setup_fee_micros,
        "band_prices": [
            {"band": band.band, "price_per_unit_micros": band.price_per_unit_micros}
            for band in terms.band_prices
        ],
        "tiers": [
            {"up_to_units": tier.up_to_units, "price_per_unit_micros": tier.price_per_unit_micros}
            for tier in terms.tiers
        ],
        "price": price_text(
            terms.price_per_unit_micros, terms.currency, terms.unit, terms.unit_size
        ),
    }
