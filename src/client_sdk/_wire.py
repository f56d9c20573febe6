"""Protobuf in, the SDK's plain values out: the only module that reads wire messages
for device code."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from client_sdk.types import (
    AccountEvent,
    ActiveService,
    BandPrice,
    BillingUpdate,
    Rate,
    ServiceRecord,
    ServiceType,
    TerminationReason,
    TimeBand,
    Unit,
    VolumeTier,
)
from meterline.rating.v1 import rating_pb2, types_pb2
from meterline.service.v1 import service_pb2

_TERMINATION_PREFIX = "TERMINATION_REASON_"


def service_type_to_wire(service_type: ServiceType | str) -> types_pb2.ServiceType.ValueType:
    return types_pb2.ServiceType.Value(ServiceType(service_type).value)


def termination_reason(value: int) -> TerminationReason | None:
    if not value:
        return None
    name = service_pb2.TerminationReason.Name(value)  # type: ignore[arg-type]
    return TerminationReason(name.removeprefix(_TERMINATION_PREFIX))


def rate(wire: rating_pb2.Rate) -> Rate:
    service_type = None
    if wire.service_type:
        service_type = ServiceType(types_pb2.ServiceType.Name(wire.service_type))
    return Rate(
        tariff_id=wire.tariff_id,
        prefix=wire.prefix,
        unit=Unit(types_pb2.Unit.Name(wire.unit)),
        price_per_unit_micros=wire.price_per_unit_micros,
        increment_units=wire.increment_units,
        minimum_units=wire.minimum_units,
        setup_fee_micros=wire.setup_fee_micros,
        currency=wire.currency,
        first_increment_units=wire.first_increment_units,
        unit_size=wire.unit_size or 1,
        service_type=service_type,
        rate_plan_id=wire.rate_plan_id,
        band_prices=tuple(BandPrice(b.band, b.price_per_unit_micros) for b in wire.band_prices),
        tiers=tuple(VolumeTier(t.up_to_units, t.price_per_unit_micros) for t in wire.tiers),
        time_zone=wire.time_zone,
        default_band=wire.default_band,
        time_bands=tuple(
            TimeBand(b.band, b.days, b.start_time, b.end_time) for b in wire.time_bands
        ),
        effective_from=(
            wire.effective_from.ToDatetime(tzinfo=UTC) if wire.HasField("effective_from") else None
        ),
    )


def record(wire: service_pb2.ServiceRecord) -> ServiceRecord:
    return ServiceRecord(
        session_id=wire.session_id,
        account_id=wire.account_id,
        service_type=ServiceType(types_pb2.ServiceType.Name(wire.service_type)),
        endpoint=wire.endpoint,
        rate=rate(wire.rate),
        started_at=wire.started_at.ToDatetime(tzinfo=UTC),
        ended_at=wire.ended_at.ToDatetime(tzinfo=UTC),
        duration=timedelta(seconds=wire.duration.ToTimedelta().total_seconds()),
        used_units=wire.used_units,
        billed_units=wire.billed_units,
        charged_micros=wire.charged_micros,
        termination_reason=termination_reason(wire.termination_reason)
        or TerminationReason.CLIENT_STOP,
        gateway_id=wire.gateway_id,
    )


def billing_update(
    session_id: str, currency: str, wire: service_pb2.MeterResponse
) -> BillingUpdate:
    termination = wire.termination if wire.HasField("termination") else None
    time_left = None
    if wire.HasField("estimated_time_left"):
        time_left = timedelta(seconds=wire.estimated_time_left.seconds)
    return BillingUpdate(
        session_id=session_id,
        sequence=wire.acknowledged_sequence,
        used_units=wire.used_units,
        charged_micros=wire.charged_micros,
        balance_micros=wire.balance_micros,
        granted_units=wire.granted_units,
        currency=currency,
        time_left=time_left,
        final_units=bool(termination and termination.final_unit_indication),
        ended=bool(termination and termination.ended),
        termination_reason=termination_reason(termination.reason) if termination else None,
        message=termination.message if termination else "",
    )


def active_service(wire: service_pb2.ActiveSession) -> ActiveService:
    return ActiveService(
        session_id=wire.session_id,
        service_type=ServiceType(types_pb2.ServiceType.Name(wire.service_type)),
        endpoint=wire.endpoint,
        rate=rate(wire.rate),
        started_at=wire.started_at.ToDatetime(tzinfo=UTC),
        used_units=wire.used_units,
        gateway_id=wire.gateway_id,
    )


def account_event(currency: str, wire: service_pb2.AccountEvent) -> AccountEvent:
    termination = wire.termination if wire.HasField("termination") else None
    time_left = None
    if wire.HasField("estimated_time_left"):
        time_left = timedelta(seconds=wire.estimated_time_left.seconds)
    return AccountEvent(
        account_id=wire.account_id,
        session_id=wire.session_id,
        available_micros=wire.balance_micros,
        charged_micros=wire.charged_micros,
        used_units=wire.used_units,
        currency=currency,
        time=(
            wire.event_time.ToDatetime(tzinfo=UTC)
            if wire.HasField("event_time")
            else datetime.now(UTC)
        ),
        time_left=time_left,
        low_balance=wire.low_balance,
        final_units=bool(termination and termination.final_unit_indication),
        ended=bool(termination and termination.ended),
        termination_reason=termination_reason(termination.reason) if termination else None,
        message=termination.message if termination else "",
    )
