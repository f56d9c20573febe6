"""A session's rate in its three forms: the wire Rate the rating service gives, the
domain SessionRate that prices the session, and the JSON stored with the session."""

from __future__ import annotations

from typing import Any

from meterline.kernel.bands import (
    FLAT,
    BandRule,
    BandSchedule,
    format_clock,
    format_days,
    parse_clock,
    parse_days,
)
from meterline.kernel.media import ServiceType, Unit
from meterline.kernel.pricing import RateTerms, VolumeTier
from meterline.kernel.wire import service_type_to_wire
from meterline.rating.v1 import rating_pb2, types_pb2
from service_manager.domain.sessions import SessionRate


def _schedule(time_zone: str, default_band: str, bands: list[dict[str, str]]) -> BandSchedule:
    if not bands:
        return FLAT if not time_zone or time_zone == "UTC" else BandSchedule(time_zone)
    return BandSchedule(
        time_zone=time_zone or "UTC",
        default_band=default_band or "STANDARD",
        rules=tuple(
            BandRule(
                band=band["band"],
                days=parse_days(band["days"]),
                start_minute=parse_clock(band["from"]),
                end_minute=parse_clock(band["to"]),
            )
            for band in bands
        ),
    )


def _bands(schedule: BandSchedule) -> list[dict[str, str]]:
    return [
        {
            "band": rule.band,
            "days": format_days(rule.days),
            "from": format_clock(rule.start_minute),
            "to": format_clock(rule.end_minute),
        }
        for rule in schedule.rules
    ]


def session_rate_from_wire(rate: rating_pb2.Rate) -> SessionRate:
    bands = [
        {"band": band.band, "days": band.days, "from": band.start_time, "to": band.end_time}
        for band in rate.time_bands
    ]
    return SessionRate(
        tariff_id=rate.tariff_id,
        prefix=rate.prefix,
        unit=Unit(types_pb2.Unit.Name(rate.unit)),
        currency=rate.currency,
        terms=RateTerms(
            price_per_unit_micros=rate.price_per_unit_micros,
            increment_units=rate.increment_units,
            minimum_units=rate.minimum_units,
            setup_fee_micros=rate.setup_fee_micros,
            first_increment_units=rate.first_increment_units,
            unit_size=rate.unit_size or 1,
            band_prices=tuple((p.band, p.price_per_unit_micros) for p in rate.band_prices),
            tiers=tuple(VolumeTier(t.up_to_units, t.price_per_unit_micros) for t in rate.tiers),
        ),
        schedule=_schedule(rate.time_zone, rate.default_band, bands),
        plan_id=rate.rate_plan_id,
    )


def session_rate_to_wire(rate: SessionRate, service_type: ServiceType) -> rating_pb2.Rate:
    terms = rate.terms
    return rating_pb2.Rate(
        tariff_id=rate.tariff_id,
        service_type=service_type_to_wire(service_type),
        prefix=rate.prefix,
        unit=types_pb2.Unit.Value(rate.unit.value),
        price_per_unit_micros=terms.price_per_unit_micros,
        increment_units=terms.increment_units,
        minimum_units=terms.minimum_units,
        setup_fee_micros=terms.setup_fee_micros,
        currency=rate.currency,
        first_increment_units=terms.first_increment_units,
        unit_size=terms.unit_size,
        rate_plan_id=rate.plan_id,
        band_prices=[
            rating_pb2.BandPrice(band=band, price_per_unit_micros=price)
            for band, price in terms.band_prices
        ],
        tiers=[
            rating_pb2.VolumeTier(
                up_to_units=t.up_to_units, price_per_unit_micros=t.price_per_unit_micros
            )
            for t in terms.tiers
        ],
        time_zone=rate.schedule.time_zone,
        default_band=rate.schedule.default_band,
        time_bands=[
            rating_pb2.TimeBand(
                band=b["band"], days=b["days"], start_time=b["from"], end_time=b["to"]
            )
            for b in _bands(rate.schedule)
        ],
    )


def session_rate_to_json(rate: SessionRate) -> dict[str, Any]:
    terms = rate.terms
    return {
        "tariff_id": rate.tariff_id,
        "prefix": rate.prefix,
        "unit": rate.unit.value,
        "currency": rate.currency,
        "price_per_unit_micros": terms.price_per_unit_micros,
        "increment_units": terms.increment_units,
        "minimum_units": terms.minimum_units,
        "setup_fee_micros": terms.setup_fee_micros,
        "first_increment_units": terms.first_increment_units,
        "unit_size": terms.unit_size,
        "band_prices": [list(pair) for pair in terms.band_prices],
        "tiers": [[tier.up_to_units, tier.price_per_unit_micros] for tier in terms.tiers],
        "plan_id": rate.plan_id,
        "time_zone": rate.schedule.time_zone,
        "default_band": rate.schedule.default_band,
        "time_bands": _bands(rate.schedule),
    }


def session_rate_from_json(data: dict[str, Any]) -> SessionRate:
    """Also reads sessions stored before plans existed (no band or tier keys)."""
    return SessionRate(
        tariff_id=data["tariff_id"],
        prefix=data["prefix"],
        unit=Unit(data["unit"]),
        currency=data["currency"],
        terms=RateTerms(
            price_per_unit_micros=data["price_per_unit_micros"],
            increment_units=data["increment_units"],
            minimum_units=data["minimum_units"],
            setup_fee_micros=data["setup_fee_micros"],
            first_increment_units=data.get("first_increment_units", 0),
            unit_size=data.get("unit_size", 1),
            band_prices=tuple((band, price) for band, price in data.get("band_prices", [])),
            tiers=tuple(VolumeTier(limit, price) for limit, price in data.get("tiers", [])),
        ),
        schedule=_schedule(
            data.get("time_zone", "UTC"), data.get("default_band", ""), data.get("time_bands", [])
        ),
        plan_id=data.get("plan_id", ""),
    )
