"""The rating service over gRPC: the published Northwind sheet imported under a plan of
each test's own, breakdowns, batches, plans assigned to accounts, tariff versions, bad
input, operator-only calls, and the tariff cache kept fresh on every instance.

Every test writes under its own rate plan id or its own prefixes: the run's rating
database is shared by all tests (the default plan holds other tests' tariffs)."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
from google.protobuf import timestamp_pb2

import rating_service.server
from meterline.kernel.grpc_errors import error_reason
from meterline.rating.v1 import rating_pb2, rating_pb2_grpc, types_pb2
from rating_service.grpc_api import plan_to_wire, tariff_to_wire
from tests.support import tls
from tests.support.clients import OPERATOR, Stubs, device
from tests.support.rating import london, published_sheet, utc
from tests.support.stack import InProcessStack

pytestmark = pytest.mark.integration

INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND
LONDON_NUMBER = "+442079460000"  # +4420: 1/1, OFF_PEAK 0.06, PEAK 0.18, WEEKEND 0.03 a min
UK_NUMBER = "+441612345678"  # +44: 60/60, OFF_PEAK 0.12, PEAK 0.30 (2030: 0.10, 0.24)
MOBILE = "+447700900123"  # +447: 30/6, 0.24 a minute, setup 0.10
PUBLISHED_TARIFFS = len(published_sheet().tariffs)


def unique(prefix: str = "nw") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def unique_number() -> str:
    """A VOICE prefix no other test uses: +88 and ten random digits."""
    return "+88" + str(uuid.uuid4().int)[:10]


def stamp(epoch: int) -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=epoch)


def wire_time(moment: datetime) -> timestamp_pb2.Timestamp:
    wire = timestamp_pb2.Timestamp()
    wire.FromDatetime(moment)
    return wire


async def import_published(api: Stubs, plan_id: str | None = None) -> str:
    """Import the published sheet under a new plan id; returns the plan id."""
    plan_id = plan_id or unique()
    sheet = published_sheet(plan_id)
    response = await api.rating.ImportTariffs(
        rating_pb2.ImportTariffsRequest(
            tariffs=[tariff_to_wire(t) for t in sheet.tariffs],
            rate_plans=[plan_to_wire(p) for p in sheet.plans],
        ),
        metadata=OPERATOR,
    )
    assert (response.written, response.plans_written) == (PUBLISHED_TARIFFS, 1)
    return plan_id


def usage(
    endpoint: str,
    units: int,
    start: int = 0,
    plan_id: str = "",
    service_type: types_pb2.ServiceType.ValueType = types_pb2.VOICE,
    **fields: object,
) -> rating_pb2.RateUsageRequest:
    return rating_pb2.RateUsageRequest(
        service_type=service_type,
        endpoint=endpoint,
        units=units,
        start_time=stamp(start) if start else None,
        rate_plan_id=plan_id,
        **fields,  # type: ignore[arg-type]
    )


def voice_tariff(
    prefix: str,
    price_micros: int,
    plan_id: str = "",
    effective_from: datetime | None = None,
) -> rating_pb2.Tariff:
    tariff = rating_pb2.Tariff(
        service_type=types_pb2.VOICE,
        prefix=prefix,
        unit=types_pb2.SECOND,
        price_per_unit_micros=price_micros,
        increment_units=1,
        currency="GBP",
        rate_plan_id=plan_id,
    )
    if effective_from is not None:
        tariff.effective_from.CopyFrom(wire_time(effective_from))
    return tariff


async def list_tariffs(
    api: Stubs, plan_id: str, include_history: bool = False
) -> list[rating_pb2.Tariff]:
    response = await api.rating.ListTariffs(
        rating_pb2.ListTariffsRequest(
            rate_plan_id=plan_id, include_history=include_history, page_size=1000
        ),
        metadata=OPERATOR,
    )
    return list(response.tariffs)


async def default_plan_id(api: Stubs) -> str:
    plans = await api.rating.ListRatePlans(rating_pb2.ListRatePlansRequest(), metadata=OPERATOR)
    (default,) = [plan.rate_plan_id for plan in plans.rate_plans if plan.is_default]
    return default


# -- import and breakdowns ------------------------------------------------------------------------


async def test_the_published_sheet_imports_with_its_plan(api: Stubs) -> None:
    plan_id = await import_published(api)
    plans = await api.rating.ListRatePlans(rating_pb2.ListRatePlansRequest(), metadata=OPERATOR)
    (plan,) = [plan for plan in plans.rate_plans if plan.rate_plan_id == plan_id]
    assert (plan.time_zone, plan.default_band, plan.is_default) == (
        "Europe/London",
        "OFF_PEAK",
        False,
    )
    assert [(b.band, b.days, b.start_time, b.end_time) for b in plan.time_bands] == [
        ("PEAK", "MON,TUE,WED,THU,FRI", "08:00", "18:00"),
        ("WEEKEND", "SAT,SUN", "00:00", "24:00"),
    ]
    everything = await list_tariffs(api, plan_id, include_history=True)
    assert len(everything) == PUBLISHED_TARIFFS
    uk = [t for t in everything if t.service_type == types_pb2.VOICE and t.prefix == "+44"]
    assert len(uk) == 2
    first, second = uk
    assert not first.HasField("effective_from")
    assert first.effective_to.ToDatetime(tzinfo=UTC) == datetime(2030, 1, 1, tzinfo=UTC)
    assert second.effective_from.ToDatetime(tzinfo=UTC) == datetime(2030, 1, 1, tzinfo=UTC)
    assert not second.HasField("effective_to")
    assert (first.price_per_unit_micros, second.price_per_unit_micros) == (120_000, 100_000)


async def test_rate_usage_returns_the_band_breakdown(api: Stubs) -> None:
    plan_id = await import_published(api)
    # Wednesday 14 July 2027, 17:59 BST = 16:59 UTC, 240 s per second: 60 s PEAK at 3000 a
    # second (180000), 180 s OFF_PEAK at 1000 (180000).
    start = utc(2027, 7, 14, 16, 59)
    rated = await api.rating.RateUsage(usage(LONDON_NUMBER, 240, start, plan_id), metadata=OPERATOR)
    assert (rated.amount_micros, rated.billed_units, rated.currency) == (360_000, 240, "GBP")
    assert [
        (p.band, p.units, p.price_per_unit_micros, p.amount_micros, p.start_time.seconds)
        for p in rated.parts
    ] == [
        ("PEAK", 60, 180_000, 180_000, start),
        ("OFF_PEAK", 180, 60_000, 180_000, london(2027, 7, 14, 18, 0)),
    ]
    assert sum(p.amount_micros for p in rated.parts) == rated.amount_micros
    rate = rated.rate
    assert (rate.prefix, rate.rate_plan_id, rate.time_zone, rate.default_band) == (
        "+4420",
        plan_id,
        "Europe/London",
        "OFF_PEAK",
    )
    assert (rate.unit_size, rate.increment_units, rate.first_increment_units) == (60, 1, 0)
    assert {(b.band, b.price_per_unit_micros) for b in rate.band_prices} == {
        ("PEAK", 180_000),
        ("WEEKEND", 30_000),
    }
    assert [b.band for b in rate.time_bands] == ["PEAK", "WEEKEND"]


async def test_setup_fees_and_tiers_are_parts_too(api: Stubs) -> None:
    plan_id = await import_published(api)
    evening = london(2027, 7, 14, 20, 0)
    # +447, 1 s: billed 30 s at 4000 (120000) plus the 100000 setup fee.
    mobile = await api.rating.RateUsage(usage(MOBILE, 1, evening, plan_id), metadata=OPERATOR)
    assert (mobile.amount_micros, mobile.billed_units) == (220_000, 30)
    (fee,) = [part for part in mobile.parts if part.band == "SETUP_FEE"]
    assert (fee.units, fee.amount_micros, fee.HasField("start_time")) == (0, 100_000, False)
    assert sum(p.amount_micros for p in mobile.parts) == 220_000
    # 1.5 GB from a Northwind site: 1 GB at 0.01 a MB (10000000), 500 MB at 0.004 (2000000).
    web = await api.rating.RateUsage(
        usage(
            "https://www.northwind.example/stream",
            1_500_000_000,
            evening,
            plan_id,
            service_type=types_pb2.WEB_BROWSING,
        ),
        metadata=OPERATOR,
    )
    assert [(p.band, p.units, p.amount_micros) for p in web.parts] == [
        ("TIER_1", 1_000_000_000, 10_000_000),
        ("TIER_2", 500_000_000, 2_000_000),
    ]
    assert web.amount_micros == 12_000_000
    assert [(t.up_to_units, t.price_per_unit_micros) for t in web.rate.tiers] == [
        (1_000_000_000, 10_000),
        (0, 4_000),
    ]
    # An application priced by its id, given as application_id with no endpoint.
    chess = await api.rating.RateUsage(
        usage(
            "", 5, evening, plan_id, service_type=types_pb2.APPLICATION, application_id="chess-pro"
        ),
        metadata=OPERATOR,
    )
    assert (chess.amount_micros, chess.rate.prefix) == (500_000, "chess-pro")


async def test_the_price_change_applies_from_its_boundary(api: Stubs) -> None:
    plan_id = await import_published(api)
    before = await api.rating.RateUsage(
        usage(UK_NUMBER, 60, utc(2029, 12, 31, 23, 59, 59), plan_id), metadata=OPERATOR
    )
    after = await api.rating.RateUsage(
        usage(UK_NUMBER, 60, utc(2030, 1, 1), plan_id), metadata=OPERATOR
    )
    # One minute OFF_PEAK: 0.12 under the old version, 0.10 under the new.
    assert (before.amount_micros, after.amount_micros) == (120_000, 100_000)
    assert not before.rate.HasField("effective_from")
    assert after.rate.effective_from.ToDatetime(tzinfo=UTC) == datetime(2030, 1, 1, tzinfo=UTC)
    assert before.rate.tariff_id != after.rate.tariff_id


async def test_get_rate(api: Stubs) -> None:
    plan_id = await import_published(api)
    rate = await api.rating.GetRate(
        rating_pb2.GetRateRequest(
            service_type=types_pb2.VOICE, endpoint=MOBILE, rate_plan_id=plan_id
        ),
        metadata=OPERATOR,
    )
    assert (rate.prefix, rate.currency, rate.rate_plan_id) == ("+447", "GBP", plan_id)
    assert (rate.first_increment_units, rate.increment_units, rate.unit_size) == (30, 6, 60)
    assert (rate.price_per_unit_micros, rate.setup_fee_micros) == (240_000, 100_000)
    assert rate.unit == types_pb2.SECOND
    later = await api.rating.GetRate(
        rating_pb2.GetRateRequest(
            service_type=types_pb2.VOICE,
            endpoint=UK_NUMBER,
            rate_plan_id=plan_id,
            at=stamp(utc(2030, 6, 1)),
        ),
        metadata=OPERATOR,
    )
    assert (later.prefix, later.price_per_unit_micros) == ("+44", 100_000)
    # Devices may read rates.
    fallback = await api.rating.GetRate(
        rating_pb2.GetRateRequest(
            service_type=types_pb2.APPLICATION, endpoint="unknown-app", rate_plan_id=plan_id
        ),
        metadata=device(unique("acct")),
    )
    assert (fallback.prefix, fallback.price_per_unit_micros) == ("", 50_000)


# -- batches -------------------------------------------------------------------------------


@pytest.mark.parametrize("include_details", [False, True])
async def test_a_batch_prices_good_items_and_reports_each_bad_one(
    api: Stubs, include_details: bool
) -> None:
    plan_id = await import_published(api)
    start = utc(2027, 7, 14, 16, 59)  # 17:59 BST
    items = [
        usage(LONDON_NUMBER, 240, start, plan_id),  # 360000, as above
        usage(LONDON_NUMBER, -1, start, plan_id),
        usage(LONDON_NUMBER, 1, start, plan_id, service_type=99),  # type: ignore[arg-type]
        usage(LONDON_NUMBER, 1, start, plan_id, service_type=types_pb2.SERVICE_TYPE_UNSPECIFIED),
        usage("", 1, start, plan_id),
        usage(LONDON_NUMBER, 1, start, unique("no-such-plan")),
        usage(MOBILE, 1, start, plan_id),  # 30 s at 4000 + 100000 setup = 220000
        usage("+44 20", 1, start, plan_id),
    ]
    response = await api.rating.RateUsageBatch(
        rating_pb2.RateUsageBatchRequest(items=items, include_details=include_details),
        metadata=OPERATOR,
    )
    results = list(response.results)
    assert [r.WhichOneof("result") for r in results] == [
        "rated",
        "error",
        "error",
        "error",
        "error",
        "error",
        "rated",
        "error",
    ]
    assert (results[0].rated.amount_micros, results[0].rated.billed_units) == (360_000, 240)
    assert (results[6].rated.amount_micros, results[6].rated.billed_units) == (220_000, 30)
    errors = [(r.error.code, r.error.message) for r in results if r.HasField("error")]
    codes = [code for code, _ in errors]
    assert codes == [INVALID.value[0]] * 4 + [NOT_FOUND.value[0], INVALID.value[0]]
    words = ["negative", "not a known service type", "service_type is missing", "empty"]
    words += ["no rate plan", "spaces"]
    for (_, message), word in zip(errors, words, strict=True):
        assert word in message
    for index in (0, 6):
        rated = results[index].rated
        assert rated.currency == "GBP"
        if include_details:
            assert rated.HasField("rate") and rated.rate.rate_plan_id == plan_id
            assert sum(p.amount_micros for p in rated.parts) == rated.amount_micros
            assert len(rated.parts) == 2
        else:
            assert not rated.HasField("rate")
            assert list(rated.parts) == []


@pytest.mark.parametrize("include_details", [False, True])
async def test_an_item_whose_charge_overflows_is_an_item_error(
    api: Stubs, include_details: bool
) -> None:
    plan_id = await import_published(api)
    # 10^15 s of international video at 1.20 a minute = 2 * 10^19 micros > 2^63 - 1.
    huge = usage("+33123456789", 10**15, 0, plan_id, service_type=types_pb2.VIDEO)
    good = usage(LONDON_NUMBER, 10, 0, plan_id)
    response = await api.rating.RateUsageBatch(
        rating_pb2.RateUsageBatchRequest(items=[good, huge], include_details=include_details),
        metadata=OPERATOR,
    )
    first, second = response.results
    assert first.rated.billed_units == 10
    assert second.error.code == INVALID.value[0]
    assert "more than an amount can hold" in second.error.message


async def test_a_single_record_whose_charge_overflows_is_invalid(api: Stubs) -> None:
    plan_id = await import_published(api)
    huge = usage("+33123456789", 10**15, 0, plan_id, service_type=types_pb2.VIDEO)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await api.rating.RateUsage(huge, metadata=OPERATOR)
    assert raised.value.code() is INVALID
    assert error_reason(raised.value) == "BAD_AMOUNT"


# -- rate plans assigned to accounts --------------------------------------------------------------


async def test_an_assigned_plan_rates_its_account_and_others_keep_the_default(
    api: Stubs,
) -> None:
    plan_id = await import_published(api)
    number = unique_number()
    # The default plan prices this number at 1000 a second; Northwind's fallback charges
    # 3250000 for one minute (120 s minimum * 25000 + 250000 setup).
    default = await default_plan_id(api)
    await api.rating.UpsertTariff(
        rating_pb2.UpsertTariffRequest(tariff=voice_tariff(number, 1_000, default)),
        metadata=OPERATOR,
    )
    assigned, other = unique("acct"), unique("acct")
    response = await api.rating.AssignRatePlan(
        rating_pb2.AssignRatePlanRequest(account_id=assigned, rate_plan_id=plan_id),
        metadata=OPERATOR,
    )
    assert (response.account_id, response.rate_plan_id) == (assigned, plan_id)

    endpoint = number + "123"
    for account_id, plan, amount, prefix in (
        (assigned, plan_id, 3_250_000, ""),
        (other, default, 60_000, number),
    ):
        rated = await api.rating.RateUsage(
            usage(endpoint, 60, account_id=account_id), metadata=OPERATOR
        )
        assert (rated.amount_micros, rated.rate.rate_plan_id) == (amount, plan)
        rate = await api.rating.GetRate(
            rating_pb2.GetRateRequest(
                service_type=types_pb2.VOICE, endpoint=endpoint, account_id=account_id
            ),
            metadata=device(account_id),
        )
        assert (rate.rate_plan_id, rate.prefix) == (plan, prefix)

    # An explicit rate_plan_id wins over the account's plan.
    explicit = await api.rating.RateUsage(
        usage(endpoint, 60, plan_id=default, account_id=assigned), metadata=OPERATOR
    )
    assert explicit.rate.rate_plan_id == default

    # An empty plan id takes the account back to the default plan.
    back = await api.rating.AssignRatePlan(
        rating_pb2.AssignRatePlanRequest(account_id=assigned, rate_plan_id=""), metadata=OPERATOR
    )
    assert back.rate_plan_id == default
    rated = await api.rating.RateUsage(usage(endpoint, 60, account_id=assigned), metadata=OPERATOR)
    assert (rated.amount_micros, rated.rate.rate_plan_id) == (60_000, default)


async def test_assigning_an_unknown_plan_is_not_found(api: Stubs) -> None:
    account_id = unique("acct")
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await api.rating.AssignRatePlan(
            rating_pb2.AssignRatePlanRequest(account_id=account_id, rate_plan_id=unique("none")),
            metadata=OPERATOR,
        )
    assert raised.value.code() is NOT_FOUND
    assert error_reason(raised.value) == "RATE_PLAN_NOT_FOUND"
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await api.rating.AssignRatePlan(
            rating_pb2.AssignRatePlanRequest(account_id=" ", rate_plan_id="default"),
            metadata=OPERATOR,
        )
    assert raised.value.code() is INVALID


# -- versions ------------------------------------------------------------------------------


async def test_tariff_versions(api: Stubs) -> None:
    plan_id = await import_published(api)
    prefix = unique_number()
    first = await api.rating.UpsertTariff(
        rating_pb2.UpsertTariffRequest(tariff=voice_tariff(prefix, 1_000, plan_id)),
        metadata=OPERATOR,
    )
    assert not first.HasField("effective_from")  # the first version: in force always
    tomorrow = datetime.now(UTC).replace(microsecond=0) + timedelta(days=1)
    second = await api.rating.UpsertTariff(
        rating_pb2.UpsertTariffRequest(tariff=voice_tariff(prefix, 2_000, plan_id, tomorrow)),
        metadata=OPERATOR,
    )
    assert second.tariff_id != first.tariff_id
    assert second.effective_from.ToDatetime(tzinfo=UTC) == tomorrow

    def versions(tariffs: list[rating_pb2.Tariff]) -> list[rating_pb2.Tariff]:
        return [t for t in tariffs if t.prefix == prefix]

    history = versions(await list_tariffs(api, plan_id, include_history=True))
    assert [t.tariff_id for t in history] == [first.tariff_id, second.tariff_id]
    assert history[0].effective_to.ToDatetime(tzinfo=UTC) == tomorrow
    current = versions(await list_tariffs(api, plan_id))
    assert first.tariff_id in [t.tariff_id for t in current]

    # A version not yet in force may be replaced: same id, new price, still two versions.
    replaced = await api.rating.UpsertTariff(
        rating_pb2.UpsertTariffRequest(tariff=voice_tariff(prefix, 2_500, plan_id, tomorrow)),
        metadata=OPERATOR,
    )
    assert (replaced.tariff_id, replaced.price_per_unit_micros) == (second.tariff_id, 2_500)
    history = versions(await list_tariffs(api, plan_id, include_history=True))
    assert [(t.tariff_id, t.price_per_unit_micros) for t in history] == [
        (first.tariff_id, 1_000),
        (second.tariff_id, 2_500),
    ]

    # Usage now pays the first version; usage starting after tomorrow the second.
    now = int(time.time())
    for start, amount in ((now, 10_000), (int(tomorrow.timestamp()) + 3600, 25_000)):
        rated = await api.rating.RateUsage(usage(prefix, 10, start, plan_id), metadata=OPERATOR)
        assert rated.amount_micros == amount

    # A version starting an hour ago would reprice rated usage: refused, nothing changes.
    an_hour_ago = datetime.now(UTC) - timedelta(hours=1)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await api.rating.UpsertTariff(
            rating_pb2.UpsertTariffRequest(
                tariff=voice_tariff(prefix, 9_000, plan_id, an_hour_ago)
            ),
            metadata=OPERATOR,
        )
    assert raised.value.code() is INVALID
    assert error_reason(raised.value) == "EFFECTIVE_FROM_IN_THE_PAST"
    assert versions(await list_tariffs(api, plan_id, include_history=True)) == history
    rated = await api.rating.RateUsage(usage(prefix, 10, now, plan_id), metadata=OPERATOR)
    assert rated.amount_micros == 10_000


async def test_a_version_no_longer_in_force_is_listed_only_with_history(api: Stubs) -> None:
    plan_id = await import_published(api)
    prefix = unique_number()
    old = await api.rating.UpsertTariff(
        rating_pb2.UpsertTariffRequest(tariff=voice_tariff(prefix, 1_000, plan_id)),
        metadata=OPERATOR,
    )
    # Without effective_from, a key's next version takes over now.
    new = await api.rating.UpsertTariff(
        rating_pb2.UpsertTariffRequest(tariff=voice_tariff(prefix, 3_000, plan_id)),
        metadata=OPERATOR,
    )
    assert new.HasField("effective_from") and not new.HasField("effective_to")
    current = [t for t in await list_tariffs(api, plan_id) if t.prefix == prefix]
    assert [t.tariff_id for t in current] == [new.tariff_id]
    history = [
        t for t in await list_tariffs(api, plan_id, include_history=True) if t.prefix == prefix
    ]
    assert [t.tariff_id for t in history] == [old.tariff_id, new.tariff_id]
    assert history[0].effective_to == new.effective_from
    rated = await api.rating.RateUsage(usage(prefix, 10, 0, plan_id), metadata=OPERATOR)
    assert (rated.amount_micros, rated.rate.tariff_id) == (30_000, new.tariff_id)
    # Usage that started before the change is still rated by the old version.
    earlier = int(new.effective_from.seconds) - 10
    rated = await api.rating.RateUsage(usage(prefix, 10, earlier, plan_id), metadata=OPERATOR)
    assert (rated.amount_micros, rated.rate.tariff_id) == (10_000, old.tariff_id)


async def test_a_new_keys_first_version_may_start_in_the_past(api: Stubs) -> None:
    plan_id = await import_published(api)
    prefix = unique_number()
    since = datetime(2020, 1, 1, tzinfo=UTC)
    written = await api.rating.UpsertTariff(
        rating_pb2.UpsertTariffRequest(tariff=voice_tariff(prefix, 1_000, plan_id, since)),
        metadata=OPERATOR,
    )
    assert written.effective_from.ToDatetime(tzinfo=UTC) == since
    rated = await api.rating.RateUsage(
        usage(prefix, 10, utc(2021, 1, 1), plan_id), metadata=OPERATOR
    )
    assert (rated.amount_micros, rated.rate.prefix) == (10_000, prefix)
    # Before it, the plan's fallback applies (120 s minimum * 25000 + 250000).
    rated = await api.rating.RateUsage(
        usage(prefix, 10, utc(2019, 6, 1), plan_id), metadata=OPERATOR
    )
    assert (rated.amount_micros, rated.rate.prefix) == (3_250_000, "")


async def test_versions_not_yet_in_force_are_listed_only_with_history(api: Stubs) -> None:
    plan_id = await import_published(api)
    current = await list_tariffs(api, plan_id)
    # The 2030 version of +44 is not in force yet.
    assert [t.prefix for t in current if t.service_type == types_pb2.VOICE].count("+44") == 1
    assert all(not t.HasField("effective_from") for t in current)


async def test_version_order_in_an_import_does_not_matter(api: Stubs) -> None:
    plan_id = await import_published(api)
    prefix = unique_number()
    later = datetime(2030, 1, 1, tzinfo=UTC)
    await api.rating.ImportTariffs(
        rating_pb2.ImportTariffsRequest(
            tariffs=[
                voice_tariff(prefix, 2_000, plan_id, later),  # the newer version first
                voice_tariff(prefix, 1_000, plan_id),  # the first version, no effective_from
            ]
        ),
        metadata=OPERATOR,
    )
    # Usage from last year is rated by the first version, as when it is listed first.
    rated = await api.rating.RateUsage(
        usage(prefix, 10, int(time.time()) - 365 * 86_400, plan_id), metadata=OPERATOR
    )
    assert (rated.amount_micros, rated.rate.prefix) == (10_000, prefix)


# -- bad input -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "code", "words"),
    [
        ({"service_type": 99}, INVALID, "not a known service type"),
        ({"service_type": types_pb2.SERVICE_TYPE_UNSPECIFIED}, INVALID, "service_type is missing"),
        ({"endpoint": ""}, INVALID, "endpoint is empty"),
        ({"endpoint": "+44" * 100}, INVALID, "longer than 256"),
        ({"endpoint": "+44 20 7946 0000"}, INVALID, "spaces or control characters"),
        ({"endpoint": "+4420\x07"}, INVALID, "spaces or control characters"),
        ({"endpoint": "+4420\n"}, INVALID, "spaces or control characters"),
        ({"units": -1}, INVALID, "negative"),
        ({"units": 10**15 + 1}, INVALID, "cannot exceed"),
        ({"rate_plan_id": "no-such-plan-x"}, NOT_FOUND, "no rate plan"),
    ],
)
async def test_bad_rate_usage_requests(
    api: Stubs, fields: dict[str, object], code: grpc.StatusCode, words: str
) -> None:
    plan_id = await import_published(api)
    request = {
        "service_type": types_pb2.VOICE,
        "endpoint": LONDON_NUMBER,
        "units": 60,
        "rate_plan_id": plan_id,
        **fields,
    }
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await api.rating.RateUsage(
            rating_pb2.RateUsageRequest(**request),  # type: ignore[arg-type]
            metadata=OPERATOR,
        )
    assert raised.value.code() is code
    assert words in (raised.value.details() or "")
    if "units" not in fields:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            request.pop("units")
            await api.rating.GetRate(
                rating_pb2.GetRateRequest(**request),  # type: ignore[arg-type]
                metadata=OPERATOR,
            )
        assert raised.value.code() is code
        assert words in (raised.value.details() or "")


async def test_an_unknown_endpoint_in_a_plan_without_fallback_is_not_found(api: Stubs) -> None:
    plan_id = await import_published(api)
    # Northwind has no catch-all FILE_DOWNLOAD tariff.
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await api.rating.RateUsage(
            usage("example.org", 1, 0, plan_id, service_type=types_pb2.FILE_DOWNLOAD),
            metadata=OPERATOR,
        )
    assert raised.value.code() is NOT_FOUND
    assert error_reason(raised.value) == "UNKNOWN_ENDPOINT"


@pytest.mark.parametrize(
    ("bad", "words"),
    [
        ({"price_per_unit_micros": -1}, "cannot be negative"),
        ({"increment_units": 0}, "increment_units"),
        ({"currency": "pounds"}, "currency"),
        ({"prefix": "+44 20"}, "spaces"),
        ({"unit": types_pb2.UNIT_UNSPECIFIED}, "unit is missing"),
    ],
)
async def test_an_import_with_one_bad_tariff_writes_nothing(
    api: Stubs, bad: dict[str, object], words: str
) -> None:
    plan_id = unique()
    sheet = published_sheet(plan_id)
    tariffs = [tariff_to_wire(t) for t in sheet.tariffs]
    broken = voice_tariff(unique_number(), 1_000, plan_id)
    for field, value in bad.items():
        setattr(broken, field, value)
    tariffs.insert(3, broken)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await api.rating.ImportTariffs(
            rating_pb2.ImportTariffsRequest(
                tariffs=tariffs, rate_plans=[plan_to_wire(p) for p in sheet.plans]
            ),
            metadata=OPERATOR,
        )
    assert raised.value.code() is INVALID
    assert "tariff 4" in (raised.value.details() or "")
    assert words in (raised.value.details() or "")
    assert await list_tariffs(api, plan_id, include_history=True) == []
    plans = await api.rating.ListRatePlans(rating_pb2.ListRatePlansRequest(), metadata=OPERATOR)
    assert plan_id not in [plan.rate_plan_id for plan in plans.rate_plans]


async def test_an_import_refused_by_the_database_rolls_back_every_tariff(api: Stubs) -> None:
    existing = await import_published(api)
    plan_id = unique()
    sheet = published_sheet(plan_id)
    good = [tariff_to_wire(t) for t in sheet.tariffs]
    # Passes validation; refused while writing, after the good ones were written.
    past = voice_tariff("+44", 1_000, existing, datetime.now(UTC) - timedelta(days=1))
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await api.rating.ImportTariffs(
            rating_pb2.ImportTariffsRequest(
                tariffs=[*good, past], rate_plans=[plan_to_wire(p) for p in sheet.plans]
            ),
            metadata=OPERATOR,
        )
    assert raised.value.code() is INVALID
    assert error_reason(raised.value) == "EFFECTIVE_FROM_IN_THE_PAST"
    assert f"tariff {len(good) + 1}" in (raised.value.details() or "")
    assert await list_tariffs(api, plan_id, include_history=True) == []
    plans = await api.rating.ListRatePlans(rating_pb2.ListRatePlansRequest(), metadata=OPERATOR)
    assert plan_id not in [plan.rate_plan_id for plan in plans.rate_plans]
    assert len(await list_tariffs(api, existing, include_history=True)) == PUBLISHED_TARIFFS
    # And the service still rates as before under the new plan id: it does not exist.
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await api.rating.RateUsage(usage(LONDON_NUMBER, 1, 0, plan_id), metadata=OPERATOR)
    assert raised.value.code() is NOT_FOUND


async def test_an_import_of_a_tariff_in_an_unknown_plan_is_not_found(api: Stubs) -> None:
    plan_id = unique("missing")
    number = unique_number()
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await api.rating.ImportTariffs(
            rating_pb2.ImportTariffsRequest(tariffs=[voice_tariff(number, 1_000, plan_id)]),
            metadata=OPERATOR,
        )
    assert raised.value.code() is NOT_FOUND
    assert error_reason(raised.value) == "RATE_PLAN_NOT_FOUND"


# -- who may change rating data -------------------------------------------------------------


async def test_devices_cannot_change_rating_data(api: Stubs) -> None:
    plan_id = await import_published(api)
    account_id = unique("acct")
    sheet = published_sheet(unique())
    who = device(account_id)
    calls = {
        "UpsertTariff": api.rating.UpsertTariff(
            rating_pb2.UpsertTariffRequest(tariff=voice_tariff(unique_number(), 1, plan_id)),
            metadata=who,
        ),
        "ImportTariffs": api.rating.ImportTariffs(
            rating_pb2.ImportTariffsRequest(
                tariffs=[tariff_to_wire(t) for t in sheet.tariffs],
                rate_plans=[plan_to_wire(p) for p in sheet.plans],
            ),
            metadata=who,
        ),
        "UpsertRatePlan": api.rating.UpsertRatePlan(
            rating_pb2.UpsertRatePlanRequest(rate_plan=plan_to_wire(sheet.plans[0])),
            metadata=who,
        ),
        "AssignRatePlan": api.rating.AssignRatePlan(
            rating_pb2.AssignRatePlanRequest(account_id=account_id, rate_plan_id=plan_id),
            metadata=who,
        ),
    }
    for name, call in calls.items():
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await call
        assert raised.value.code() is grpc.StatusCode.PERMISSION_DENIED, name
    # Nothing was written: the device's account still rates under the default plan, and the
    # plan the device tried to create does not exist.
    default = await default_plan_id(api)
    number = unique_number()
    await api.rating.UpsertTariff(
        rating_pb2.UpsertTariffRequest(tariff=voice_tariff(number, 1_000, default)),
        metadata=OPERATOR,
    )
    rate = await api.rating.GetRate(
        rating_pb2.GetRateRequest(
            service_type=types_pb2.VOICE, endpoint=number, account_id=account_id
        ),
        metadata=who,
    )
    assert (rate.rate_plan_id, rate.prefix) == (default, number)
    plans = await api.rating.ListRatePlans(rating_pb2.ListRatePlansRequest(), metadata=OPERATOR)
    assert sheet.plans[0].plan_id not in [plan.rate_plan_id for plan in plans.rate_plans]


# -- every instance's cache ------------------------------------------------------------------


async def test_a_second_instance_picks_up_writes_through_the_first(
    api: Stubs, stack: InProcessStack
) -> None:
    plan_id = await import_published(api)
    second = await rating_service.server.start(stack.settings, "127.0.0.1:0")
    channel = tls.channel(f"127.0.0.1:{second.port}")
    try:
        other = rating_pb2_grpc.RatingServiceStub(channel)

        async def rated_by_second(number: str) -> float:
            """Seconds until the second instance rates `number` by its own tariff."""
            began = time.monotonic()
            deadline = began + 5
            while True:
                rated = await other.RateUsage(usage(number, 10, 0, plan_id), metadata=OPERATOR)
                if rated.rate.prefix == number:
                    assert rated.amount_micros == 70_000  # 10 s * 7000
                    return time.monotonic() - began
                assert rated.rate.prefix == ""  # the fallback, until the reload
                assert time.monotonic() < deadline, "the second instance never reloaded"
                await asyncio.sleep(0.05)

        # The second instance loaded the plan when it started.
        rated = await other.RateUsage(usage(LONDON_NUMBER, 60, 0, plan_id), metadata=OPERATOR)
        assert rated.rate.rate_plan_id == plan_id
        # Two writes through the first instance; by the second the listener is surely
        # connected, so only the notification can bring it within 5 s (the periodic check
        # runs every 30 s).
        for _ in range(2):
            number = unique_number()
            await api.rating.UpsertTariff(
                rating_pb2.UpsertTariffRequest(tariff=voice_tariff(number, 7_000, plan_id)),
                metadata=OPERATOR,
            )
            assert await rated_by_second(number) < 5
        # Plan assignments travel the same way.
        account_id = unique("acct")
        await api.rating.AssignRatePlan(
            rating_pb2.AssignRatePlanRequest(account_id=account_id, rate_plan_id=plan_id),
            metadata=OPERATOR,
        )
        deadline = time.monotonic() + 5
        while True:
            try:
                rate = await other.GetRate(
                    rating_pb2.GetRateRequest(
                        service_type=types_pb2.VOICE, endpoint=MOBILE, account_id=account_id
                    ),
                    metadata=OPERATOR,
                )
            except grpc.aio.AioRpcError as error:
                # Until the assignment arrives the account is on the default plan, which
                # another test may have left without this destination.
                assert error.code() is grpc.StatusCode.NOT_FOUND, error
            else:
                if rate.rate_plan_id == plan_id:
                    break
            assert time.monotonic() < deadline, "the assignment never reached the second"
            await asyncio.sleep(0.05)
    finally:
        await channel.close(None)
        await second.close(grace=0.5)


@pytest.mark.parametrize(
    "call",
    ["long_description", "long_plan_name", "long_account_id"],
)
async def test_overlong_text_fields_are_refused(api: Stubs, call: str) -> None:
    if call == "long_description":
        request: Any = api.rating.UpsertTariff(
            rating_pb2.UpsertTariffRequest(
                tariff=rating_pb2.Tariff(
                    service_type=types_pb2.VOICE,
                    prefix="+999",
                    unit=types_pb2.SECOND,
                    price_per_unit_micros=1,
                    increment_units=1,
                    currency="EUR",
                    description="x" * 501,
                )
            ),
            metadata=OPERATOR,
        )
    elif call == "long_plan_name":
        request = api.rating.UpsertRatePlan(
            rating_pb2.UpsertRatePlanRequest(
                rate_plan=rating_pb2.RatePlan(rate_plan_id="long-name", display_name="x" * 201)
            ),
            metadata=OPERATOR,
        )
    else:
        request = api.rating.AssignRatePlan(
            rating_pb2.AssignRatePlanRequest(account_id="a" * 65, rate_plan_id="default"),
            metadata=OPERATOR,
        )
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await request
    assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "longer than" in (raised.value.details() or "")
