"""A session's rate in its three forms: the wire Rate the rating service gives, the
domain SessionRate that prices the session, and the JSON stored with the session."""

from __future__ import annotations

from typing import Any

from meterline.kernel.bands import FLAT, BandSchedule, rule_from_json, rule_to_json
from meterline.kernel.media import ServiceType, Unit
from meterline.kernel.pricing import terms_from_json, terms_to_json
from meterline.kernel.wire import (
    service_type_to_wire,
    terms_from_wire,
    terms_to_wire,
    time_bands_to_wire,
)
from meterline.rating.v1 import rating_pb2, types_pb2
from service_manager.domain.sessions import SessionRate


def _schedule(time_zone: str, default_band: str, bands: list[dict[str, str]]) -> BandSchedule:
    if not bands:
        return FLAT if not time_zone or time_zone == "UTC" else BandSchedule(time_zone)
    return BandSchedule(
        time_zone=time_zone or "UTC",
        default_band=default_band or "STANDARD",
        rules=tuple(rule_from_json(band) for band in bands),
    )


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
        terms=terms_from_wire(rate),
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
        **terms_to_wire(terms),
        currency=rate.currency,
        rate_plan_id=rate.plan_id,
        time_zone=rate.schedule.time_zone,
        default_band=rate.schedule.default_band,
        time_bands=time_bands_to_wire(rate.schedule.rules),
    )


def session_rate_to_json(rate: SessionRate) -> dict[str, Any]:
    return {
        "tariff_id": rate.tariff_id,
        "prefix": rate.prefix,
        "unit": rate.unit.value,
        "currency": rate.currency,
        **terms_to_json(rate.terms),
        "plan_id": rate.plan_id,
        "time_zone": rate.schedule.time_zone,
        "default_band": rate.schedule.default_band,
        "time_bands": [rule_to_json(rule) for rule in rate.schedule.rules],
    }


def session_rate_from_json(data: dict[str, Any]) -> SessionRate:
    """Also reads sessions stored before plans existed (no band or tier keys)."""
    return SessionRate(
        tariff_id=data["tariff_id"],
        prefix=data["prefix"],
        unit=Unit(data["unit"]),
        currency=data["currency"],
        terms=terms_from_json(data),
        schedule=_schedule(
            data.get("time_zone", "UTC"), data.get("default_band", ""), data.get("time_bands", [])
        ),
        plan_id=data.get("plan_id", ""),
    )
