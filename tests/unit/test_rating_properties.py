"""Properties of price_units over generated rate terms, band schedules and start times:
more usage never costs less, splitting a per-second record never saves money, and every
amount is a non-negative whole number of micros that its parts add up to."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meterline.kernel.bands import FLAT, BandRule, BandSchedule
from meterline.kernel.pricing import (
    RateTerms,
    VolumeTier,
    billed_units,
    price_amount,
    price_units,
)
from tests.support.rating import assert_parts_add_up, utc

pytestmark = pytest.mark.unit

PROPERTIES = settings(max_examples=200, deadline=None, database=None)

TIME_ZONES = (
    "UTC",
    "Europe/London",
    "America/New_York",
    "Australia/Lord_Howe",  # a 30-minute daylight-saving shift
    "Asia/Kolkata",  # a half-hour offset, no daylight saving
    "America/Santiago",  # clocks change at midnight
)
BANDS = ("PEAK", "EVENING", "WEEKEND")
UNIT_SIZES = (1, 60, 1000, 10**6, 2**20, 2**30)
FIRST_START = utc(2020, 1, 1)
LAST_START = utc(2035, 1, 1)
MAX_SECONDS = 3 * 86_400  # records of up to three days keep the band splitting quick


def _transitions() -> list[int]:
    """Epoch seconds of the daylight-saving changes of the generated zones in 2027."""
    moments = []
    for name in TIME_ZONES:
        zone = ZoneInfo(name)
        previous = None
        for hour in range(utc(2027, 1, 1), utc(2028, 1, 1), 3600):
            offset = datetime.fromtimestamp(hour, UTC).astimezone(zone).utcoffset()
            if previous is not None and offset != previous:
                moments.append(hour)
            previous = offset
    return moments


TRANSITIONS = _transitions()


@st.composite
def schedules(draw: st.DrawFn) -> BandSchedule:
    rules = []
    for _ in range(draw(st.integers(1, 3))):
        start = draw(st.integers(0, 24 * 60 - 1))
        end = draw(st.integers(start + 1, 24 * 60))
        days = draw(st.frozensets(st.integers(0, 6), min_size=1))
        rules.append(BandRule(draw(st.sampled_from(BANDS)), days, start, end))
    return BandSchedule(
        time_zone=draw(st.sampled_from(TIME_ZONES)), default_band="OFF_PEAK", rules=tuple(rules)
    )


@st.composite
def decreasing_tiers(draw: st.DrawFn) -> tuple[VolumeTier, ...]:
    count = draw(st.integers(1, 4))
    limits = sorted(draw(st.sets(st.integers(1, 10**7), min_size=count - 1, max_size=count - 1)))
    prices = sorted(
        draw(st.lists(st.integers(0, 10**7), min_size=count, max_size=count)), reverse=True
    )
    return tuple(
        VolumeTier(limit, price) for limit, price in zip([*limits, 0], prices, strict=True)
    )


@st.composite
def rated_terms(
    draw: st.DrawFn, per_unit_increments: bool = False
) -> tuple[RateTerms, BandSchedule]:
    """(terms, schedule): terms with either band prices (and a schedule with bands),
    volume tiers, or neither."""
    if per_unit_increments:
        first, following = draw(st.sampled_from((0, 1))), 1
    else:
        first, following = draw(st.integers(0, 120)), draw(st.integers(1, 120))
    kind = draw(st.sampled_from(("flat", "banded", "tiered")))
    # Without band prices a plan's bands change nothing; draw them sometimes all the same.
    schedule = draw(schedules() if kind == "banded" else st.one_of(st.just(FLAT), schedules()))
    band_prices: tuple[tuple[str, int], ...] = ()
    if kind == "banded":
        named = draw(st.lists(st.sampled_from(BANDS), min_size=1, max_size=3, unique=True))
        band_prices = tuple((band, draw(st.integers(0, 10**7))) for band in named)
    terms = RateTerms(
        price_per_unit_micros=draw(st.integers(0, 10**7)),
        increment_units=following,
        first_increment_units=first,
        minimum_units=draw(st.integers(0, 300)),
        setup_fee_micros=draw(st.integers(0, 10**6)),
        unit_size=draw(st.sampled_from(UNIT_SIZES)),
        band_prices=band_prices,
        tiers=draw(decreasing_tiers()) if kind == "tiered" else (),
    )
    return terms, schedule


starts = st.one_of(
    st.integers(FIRST_START, LAST_START),
    # Near a clock change, where a band boundary is easiest to get wrong.
    st.builds(
        lambda moment, offset: moment + offset,
        st.sampled_from(TRANSITIONS),
        st.integers(-3 * 86_400, 3 * 86_400),
    ),
)


@PROPERTIES
@given(
    rated=rated_terms(),
    start=starts,
    units=st.integers(0, MAX_SECONDS),
    more=st.integers(0, MAX_SECONDS),
    over_time=st.booleans(),
)
def test_more_usage_never_costs_less(
    rated: tuple[RateTerms, BandSchedule], start: int, units: int, more: int, over_time: bool
) -> None:
    terms, schedule = rated
    less = price_units(terms, units, start, schedule, over_time)
    grown = price_units(terms, units + more, start, schedule, over_time)
    one_more = price_units(terms, units + 1, start, schedule, over_time)
    assert less.amount_micros <= one_more.amount_micros
    assert less.amount_micros <= grown.amount_micros
    assert less.billed_units <= one_more.billed_units
    assert less.billed_units <= grown.billed_units


@PROPERTIES
@given(
    rated=rated_terms(per_unit_increments=True),
    start=starts,
    first=st.integers(0, MAX_SECONDS // 2),
    second=st.integers(0, MAX_SECONDS // 2),
)
def test_splitting_a_per_second_record_never_charges_less(
    rated: tuple[RateTerms, BandSchedule], start: int, first: int, second: int
) -> None:
    terms, schedule = rated
    whole = price_units(terms, first + second, start, schedule, over_time=True)
    head = price_units(terms, first, start, schedule, over_time=True)
    tail = price_units(terms, second, start + first, schedule, over_time=True)
    assert head.amount_micros + tail.amount_micros >= whole.amount_micros


@PROPERTIES
@given(
    rated=rated_terms(),
    start=starts,
    units=st.one_of(st.integers(0, MAX_SECONDS), st.integers(0, 10**10)),
    over_time=st.booleans(),
)
def test_amounts_and_parts_are_whole_non_negative_and_add_up(
    rated: tuple[RateTerms, BandSchedule], start: int, units: int, over_time: bool
) -> None:
    terms, schedule = rated
    if over_time and units > MAX_SECONDS:
        units %= MAX_SECONDS
    price = price_units(terms, units, start, schedule, over_time)
    assert_parts_add_up(price)
    assert price.billed_units == billed_units(terms, units) >= units
    if units == 0:
        assert (price.amount_micros, price.parts) == (0, ())
    else:
        usage = [part for part in price.parts if part.label != "SETUP_FEE"]
        # The usage parts bill exactly the billed units, each part at least one unit.
        assert sum(part.units for part in usage) == price.billed_units
        assert all(part.units > 0 for part in usage)
        fees = [part.amount_micros for part in price.parts if part.label == "SETUP_FEE"]
        assert fees == ([terms.setup_fee_micros] if terms.setup_fee_micros else [])
        if over_time and terms.band_prices:
            # Time parts follow each other without gaps from the start.
            moment = start
            for part in usage:
                assert part.start == moment
                moment += part.units


@PROPERTIES
@given(
    rated=rated_terms(),
    start=starts,
    units=st.integers(0, MAX_SECONDS),
    over_time=st.booleans(),
)
def test_the_bulk_figures_are_the_detailed_ones(
    rated: tuple[RateTerms, BandSchedule], start: int, units: int, over_time: bool
) -> None:
    # RateUsageBatch without details prices with price_amount; with details, price_units.
    terms, schedule = rated
    price = price_units(terms, units, start, schedule, over_time)
    assert price_amount(terms, units, start, schedule, over_time) == (
        price.amount_micros,
        price.billed_units,
    )
