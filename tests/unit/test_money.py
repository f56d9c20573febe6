"""meterline.kernel.money: exact text amounts, formatting, rounding and int64 limits."""

from __future__ import annotations

import pytest

from meterline.kernel import money
from meterline.kernel.money import MAX_AMOUNT_MICROS, AmountError

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("text", ["", "abc", "1.0000001", "1,00", "1e3", "0x10", " . "])
def test_a_bad_amount_is_refused_with_a_sentence_naming_it(text: str) -> None:
    with pytest.raises(AmountError) as refused:
        money.parse_amount(text)
    assert f"'{text}'" in str(refused.value)
    assert "decimal number" in str(refused.value)


@pytest.mark.parametrize(
    ("text", "micros"),
    [
        ("1.00", 1_000_000),
        ("1", 1_000_000),
        ("0.000001", 1),
        ("0.42", 420_000),
        ("0.005", 5_000),
        ("-0.5", -500_000),
        ("-1.50", -1_500_000),
        ("0", 0),
        ("-0", 0),
        ("0.000000", 0),
        ("123456.789012", 123_456_789_012),
        (" 1.5 ", 1_500_000),
        ("\t2.25\n", 2_250_000),
        ("9223372036854.775807", MAX_AMOUNT_MICROS),
        ("-9223372036854.775807", -MAX_AMOUNT_MICROS),
    ],
)
def test_parse_amount_is_exact(text: str, micros: int) -> None:
    parsed = money.parse_amount(text)
    assert parsed == micros
    assert type(parsed) is int


@pytest.mark.parametrize(
    "text",
    [
        "1.0000001",  # seven decimal places
        "0.0000005",
        "abc",
        "1e3",
        "1E-3",
        "",
        "   ",
        "1.",
        ".5",
        "+1",
        "1,00",
        "1 000",
        "--1",
        "- 1",
        "0x10",
        "NaN",
        "inf",
        "1.2.3",
        "€1",
        "1.00 EUR",
    ],
)
def test_parse_amount_refuses_what_is_not_a_plain_decimal(text: str) -> None:
    with pytest.raises(AmountError, match="is not an amount"):
        money.parse_amount(text)


@pytest.mark.parametrize("text", ["9223372036854.775808", "-9223372036854.775808", "1" * 20])
def test_parse_amount_refuses_amounts_beyond_int64(text: str) -> None:
    with pytest.raises(AmountError, match="more than an amount can hold"):
        money.parse_amount(text)


@pytest.mark.parametrize(
    ("micros", "text"),
    [
        (420_000, "0.42"),
        (1, "0.000001"),
        (-1, "-0.000001"),
        (-1_500_000, "-1.50"),
        (0, "0.00"),
        (1_000_000, "1.00"),
        (10_000, "0.01"),
        (100_000, "0.10"),
        (1_234_500, "1.2345"),
        (-999_999, "-0.999999"),
        (12_000_000, "12.00"),
        (MAX_AMOUNT_MICROS, "9223372036854.775807"),
    ],
)
def test_format_amount(micros: int, text: str) -> None:
    assert money.format_amount(micros) == text


@pytest.mark.parametrize(
    "micros", [0, 1, -1, 5, 10_000, 420_000, -1_500_000, 123_456_789, -MAX_AMOUNT_MICROS]
)
def test_format_then_parse_round_trips(micros: int) -> None:
    assert money.parse_amount(money.format_amount(micros)) == micros


@pytest.mark.parametrize(
    ("units", "increment", "rounded"),
    [
        (0, 60, 0),
        (1, 60, 60),
        (59, 60, 60),
        (60, 60, 60),
        (61, 60, 120),
        (1, 6, 6),
        (7, 6, 12),
        (12, 6, 12),
        (0, 1, 0),
        (37, 1, 37),
        (1_001, 1_000, 2_000),
    ],
)
def test_round_up_units(units: int, increment: int, rounded: int) -> None:
    assert money.round_up_units(units, increment) == rounded


@pytest.mark.parametrize("increment", [0, -1, -60])
def test_round_up_units_refuses_an_increment_below_one(increment: int) -> None:
    with pytest.raises(AmountError, match="at least 1 unit"):
        money.round_up_units(10, increment)


@pytest.mark.parametrize("code", ["EUR", "USD", "GBP", "XAU"])
def test_check_currency_accepts_three_capitals(code: str) -> None:
    assert money.check_currency(code) == code


@pytest.mark.parametrize(
    "code", ["eur", "Eur", "EURO", "EU", "", "E1R", " EUR", "EUR ", "EU R", "€UR"]
)
def test_check_currency_refuses_anything_else(code: str) -> None:
    with pytest.raises(AmountError, match="not a currency code"):
        money.check_currency(code)


def test_check_currency_refuses_a_trailing_newline() -> None:
    with pytest.raises(AmountError):
        money.check_currency("EUR\n")


@pytest.mark.parametrize("micros", [0, 1, -1, MAX_AMOUNT_MICROS, -MAX_AMOUNT_MICROS])
def test_check_micros_accepts_what_fits_int64(micros: int) -> None:
    assert money.check_micros(micros) == micros


@pytest.mark.parametrize("micros", [MAX_AMOUNT_MICROS + 1, -(MAX_AMOUNT_MICROS + 1), 10**30])
def test_check_micros_refuses_overflow(micros: int) -> None:
    with pytest.raises(AmountError, match="more than an amount can hold"):
        money.check_micros(micros)


@pytest.mark.parametrize(
    ("units", "price", "cost"),
    [(0, 1_000, 0), (60, 100, 6_000), (3, 0, 0), (1, MAX_AMOUNT_MICROS, MAX_AMOUNT_MICROS)],
)
def test_units_times_price(units: int, price: int, cost: int) -> None:
    assert money.units_times_price(units, price) == cost


def test_units_times_price_refuses_overflow() -> None:
    with pytest.raises(AmountError):
        money.units_times_price(2**62, 2)


@pytest.mark.parametrize(
    ("amounts", "total"),
    [
        ((), 0),
        ((5,), 5),
        ((1, 2, 3), 6),
        ((1_000, -1_000), 0),
        ((MAX_AMOUNT_MICROS, -1), 2**63 - 2),
    ],
)
def test_add(amounts: tuple[int, ...], total: int) -> None:
    assert money.add(*amounts) == total


@pytest.mark.parametrize("amounts", [(MAX_AMOUNT_MICROS, 1), (-MAX_AMOUNT_MICROS, -1)])
def test_add_refuses_overflow(amounts: tuple[int, ...]) -> None:
    with pytest.raises(AmountError):
        money.add(*amounts)
