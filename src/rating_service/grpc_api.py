"""RatingService over gRPC: translate, check the caller, delegate."""

from __future__ import annotations

import base64
import time
from typing import Any

import grpc

from meterline.kernel.errors import InvalidArgument, MeterlineError
from meterline.kernel.grpc_errors import status_code_for, unary
from meterline.kernel.grpc_server import Authenticator
from meterline.kernel.media import ServiceType
from meterline.kernel.money import AmountError
from meterline.kernel.principals import PrincipalKind
from meterline.kernel.wire import (
    epoch_seconds,
    from_timestamp,
    service_type_from_wire,
    service_type_to_wire,
    terms_from_wire,
    terms_to_wire,
    time_bands_from_wire,
    time_bands_to_wire,
    timestamp,
    unit_from_wire,
    unit_to_wire,
)
from meterline.rating.v1 import rating_pb2, rating_pb2_grpc, types_pb2
from rating_service.catalog import TariffCatalog
from rating_service.domain.plans import DEFAULT_PLAN_ID, RatePlan, new_plan
from rating_service.domain.tariffs import RatedUsage, Tariff, TariffIndex

MAX_BATCH_ITEMS = 10_000
MAX_IMPORT_TARIFFS = 100_000
Context = grpc.aio.ServicerContext[Any, Any]

# Wire enum value -> domain value, for the per-item hot path.
_SERVICE_TYPES = {types_pb2.ServiceType.Value(kind.value): kind for kind in ServiceType}


def rate_to_wire(tariff: Tariff, plan: RatePlan) -> rating_pb2.Rate:
    rate = rating_pb2.Rate(
        tariff_id=tariff.tariff_id,
        service_type=service_type_to_wire(tariff.service_type),
        prefix=tariff.prefix,
        unit=unit_to_wire(tariff.unit),
        currency=tariff.currency,
        rate_plan_id=plan.plan_id,
        time_zone=plan.schedule.time_zone,
        default_band=plan.schedule.default_band,
        time_bands=time_bands_to_wire(plan.schedule.rules),
        **terms_to_wire(tariff.terms),
    )
    if tariff.effective_from is not None:
        rate.effective_from.CopyFrom(timestamp(tariff.effective_from))
    return rate


def tariff_to_wire(tariff: Tariff) -> rating_pb2.Tariff:
    wire = rating_pb2.Tariff(
        tariff_id=tariff.tariff_id,
        service_type=service_type_to_wire(tariff.service_type),
        prefix=tariff.prefix,
        unit=unit_to_wire(tariff.unit),
        currency=tariff.currency,
        description=tariff.description,
        rate_plan_id=tariff.plan_id,
        **terms_to_wire(tariff.terms),
    )
    for field, moment in (
        ("update_time", tariff.updated_at),
        ("effective_from", tariff.effective_from),
        ("effective_to", tariff.effective_to),
    ):
        if moment is not None:
            getattr(wire, field).CopyFrom(timestamp(moment))
    return wire


def tariff_from_wire(wire: rating_pb2.Tariff) -> Tariff:
    return Tariff(
        tariff_id="",
        service_type=service_type_from_wire(wire.service_type),
        prefix=wire.prefix,
        unit=unit_from_wire(wire.unit),
        terms=terms_from_wire(wire),
        currency=wire.currency,
        description=wire.description,
        plan_id=wire.rate_plan_id or DEFAULT_PLAN_ID,
        effective_from=(
            from_timestamp(wire.effective_from, "effective_from")
            if wire.HasField("effective_from")
            else None
        ),
    )


def plan_to_wire(plan: RatePlan) -> rating_pb2.RatePlan:
    return rating_pb2.RatePlan(
        rate_plan_id=plan.plan_id,
        display_name=plan.display_name,
        time_zone=plan.schedule.time_zone,
        default_band=plan.schedule.default_band,
        time_bands=time_bands_to_wire(plan.schedule.rules),
        is_default=plan.is_default,
    )


def plan_from_wire(wire: rating_pb2.RatePlan) -> RatePlan:
    rules = time_bands_from_wire(wire.time_bands)
    return new_plan(
        wire.rate_plan_id,
        wire.display_name,
        wire.time_zone,
        wire.default_band,
        rules,
        wire.is_default,
    )


class RatingServicer(rating_pb2_grpc.RatingServiceServicer):
    database_label = "tariff database"  # in UNAVAILABLE messages

    def __init__(self, catalog: TariffCatalog, auth: Authenticator) -> None:
        self._catalog = catalog
        self._auth = auth
        self._rates: dict[tuple[str, str], rating_pb2.Rate] = {}
        self._rates_for: TariffIndex | None = None

    def _rate(self, rated: RatedUsage) -> rating_pb2.Rate:
        """The wire Rate of a tariff under a plan, built once per cache generation."""
        if self._rates_for is not self._catalog.index:
            self._rates = {}
            self._rates_for = self._catalog.index
        key = (rated.tariff.tariff_id, rated.plan.plan_id)
        rate = self._rates.get(key)
        if rate is None:
            rate = self._rates[key] = rate_to_wire(rated.tariff, rated.plan)
        return rate

    def _rated(self, request: rating_pb2.RateUsageRequest) -> RatedUsage:
        service_type = _SERVICE_TYPES.get(request.service_type) or service_type_from_wire(
            request.service_type
        )
        endpoint = request.endpoint
        if service_type is ServiceType.APPLICATION and not endpoint:
            endpoint = request.application_id  # priced by application id
        at = epoch_seconds(request.start_time, "start_time")
        return self._catalog.index.rate(
            service_type, endpoint, request.units, at, request.account_id, request.rate_plan_id
        )

    def _fill(self, target: rating_pb2.RatedUsage, rated: RatedUsage, details: bool) -> None:
        target.amount_micros = rated.price.amount_micros
        target.billed_units = rated.price.billed_units
        target.currency = rated.tariff.currency
        if details:
            target.rate.CopyFrom(self._rate(rated))
            for part in rated.price.parts:
                wire = target.parts.add(
                    band=part.label,
                    units=part.units,
                    price_per_unit_micros=part.price_per_unit_micros,
                    amount_micros=part.amount_micros,
                )
                if part.start:
                    wire.start_time.seconds = part.start

    @unary
    async def GetRate(
        self, request: rating_pb2.GetRateRequest, context: Context
    ) -> rating_pb2.Rate:
        self._auth.principal(context)
        service_type = service_type_from_wire(request.service_type)
        index = self._catalog.index
        plan = index.plan_for(request.account_id, request.rate_plan_id)
        at = epoch_seconds(request.at, "at")
        tariff = index.match(service_type, request.endpoint, at, plan)
        return rate_to_wire(tariff, plan)

    @unary
    async def RateUsage(
        self, request: rating_pb2.RateUsageRequest, context: Context
    ) -> rating_pb2.RatedUsage:
        self._auth.principal(context)
        response = rating_pb2.RatedUsage()
        self._fill(response, self._rated(request), details=True)
        return response

    @unary
    async def RateUsageBatch(
        self, request: rating_pb2.RateUsageBatchRequest, context: Context
    ) -> rating_pb2.RateUsageBatchResponse:
        self._auth.principal(context)
        if len(request.items) > MAX_BATCH_ITEMS:
            raise InvalidArgument(
                f"A batch holds at most {MAX_BATCH_ITEMS} items; this one has "
                f"{len(request.items)}. Split it."
            )
        response = rating_pb2.RateUsageBatchResponse()
        results = response.results
        if request.include_details:
            for item in request.items:
                result = results.add()
                try:
                    self._fill(result.rated, self._rated(item), details=True)
                except (MeterlineError, AmountError) as error:
                    _item_error(result, error)
            return response
        # The bulk path: amounts only, no per-item objects beyond the result.
        quote = self._catalog.index.quote
        now = int(time.time())
        for item in request.items:
            result = results.add()
            try:
                # The dict is the fast path; an unknown value gets the full, clear error.
                service_type = _SERVICE_TYPES.get(item.service_type) or service_type_from_wire(
                    item.service_type
                )
                endpoint = item.endpoint
                if service_type is ServiceType.APPLICATION and not endpoint:
                    endpoint = item.application_id
                tariff, amount, billed = quote(
                    service_type,
                    endpoint,
                    item.units,
                    epoch_seconds(item.start_time, "start_time", now),
                    item.account_id,
                    item.rate_plan_id,
                )
                rated = result.rated
                rated.amount_micros = amount
                rated.billed_units = billed
                rated.currency = tariff.currency
            except (MeterlineError, AmountError) as error:
                _item_error(result, error)
        return response

    def _operator(self, context: Context) -> None:
        self._auth.principal(context).require_kind(
            PrincipalKind.OPERATOR, action="change rating data"
        )

    @unary
    async def UpsertTariff(
        self, request: rating_pb2.UpsertTariffRequest, context: Context
    ) -> rating_pb2.Tariff:
        self._operator(context)
        if not request.HasField("tariff"):
            raise InvalidArgument("tariff is missing.")
        (written,) = await self._catalog.upsert([tariff_from_wire(request.tariff)])
        return tariff_to_wire(written)

    @unary
    async def ImportTariffs(
        self, request: rating_pb2.ImportTariffsRequest, context: Context
    ) -> rating_pb2.ImportTariffsResponse:
        self._operator(context)
        if not request.tariffs and not request.rate_plans:
            raise InvalidArgument("The import holds no tariffs.")
        if len(request.tariffs) > MAX_IMPORT_TARIFFS:
            raise InvalidArgument(f"An import holds at most {MAX_IMPORT_TARIFFS} tariffs.")
        items = []
        for number, wire in enumerate(request.tariffs, start=1):
            try:
                items.append(tariff_from_wire(wire))
            except InvalidArgument as error:
                raise InvalidArgument(f"tariff {number}: {error.message}") from error
        plans = []
        for number, wire_plan in enumerate(request.rate_plans, start=1):
            try:
                plans.append(plan_from_wire(wire_plan))
            except InvalidArgument as error:
                raise InvalidArgument(f"rate plan {number}: {error.message}") from error
        written = await self._catalog.upsert(items, plans)
        return rating_pb2.ImportTariffsResponse(written=len(written), plans_written=len(plans))

    @unary
    async def ListTariffs(
        self, request: rating_pb2.ListTariffsRequest, context: Context
    ) -> rating_pb2.ListTariffsResponse:
        self._auth.principal(context).require_kind(
            PrincipalKind.OPERATOR, PrincipalKind.SERVICE, action="list tariffs"
        )
        if request.page_size < 0:
            raise InvalidArgument("page_size cannot be negative.")
        limit = min(request.page_size or 100, 1000)
        service_type = (
            service_type_from_wire(request.service_type) if request.service_type else None
        )
        offset = _decode_token(request.page_token) if request.page_token else 0
        page = await self._catalog.list_page(
            service_type, request.rate_plan_id, request.include_history, offset, limit + 1
        )
        response = rating_pb2.ListTariffsResponse(
            tariffs=[tariff_to_wire(tariff) for tariff in page[:limit]]
        )
        if len(page) > limit:
            response.next_page_token = _encode_token(offset + limit)
        return response

    @unary
    async def UpsertRatePlan(
        self, request: rating_pb2.UpsertRatePlanRequest, context: Context
    ) -> rating_pb2.RatePlan:
        self._operator(context)
        if not request.HasField("rate_plan"):
            raise InvalidArgument("rate_plan is missing.")
        return plan_to_wire(await self._catalog.upsert_plan(plan_from_wire(request.rate_plan)))

    @unary
    async def ListRatePlans(
        self, request: rating_pb2.ListRatePlansRequest, context: Context
    ) -> rating_pb2.ListRatePlansResponse:
        self._auth.principal(context).require_kind(
            PrincipalKind.OPERATOR, PrincipalKind.SERVICE, action="list rate plans"
        )
        plans = await self._catalog.plans()
        return rating_pb2.ListRatePlansResponse(rate_plans=[plan_to_wire(p) for p in plans])

    @unary
    async def AssignRatePlan(
        self, request: rating_pb2.AssignRatePlanRequest, context: Context
    ) -> rating_pb2.AssignRatePlanResponse:
        self._operator(context)
        await self._catalog.assign(request.account_id, request.rate_plan_id)
        plan = self._catalog.index.plan_for(request.account_id)
        return rating_pb2.AssignRatePlanResponse(
            account_id=request.account_id, rate_plan_id=plan.plan_id
        )


def _item_error(result: rating_pb2.RateUsageBatchResult, error: Exception) -> None:
    if isinstance(error, AmountError):
        error = InvalidArgument(str(error))
    assert isinstance(error, MeterlineError)
    result.error.code = status_code_for(error).value[0]
    result.error.message = error.message


def _encode_token(offset: int) -> str:
    return base64.urlsafe_b64encode(f"offset:{offset}".encode()).decode()


def _decode_token(token: str) -> int:
    try:
        kind, _, value = base64.urlsafe_b64decode(token.encode()).decode().partition(":")
        if kind != "offset" or not value.isdigit():
            raise ValueError(token)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidArgument("page_token is not one this service gave out.") from exc
    return int(value)
