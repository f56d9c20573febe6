"""Prices in words as they are priced, and amounts in their currency's precision."""

from __future__ import annotations

import pytest

from meterline.cli import prices
from meterline.kernel.money import AmountError, check_currency, format_money
from meterline.rating.v1 import rating_pb2, types_pb2

pytestmark = pytest.mark.unit


def test_a_charge_shows_the_currencys_precision_and_a_price_every_digit() -> None:
    assert format_money(188_000, "EUR") == "0.19 EUR"  # not "0.188"
    assert format_money(185_000, "EUR") == "0.19 EUR"  # half up, for display only
    assert format_money(1_234_500_000, "JPY") == "1,235 JPY"  # no minor unit
    assert format_money(1, "EUR", exact=True) == "0.000001 EUR"
    assert format_money(600_000, "EUR", exact=True) == "0.60 EUR"


def test_currencies_are_iso_4217() -> None:
    assert check_currency("EUR") == "EUR"
    with pytest.raises(AmountError, match="ISO 4217"):
        check_currency("XYZ")


def test_a_tariff_in_words() -> None:
    london = rating_pb2.Tariff(
        unit=types_pb2.SECOND,
        unit_size=60,
        price_per_unit_micros=600_000,
        increment_units=1,
        currency="EUR",
        rate_plan_id="business",
        band_prices=[rating_pb2.BandPrice(band="PEAK", price_per_unit_micros=900_000)],
    )
    terms = prices.columns(london)
    assert (terms.plan, terms.price, terms.increments) == (
        "business",
        "0.60 EUR per minute",
        "per 1 s",
    )
    assert terms.bands == "PEAK 0.90 EUR"
    uk = rating_pb2.Tariff(
        unit=types_pb2.SECOND,
        unit_size=60,
        price_per_unit_micros=800_000,
        first_increment_units=30,
        increment_units=6,
        setup_fee_micros=50_000,
        currency="EUR",
    )
    terms = prices.columns(uk)
    assert (terms.plan, terms.increments, terms.setup_fee) == (
        "default",
        "first 30 s, then per 6 s",
        "0.05 EUR",
    )
    download = rating_pb2.Rate(
        unit=types_pb2.BYTE,
        unit_size=10**9,
        price_per_unit_micros=500_000,
        increment_units=1,
        currency="EUR",
        tiers=[
            rating_pb2.VolumeTier(up_to_units=10**9, price_per_unit_micros=500_000),
            rating_pb2.VolumeTier(up_to_units=0, price_per_unit_micros=200_000),
        ],
    )
    assert prices.columns(download).price == "0.50 EUR per GB"
    assert prices.columns(download).tiers == "up to 1 GB 0.50 EUR, then 0.20 EUR"
    assert prices.terms_json(download)["unit_size"] == 10**9
    assert prices.quantity(types_pb2.BYTE, 1_500_000) == "1.5 MB"
