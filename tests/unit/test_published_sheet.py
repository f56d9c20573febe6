"""The published Northwind sheet (tests/data/published_tariffs.yaml), read with
read_tariff_sheet and rated through a TariffIndex, against charges computed by hand.

Prices in the sheet are per minute for seconds (unit_size MINUTE), so a per-minute price
P costs P/60 a second: 0.06 -> 1000 micros a second, 0.18 -> 3000, 0.24 -> 4000. Europe/
London is GMT (= UTC) in winter and BST (= UTC+1) in summer: 17:59 on the London wall
clock on 14 July 2027 is 16:59 UTC."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from meterline.kernel.bands import BandRule, BandSchedule
from meterline.kernel.errors import NotFound
from meterline.kernel.media import ServiceType
from meterline.kernel.pricing import SETUP_FEE_PART
from rating_service.domain.tariff_files import read_tariff_sheet, write_tariff_sheet
from rating_service.domain.tariffs import RatedUsage, Tariff, TariffIndex
from tests.support.rating import (
    PUBLISHED_PLAN,
    assert_parts_add_up,
    london,
    published_sheet,
    utc,
)

pytestmark = pytest.mark.unit

SHEET = published_sheet()
INDEX = TariffIndex(SHEET.tariffs, SHEET.plans)
PLAN = INDEX.plans[PUBLISHED_PLAN]

# Wednesday 14 July 2027, 20:00 BST: a weekday evening, OFF_PEAK.
EVENING = london(2027, 7, 14, 20, 0)

VOICE = ServiceType.VOICE
LONDON_NUMBER = "+442079460000"  # +4420: 1/1, OFF_PEAK 0.06, PEAK 0.18, WEEKEND 0.03
UK_NUMBER = "+441612345678"  # +44: 60/60, OFF_PEAK 0.12, PEAK 0.30, WEEKEND 0.06
MOBILE = "+447700900123"  # +447: 30/6, 0.24 in every band, setup 0.10
US_NUMBER = "+15551234567"  # +1: 1/1, minimum 30, 0.06
PARIS = "+33123456789"  # fallback '': 60/60, minimum 120, 1.50, setup 0.25


def rate(service_type: ServiceType, endpoint: str, units: int, at: int = EVENING) -> RatedUsage:
    rated = INDEX.rate(service_type, endpoint, units, at, plan_id=PUBLISHED_PLAN)
    assert_parts_add_up(rated.price)
    assert rated.plan.plan_id == PUBLISHED_PLAN
    return rated


def test_the_sheet_holds_the_plan_and_every_tariff() -> None:
    assert [plan.plan_id for plan in SHEET.plans] == [PUBLISHED_PLAN]
    schedule = PLAN.schedule
    assert (schedule.time_zone, schedule.default_band) == ("Europe/London", "OFF_PEAK")
    assert [(r.band, sorted(r.days), r.start_minute, r.end_minute) for r in schedule.rules] == [
        ("PEAK", [0, 1, 2, 3, 4], 8 * 60, 18 * 60),
        ("WEEKEND", [5, 6], 0, 24 * 60),
    ]
    assert len(INDEX) == len(SHEET.tariffs) == 16
    assert {tariff.plan_id for tariff in SHEET.tariffs} == {PUBLISHED_PLAN}
    assert {tariff.service_type for tariff in SHEET.tariffs} == set(ServiceType)


# -- overlapping prefixes --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("endpoint", "prefix", "billed", "amount"),
    [
        # 60 s on a weekday evening (OFF_PEAK).
        (LONDON_NUMBER, "+4420", 60, 60_000),  # 60 s * 1000
        ("+4420", "+4420", 60, 60_000),
        (MOBILE, "+447", 60, 340_000),  # 30 + 5*6 = 60 s * 4000 = 240000, + setup 100000
        ("+4470", "+447", 60, 340_000),
        (UK_NUMBER, "+44", 60, 120_000),  # one minute at 0.12
        ("+442", "+44", 60, 120_000),  # +442 is not +4420
        ("+44", "+44", 60, 120_000),
        (US_NUMBER, "+1", 60, 60_000),  # 60 s * 1000 (above the 30 s minimum)
        ("+1", "+1", 60, 60_000),
        ("+4", "", 120, 3_250_000),  # minimum 120 s * 25000 = 3000000, + setup 250000
        (PARIS, "", 120, 3_250_000),
    ],
)
def test_the_longest_published_prefix_wins(
    endpoint: str, prefix: str, billed: int, amount: int
) -> None:
    assert INDEX.match(VOICE, endpoint, EVENING, PLAN).prefix == prefix
    rated = rate(VOICE, endpoint, 60)
    assert rated.tariff.prefix == prefix
    assert (rated.price.billed_units, rated.price.amount_micros) == (billed, amount)


def test_the_published_plan_is_not_the_default_plan() -> None:
    # Without the plan, the index's default plan has no Northwind tariffs at all.
    with pytest.raises(NotFound):
        INDEX.rate(VOICE, UK_NUMBER, 60, EVENING)
    assert INDEX.plan_for().plan_id == "default"


# -- time bands ------------------------------------------------------------------------------

# (label, units, amount_micros, part start) of each time part.
Parts = list[tuple[str, int, int, int]]


@pytest.mark.parametrize(
    ("endpoint", "start", "units", "billed", "parts"),
    [
        pytest.param(
            # Wednesday 17:59 BST = 16:59 UTC: 60 s PEAK (60 * 3000) then 180 s OFF_PEAK
            # (180 * 1000). Total 360000.
            LONDON_NUMBER,
            utc(2027, 7, 14, 16, 59),
            240,
            240,
            [
                ("PEAK", 60, 180_000, london(2027, 7, 14, 17, 59)),
                ("OFF_PEAK", 180, 180_000, london(2027, 7, 14, 18, 0)),
            ],
            id="summer-17:59-BST-per-second",
        ),
        pytest.param(
            # 17:59 UTC in summer is 18:59 BST: all 240 s OFF_PEAK (240 * 1000).
            LONDON_NUMBER,
            utc(2027, 7, 14, 17, 59),
            240,
            240,
            [("OFF_PEAK", 240, 240_000, utc(2027, 7, 14, 17, 59))],
            id="summer-17:59-UTC-is-after-peak",
        ),
        pytest.param(
            # Wednesday 13 January 2027, 17:59 GMT (= UTC): the same split as in summer.
            LONDON_NUMBER,
            utc(2027, 1, 13, 17, 59),
            240,
            240,
            [
                ("PEAK", 60, 180_000, utc(2027, 1, 13, 17, 59)),
                ("OFF_PEAK", 180, 180_000, utc(2027, 1, 13, 18, 0)),
            ],
            id="winter-17:59-GMT-per-second",
        ),
        pytest.param(
            # 60/60: 240 s = 4 whole minutes; 1 min PEAK at 0.30 = 300000, 3 min OFF_PEAK at
            # 0.12 = 360000. Total 660000.
            UK_NUMBER,
            london(2027, 7, 14, 17, 59),
            240,
            240,
            [
                ("PEAK", 60, 300_000, london(2027, 7, 14, 17, 59)),
                ("OFF_PEAK", 180, 360_000, london(2027, 7, 14, 18, 0)),
            ],
            id="summer-17:59-per-minute",
        ),
        pytest.param(
            # 61 s from 17:59:30 are billed as 120 s: 30 s PEAK (30 * 5000 = 150000), the
            # rounded-up rest OFF_PEAK (90 * 2000 = 180000). Total 330000.
            UK_NUMBER,
            london(2027, 7, 14, 17, 59, 30),
            61,
            120,
            [
                ("PEAK", 30, 150_000, london(2027, 7, 14, 17, 59, 30)),
                ("OFF_PEAK", 90, 180_000, london(2027, 7, 14, 18, 0)),
            ],
            id="rounded-up-seconds-fall-in-the-next-band",
        ),
        pytest.param(
            # Friday 16 July 2027 23:58 BST: 120 s OFF_PEAK (120000), then Saturday 00:00,
            # 180 s WEEKEND at 500 a second (90000). Total 210000.
            LONDON_NUMBER,
            london(2027, 7, 16, 23, 58),
            300,
            300,
            [
                ("OFF_PEAK", 120, 120_000, london(2027, 7, 16, 23, 58)),
                ("WEEKEND", 180, 90_000, london(2027, 7, 17, 0, 0)),
            ],
            id="friday-23:58-into-the-weekend",
        ),
        pytest.param(
            # Friday 23:59 BST per minute: 1 min OFF_PEAK 0.12, 1 min WEEKEND 0.06.
            UK_NUMBER,
            london(2027, 7, 16, 23, 59),
            120,
            120,
            [
                ("OFF_PEAK", 60, 120_000, london(2027, 7, 16, 23, 59)),
                ("WEEKEND", 60, 60_000, london(2027, 7, 17, 0, 0)),
            ],
            id="friday-23:59-per-minute",
        ),
        pytest.param(
            # Sunday 18 July 23:59 BST: 60 s WEEKEND (30000), Monday 00:00 60 s OFF_PEAK
            # (60000).
            LONDON_NUMBER,
            london(2027, 7, 18, 23, 59),
            120,
            120,
            [
                ("WEEKEND", 60, 30_000, london(2027, 7, 18, 23, 59)),
                ("OFF_PEAK", 60, 60_000, london(2027, 7, 19, 0, 0)),
            ],
            id="sunday-into-monday",
        ),
        pytest.param(
            # Monday 07:59 BST: 60 s OFF_PEAK (60000), 08:00 60 s PEAK (180000).
            LONDON_NUMBER,
            london(2027, 7, 19, 7, 59),
            120,
            120,
            [
                ("OFF_PEAK", 60, 60_000, london(2027, 7, 19, 7, 59)),
                ("PEAK", 60, 180_000, london(2027, 7, 19, 8, 0)),
            ],
            id="monday-morning-into-peak",
        ),
        pytest.param(
            # 08:00 Monday to 00:10 Tuesday (16 h 10 min): 10 h PEAK (36000 s * 3000) then
            # 6 h 10 min OFF_PEAK (22200 s * 1000).
            LONDON_NUMBER,
            london(2027, 7, 19, 8, 0),
            58_200,
            58_200,
            [
                ("PEAK", 36_000, 108_000_000, london(2027, 7, 19, 8, 0)),
                ("OFF_PEAK", 22_200, 22_200_000, london(2027, 7, 19, 18, 0)),
            ],
            id="across-midnight-off-peak-merges",
        ),
    ],
)
def test_calls_are_split_across_the_bands_they_cross(
    endpoint: str, start: int, units: int, billed: int, parts: Parts
) -> None:
    rated = rate(VOICE, endpoint, units, start)
    got = [(p.label, p.units, p.amount_micros, p.start) for p in rated.price.parts]
    assert got == parts
    assert rated.price.billed_units == billed
    assert rated.price.amount_micros == sum(amount for _, _, amount, _ in parts)


def test_summer_london_time_is_an_hour_ahead_of_utc() -> None:
    # The epoch used above: 17:59 BST is 16:59 UTC; 17:59 GMT is 17:59 UTC.
    assert london(2027, 7, 14, 17, 59) == utc(2027, 7, 14, 16, 59)
    assert london(2027, 1, 13, 17, 59) == utc(2027, 1, 13, 17, 59)


# -- increments and minimums -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("endpoint", "units", "billed", "amount"),
    [
        # 60/60 at 0.12 a minute.
        (UK_NUMBER, 0, 0, 0),
        (UK_NUMBER, 1, 60, 120_000),
        (UK_NUMBER, 60, 60, 120_000),
        (UK_NUMBER, 61, 120, 240_000),
        (UK_NUMBER, 3_599, 3_600, 7_200_000),  # 60 minutes * 120000
        # 30/6 at 4000 a second, plus the 100000 setup fee.
        (MOBILE, 0, 0, 0),
        (MOBILE, 1, 30, 220_000),  # 30 * 4000 + 100000
        (MOBILE, 30, 30, 220_000),
        (MOBILE, 31, 36, 244_000),  # 36 * 4000 + 100000
        (MOBILE, 36, 36, 244_000),
        (MOBILE, 37, 42, 268_000),  # 42 * 4000 + 100000
        (MOBILE, 100, 102, 508_000),  # 30 + 12*6 = 102; 102 * 4000 + 100000
        # 1/1 at 1000 a second.
        (LONDON_NUMBER, 1, 1, 1_000),
        (LONDON_NUMBER, 59, 59, 59_000),
        (LONDON_NUMBER, 61, 61, 61_000),
    ],
)
def test_each_increment_form(endpoint: str, units: int, billed: int, amount: int) -> None:
    rated = rate(VOICE, endpoint, units)
    assert (rated.price.billed_units, rated.price.amount_micros) == (billed, amount)


@pytest.mark.parametrize(
    ("service_type", "endpoint", "units", "billed", "amount"),
    [
        # +1: per second with a 30 s minimum, 1000 a second.
        (VOICE, US_NUMBER, 1, 30, 30_000),
        (VOICE, US_NUMBER, 29, 30, 30_000),
        (VOICE, US_NUMBER, 30, 30, 30_000),
        (VOICE, US_NUMBER, 31, 31, 31_000),
        # Fallback: minimum 120 s, then whole minutes at 25000 a second, + 250000 setup.
        (VOICE, PARIS, 1, 120, 3_250_000),
        (VOICE, PARIS, 120, 120, 3_250_000),
        (VOICE, PARIS, 121, 180, 4_750_000),  # 180 * 25000 + 250000
        # VIDEO +44: minimum 10 s, per second at 10000 a second.
        (ServiceType.VIDEO, UK_NUMBER, 5, 10, 100_000),
        (ServiceType.VIDEO, UK_NUMBER, 90, 90, 900_000),
        # VIDEO fallback: 60/60 at 20000 a second.
        (ServiceType.VIDEO, PARIS, 61, 120, 2_400_000),
        # weather-widget: at least 10 events at 1000 each.
        (ServiceType.APPLICATION, "weather-widget", 1, 10, 10_000),
        (ServiceType.APPLICATION, "weather-widget", 11, 11, 11_000),
    ],
)
def test_minimums(
    service_type: ServiceType, endpoint: str, units: int, billed: int, amount: int
) -> None:
    rated = rate(service_type, endpoint, units)
    assert (rated.price.billed_units, rated.price.amount_micros) == (billed, amount)


# -- setup fees --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("endpoint", "units", "billed", "usage_amount", "setup_fee"),
    [
        (MOBILE, 1, 30, 120_000, 100_000),  # 30 s * 4000
        (MOBILE, 45, 48, 192_000, 100_000),  # 30 + 3*6 = 48 s * 4000
        (PARIS, 1, 120, 3_000_000, 250_000),  # 120 s * 25000
        (LONDON_NUMBER, 10, 10, 10_000, 0),  # no setup fee on +4420
    ],
)
def test_setup_fees_are_a_part_of_their_own(
    endpoint: str, units: int, billed: int, usage_amount: int, setup_fee: int
) -> None:
    rated = rate(VOICE, endpoint, units)
    assert rated.price.billed_units == billed
    fees = [part for part in rated.price.parts if part.label == SETUP_FEE_PART]
    usage = [part for part in rated.price.parts if part.label != SETUP_FEE_PART]
    if setup_fee:
        assert [(p.units, p.amount_micros) for p in fees] == [(0, setup_fee)]
    else:
        assert fees == []
    assert sum(part.amount_micros for part in usage) == usage_amount
    assert rated.price.amount_micros == usage_amount + setup_fee


def test_no_usage_costs_nothing_not_even_the_setup_fee() -> None:
    for endpoint in (MOBILE, PARIS):
        rated = rate(VOICE, endpoint, 0)
        assert (rated.price.amount_micros, rated.price.billed_units) == (0, 0)
        assert rated.price.parts == ()


# -- data tiers ----------------------------------------------------------------------------------

GB = 10**9


@pytest.mark.parametrize(
    ("service_type", "endpoint", "units", "parts"),
    [
        # WEB_BROWSING northwind.example: per MB, first 1 GB at 10000 a MB, the rest 4000.
        (ServiceType.WEB_BROWSING, "https://www.northwind.example/a", GB // 2, [5_000_000]),
        # 999999999 bytes * 10000 / 10^6 = 9999999.99 -> rounded up once to 10000000.
        (ServiceType.WEB_BROWSING, "www.northwind.example", GB - 1, [10_000_000]),
        (ServiceType.WEB_BROWSING, "northwind.example", GB, [10_000_000]),
        # One byte into tier 2: 1 * 4000 / 10^6 rounds up to 1 micro.
        (ServiceType.WEB_BROWSING, "northwind.example", GB + 1, [10_000_000, 1]),
        # 500 MB in tier 2: 500 * 4000.
        (ServiceType.WEB_BROWSING, "northwind.example", 3 * GB // 2, [10_000_000, 2_000_000]),
        # FILE_DOWNLOAD northwind.example: per GiB (2^30 bytes) 2.00 up to 10^9 bytes, then
        # 0.50. 5*10^8 * 2000000 / 2^30 = 931322.57 -> 931323.
        (ServiceType.FILE_DOWNLOAD, "mirror.northwind.example", GB // 2, [931_323]),
        # 10^9 * 2000000 / 2^30 = 1862645.15 -> 1862646.
        (ServiceType.FILE_DOWNLOAD, "mirror.northwind.example", GB, [1_862_646]),
        # 2^30 bytes: 10^9 in tier 1 (1862645.15) and 73741824 in tier 2 (73741824 * 500000
        # / 2^30 = 34338.71). Rounded once for the record: 1896983.86 -> 1896984, of which
        # tier 1 shows 1862646 and tier 2 the rest, 34338 (not 34339: no rounding per part).
        (ServiceType.FILE_DOWNLOAD, "northwind.example", 2**30, [1_862_646, 34_338]),
    ],
)
def test_volume_tiers(
    service_type: ServiceType, endpoint: str, units: int, parts: list[int]
) -> None:
    rated = rate(service_type, endpoint, units)
    assert rated.tariff.prefix == "northwind.example"
    assert rated.price.billed_units == units
    got = [(part.label, part.amount_micros) for part in rated.price.parts]
    assert got == [(f"TIER_{number}", amount) for number, amount in enumerate(parts, start=1)]
    tier_units = [part.units for part in rated.price.parts]
    assert tier_units == ([units] if units <= GB else [GB, units - GB])
    assert rated.price.amount_micros == sum(parts)


@pytest.mark.parametrize(
    ("endpoint", "prefix", "units", "billed", "amount"),
    [
        # The fallback: 1 kB steps at 20000 a MB: 1500 B -> 2000 B -> 40 micros.
        ("https://example.org/index.html", "", 1_500, 2_000, 40),
        # A host that merely contains the domain is not below it.
        ("northwind.example.org", "", 1_000_000, 1_000_000, 20_000),
        ("evilnorthwind.example", "", 1_000, 1_000, 20),
        ("shop.NORTHWIND.example:8443", "northwind.example", 1_000_000, 1_000_000, 10_000),
    ],
)
def test_web_browsing_matches_the_host_or_a_parent_domain(
    endpoint: str, prefix: str, units: int, billed: int, amount: int
) -> None:
    rated = rate(ServiceType.WEB_BROWSING, endpoint, units)
    assert rated.tariff.prefix == prefix
    assert (rated.price.billed_units, rated.price.amount_micros) == (billed, amount)


# -- messages and application events -------------------------------------------------------------


@pytest.mark.parametrize(
    ("service_type", "endpoint", "units", "prefix", "amount"),
    [
        (ServiceType.INSTANT_MESSAGING, MOBILE, 3, "+44", 120_000),  # 3 * 40000
        (ServiceType.INSTANT_MESSAGING, UK_NUMBER, 1, "+44", 40_000),
        (ServiceType.INSTANT_MESSAGING, PARIS, 3, "", 300_000),  # 3 * 100000
        (ServiceType.INSTANT_MESSAGING, PARIS, 0, "", 0),
        (ServiceType.APPLICATION, "chess-pro", 5, "chess-pro", 500_000),  # 5 * 100000
        # Application ids match exactly, not by prefix.
        (ServiceType.APPLICATION, "chess-pro-2", 5, "", 250_000),  # 5 * 50000
        (ServiceType.APPLICATION, "chess", 1, "", 50_000),
        (ServiceType.APPLICATION, "weather-widget", 25, "weather-widget", 25_000),
        (ServiceType.APPLICATION, "unknown-app", 1, "", 50_000),
    ],
)
def test_messages_and_application_events(
    service_type: ServiceType, endpoint: str, units: int, prefix: str, amount: int
) -> None:
    rated = rate(service_type, endpoint, units)
    assert rated.tariff.prefix == prefix
    assert rated.price.amount_micros == amount
    assert rated.price.billed_units == units


# -- the 2030 price change ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("start", "effective_from", "band", "amount"),
    [
        # Monday 31 December 2029 23:59:59 GMT: the old version, even though the call runs
        # into 2030. One minute OFF_PEAK at 0.12.
        (utc(2029, 12, 31, 23, 59, 59), None, "OFF_PEAK", 120_000),
        # Tuesday 1 January 2030 00:00:00: the new version, OFF_PEAK at 0.10.
        (utc(2030, 1, 1), datetime(2030, 1, 1, tzinfo=UTC), "OFF_PEAK", 100_000),
        (utc(2030, 1, 1, 0, 0, 1), datetime(2030, 1, 1, tzinfo=UTC), "OFF_PEAK", 100_000),
        # Midday, PEAK: 0.30 before, 0.24 after.
        (utc(2029, 12, 31, 12), None, "PEAK", 300_000),
        (utc(2030, 1, 1, 12), datetime(2030, 1, 1, tzinfo=UTC), "PEAK", 240_000),
    ],
)
def test_the_price_change_applies_to_usage_starting_at_its_boundary(
    start: int, effective_from: datetime | None, band: str, amount: int
) -> None:
    rated = rate(VOICE, UK_NUMBER, 60, start)
    assert rated.tariff.prefix == "+44"
    assert rated.tariff.effective_from == effective_from
    assert [part.label for part in rated.price.parts] == [band]
    assert (rated.price.billed_units, rated.price.amount_micros) == (60, amount)
    # The London and mobile tariffs have one version: unchanged across the boundary.
    assert rate(VOICE, LONDON_NUMBER, 60, start).tariff.effective_from is None


# -- daylight saving -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("day", "utc_offset_hours"),
    [
        (date(2027, 3, 26), 0),  # Friday before the clocks go forward (GMT)
        (date(2027, 3, 29), 1),  # Monday after (BST)
        (date(2027, 10, 29), 1),  # Friday before the clocks go back (BST)
        (date(2027, 11, 1), 0),  # Monday after (GMT)
    ],
)
def test_the_18_00_boundary_stays_at_18_00_local_across_clock_changes(
    day: date, utc_offset_hours: int
) -> None:
    boundary = london(day.year, day.month, day.day, 18, 0)
    assert boundary == utc(day.year, day.month, day.day, 18 - utc_offset_hours, 0)
    assert PLAN.schedule.band_at(boundary - 1) == "PEAK"
    assert PLAN.schedule.band_at(boundary) == "OFF_PEAK"
    assert PLAN.schedule.split(boundary - 60, 120) == [
        ("PEAK", boundary - 60, 60),
        ("OFF_PEAK", boundary, 60),
    ]
    # A per-second London call from 17:59 local: 60 s PEAK (180000) + 60 s OFF_PEAK (60000).
    rated = rate(VOICE, LONDON_NUMBER, 120, boundary - 60)
    assert [(p.label, p.start, p.amount_micros) for p in rated.price.parts] == [
        ("PEAK", boundary - 60, 180_000),
        ("OFF_PEAK", boundary, 60_000),
    ]


def test_every_weekday_of_2027_ends_peak_at_18_00_london_time() -> None:
    day = date(2027, 1, 1)
    checked = 0
    while day.year == 2027:
        boundary = london(day.year, day.month, day.day, 18, 0)
        weekday = day.weekday() < 5
        assert PLAN.schedule.band_at(boundary - 1) == ("PEAK" if weekday else "WEEKEND")
        assert PLAN.schedule.band_at(boundary) == ("OFF_PEAK" if weekday else "WEEKEND")
        checked += weekday
        day += timedelta(days=1)
    assert checked == 261


@pytest.mark.parametrize(
    ("start", "elapsed"),
    [
        # Sunday 28 March 2027: 00:59 GMT, clocks jump from 01:00 GMT to 02:00 BST.
        (london(2027, 3, 28, 0, 59), 120),
        # Sunday 31 October 2027: 01:59 BST, clocks go back from 02:00 BST to 01:00 GMT.
        (london(2027, 10, 31, 1, 59), 120),
    ],
)
def test_a_call_across_a_clock_change_pays_for_the_seconds_that_passed(
    start: int, elapsed: int
) -> None:
    # Both sides are WEEKEND (500 a second): 120 s cost 60000 whatever the wall clock did.
    rated = rate(VOICE, LONDON_NUMBER, elapsed, start)
    assert [(p.label, p.units, p.start) for p in rated.price.parts] == [("WEEKEND", elapsed, start)]
    assert rated.price.amount_micros == 60_000


@pytest.mark.parametrize(
    ("time_zone", "start_minute", "wall_clock"),
    [
        # Europe/London, Sunday 28 March 2027: 01:00 GMT -> 02:00 BST. A NIGHT band from
        # 01:30 to 05:00 covers 02:15 BST on the wall clock.
        ("Europe/London", 90, datetime(2027, 3, 28, 2, 15)),
        # America/New_York, Sunday 14 March 2027: 02:00 EST -> 03:00 EDT. NIGHT from 02:30
        # to 06:00 covers 03:10 EDT.
        ("America/New_York", 150, datetime(2027, 3, 14, 3, 10)),
    ],
)
def test_a_band_starting_in_the_skipped_hour_starts_when_the_clock_jumps(
    time_zone: str, start_minute: int, wall_clock: datetime
) -> None:
    schedule = BandSchedule(
        time_zone, "OFF_PEAK", (BandRule("NIGHT", frozenset(range(7)), start_minute, 360),)
    )
    moment = int(wall_clock.replace(tzinfo=ZoneInfo(time_zone)).timestamp())
    assert schedule.band_at(moment) == "NIGHT"


# -- export ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["exported.yaml", "exported.csv"])
def test_the_sheet_written_back_reads_the_same(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    write_tariff_sheet(path, SHEET.plans, SHEET.tariffs)
    again = read_tariff_sheet(path)
    # YAML carries the plans; CSV only the tariffs (each naming its plan).
    assert again.plans == (SHEET.plans if name.endswith(".yaml") else [])

    def spelled(tariffs: list[Tariff]) -> list[Tariff]:
        # An increment of "1" is written as "1/1": the first increment spelled out.
        return [
            replace(
                t,
                terms=replace(
                    t.terms,
                    first_increment_units=t.terms.first_increment_units or t.terms.increment_units,
                ),
            )
            for t in tariffs
        ]

    assert spelled(again.tariffs) == spelled(SHEET.tariffs)
    rebuilt = TariffIndex(again.tariffs, SHEET.plans)
    for endpoint, units, start in (
        (LONDON_NUMBER, 240, utc(2027, 7, 14, 16, 59)),
        (UK_NUMBER, 60, utc(2030, 1, 1)),
        (MOBILE, 31, EVENING),
    ):
        assert rebuilt.rate(VOICE, endpoint, units, start, plan_id=PUBLISHED_PLAN).price == (
            INDEX.rate(VOICE, endpoint, units, start, plan_id=PUBLISHED_PLAN).price
        )
