"""Conversions between wire types and plain Python values shared by every servicer."""

from __future__ import annotations

import time
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from google.protobuf import duration_pb2, timestamp_pb2

from meterline.kernel.bands import BandRule, format_clock, format_days, rule_from_json
from meterline.kernel.errors import InvalidArgument
from meterline.kernel.media import ServiceType, Unit
from meterline.kernel.pricing import RateTerms, VolumeTier
from meterline.rating.v1 import rating_pb2, types_pb2


def service_type_from_wire(value: int) -> ServiceType:
    if value == types_pb2.SERVICE_TYPE_UNSPECIFIED:
        raise InvalidArgument(
            "service_type is missing: choose VOICE, VIDEO, INSTANT_MESSAGING, WEB_BROWSING, "
            "FILE_DOWNLOAD or APPLICATION."
        )
    try:
        return ServiceType(types_pb2.ServiceType.Name(value))  # type: ignore[arg-type]
    except ValueError as exc:
        raise InvalidArgument(f"service_type {value} is not a known service type.") from exc


def service_type_to_wire(value: ServiceType) -> types_pb2.ServiceType.ValueType:
    return types_pb2.ServiceType.Value(value.value)


def unit_from_wire(value: int) -> Unit:
    if value == types_pb2.UNIT_UNSPECIFIED:
        raise InvalidArgument("unit is missing: choose SECOND, BYTE, MESSAGE or EVENT.")
    try:
        return Unit(types_pb2.Unit.Name(value))  # type: ignore[arg-type]
    except ValueError as exc:
        raise InvalidArgument(f"unit {value} is not a known unit.") from exc


def unit_to_wire(value: Unit) -> types_pb2.Unit.ValueType:
    return types_pb2.Unit.Value(value.value)


def timestamp(value: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value.astimezone(UTC))
    return stamp


# Times a client may send: from 1970 to the end of year 9999 (what datetime can hold).
LATEST_EPOCH_SECOND = 253_402_300_799


def epoch_seconds(stamp: timestamp_pb2.Timestamp, field: str, now: int | None = None) -> int:
    """A wire time as epoch seconds; unset (0) is now. Refuses what no usage can be."""
    if stamp.seconds == 0 and stamp.nanos == 0:
        return int(time.time()) if now is None else now
    if not 0 <= stamp.seconds <= LATEST_EPOCH_SECOND or not 0 <= stamp.nanos < 10**9:
        raise InvalidArgument(f"{field} is not a time between 1970 and 9999.")
    return int(stamp.seconds)


def from_timestamp(
    stamp: timestamp_pb2.Timestamp, field: str = "time", default: datetime | None = None
) -> datetime:
    """A wire time as an aware datetime; an unset one (0) is `default` or now."""
    if stamp.seconds == 0 and stamp.nanos == 0:
        return default or datetime.now(UTC)
    epoch_seconds(stamp, field)
    return stamp.ToDatetime(tzinfo=UTC)


def duration(value: timedelta) -> duration_pb2.Duration:
    wire = duration_pb2.Duration()
    wire.FromTimedelta(value)
    return wire


def terms_to_wire(terms: RateTerms) -> dict[str, Any]:
    """The fields rating_pb2.Rate and rating_pb2.Tariff share, as keyword arguments."""
    return {
        "price_per_unit_micros": terms.price_per_unit_micros,
        "increment_units": terms.increment_units,
        "minimum_units": terms.minimum_units,
        "setup_fee_micros": terms.setup_fee_micros,
        "first_increment_units": terms.first_increment_units,
        "unit_size": terms.unit_size,
        "band_prices": [
            rating_pb2.BandPrice(band=band, price_per_unit_micros=price)
            for band, price in terms.band_prices
        ],
        "tiers": [
            rating_pb2.VolumeTier(
                up_to_units=tier.up_to_units, price_per_unit_micros=tier.price_per_unit_micros
            )
            for tier in terms.tiers
        ],
    }


def terms_from_wire(wire: rating_pb2.Rate | rating_pb2.Tariff) -> RateTerms:
    return RateTerms(
        price_per_unit_micros=wire.price_per_unit_micros,
        increment_units=wire.increment_units,
        minimum_units=wire.minimum_units,
        setup_fee_micros=wire.setup_fee_micros,
        first_increment_units=wire.first_increment_units,
        unit_size=wire.unit_size or 1,
        band_prices=tuple(
            (price.band.strip().upper(), price.price_per_unit_micros) for price in wire.band_prices
        ),
        tiers=tuple(
            VolumeTier(tier.up_to_units, tier.price_per_unit_micros) for tier in wire.tiers
        ),
    )


def time_bands_to_wire(rules: Iterable[BandRule]) -> list[rating_pb2.TimeBand]:
    return [
        rating_pb2.TimeBand(
            band=rule.band,
            days=format_days(rule.days),
            start_time=format_clock(rule.start_minute),
            end_time=format_clock(rule.end_minute),
        )
        for rule in rules
    ]


def time_bands_from_wire(bands: Iterable[rating_pb2.TimeBand]) -> list[BandRule]:
    return [
        rule_from_json(
            {"band": band.band, "days": band.days, "from": band.start_time, "to": band.end_time}
        )
        for band in bands
    ]
