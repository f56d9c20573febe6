"""Conversions between wire types and plain Python values shared by every servicer."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from google.protobuf import duration_pb2, timestamp_pb2

from meterline.kernel.errors import InvalidArgument
from meterline.kernel.media import ServiceType, Unit
from meterline.rating.v1 import types_pb2


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


def from_timestamp(stamp: timestamp_pb2.Timestamp, default: datetime | None = None) -> datetime:
    """A wire time as an aware datetime; an unset one (0) is `default` or now."""
    if stamp.seconds == 0 and stamp.nanos == 0:
        return default or datetime.now(UTC)
    return stamp.ToDatetime(tzinfo=UTC)


def duration(value: timedelta) -> duration_pb2.Duration:
    wire = duration_pb2.Duration()
    wire.FromTimedelta(value)
    return wire
