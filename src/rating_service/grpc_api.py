"""RatingService over gRPC: translate, check the caller, delegate."""

from __future__ import annotations

import base64
from typing import Any

import grpc

from meterline.kernel.errors import InvalidArgument, MeterlineError
from meterline.kernel.grpc_errors import status_code_for, unary
from meterline.kernel.grpc_server import Authenticator
from meterline.kernel.media import ServiceType
from meterline.kernel.pricing import RateTerms
from meterline.kernel.principals import PrincipalKind
from meterline.kernel.wire import (
    service_type_from_wire,
    service_type_to_wire,
    timestamp,
    unit_from_wire,
    unit_to_wire,
)
from meterline.rating.v1 import rating_pb2, rating_pb2_grpc
from rating_service.catalog import TariffCatalog
from rating_service.domain.tariffs import Tariff, validate_units

MAX_BATCH_ITEMS = 10_000
MAX_IMPORT_TARIFFS = 100_000
Context = grpc.aio.ServicerContext[Any, Any]


def rate_to_wire(tariff: Tariff) -> rating_pb2.Rate:
    return rating_pb2.Rate(
        tariff_id=tariff.tariff_id,
        service_type=service_type_to_wire(tariff.service_type),
        prefix=tariff.prefix,
        unit=unit_to_wire(tariff.unit),
        price_per_unit_micros=tariff.terms.price_per_unit_micros,
        increment_units=tariff.terms.increment_units,
        minimum_units=tariff.terms.minimum_units,
        setup_fee_micros=tariff.terms.setup_fee_micros,
        currency=tariff.currency,
    )


def tariff_to_wire(tariff: Tariff) -> rating_pb2.Tariff:
    wire = rating_pb2.Tariff(
        tariff_id=tariff.tariff_id,
        service_type=service_type_to_wire(tariff.service_type),
        prefix=tariff.prefix,
        unit=unit_to_wire(tariff.unit),
        price_per_unit_micros=tariff.terms.price_per_unit_micros,
        increment_units=tariff.terms.increment_units,
        minimum_units=tariff.terms.minimum_units,
        setup_fee_micros=tariff.terms.setup_fee_micros,
        currency=tariff.currency,
        description=tariff.description,
    )
    if tariff.updated_at is not None:
        wire.update_time.CopyFrom(timestamp(tariff.updated_at))
    return wire


def tariff_from_wire(wire: rating_pb2.Tariff) -> Tariff:
    return Tariff(
        tariff_id="",
        service_type=service_type_from_wire(wire.service_type),
        prefix=wire.prefix,
        unit=unit_from_wire(wire.unit),
        terms=RateTerms(
            price_per_unit_micros=wire.price_per_unit_micros,
            increment_units=wire.increment_units,
            minimum_units=wire.minimum_units,
            setup_fee_micros=wire.setup_fee_micros,
        ),
        currency=wire.currency,
        description=wire.description,
    )


def _endpoint(request: rating_pb2.RateUsageRequest, service_type: ServiceType) -> str:
    # Application usage is priced by application id when no endpoint is given.
    if service_type is ServiceType.APPLICATION and not request.endpoint:
        return request.application_id
    return request.endpoint


class RatingServicer(rating_pb2_grpc.RatingServiceServicer):
    def __init__(self, catalog: TariffCatalog, auth: Authenticator) -> None:
        self._catalog = catalog
        self._auth = auth

    def _rate_one(self, request: rating_pb2.RateUsageRequest) -> rating_pb2.RatedUsage:
        service_type = service_type_from_wire(request.service_type)
        rated = self._catalog.index.rate(
            service_type, _endpoint(request, service_type), validate_units(request.units)
        )
        return rating_pb2.RatedUsage(
            amount_micros=rated.price.amount_micros,
            billed_units=rated.price.billed_units,
            currency=rated.tariff.currency,
            rate=rate_to_wire(rated.tariff),
        )

    @unary
    async def GetRate(
        self, request: rating_pb2.GetRateRequest, context: Context
    ) -> rating_pb2.Rate:
        self._auth.principal(context)
        service_type = service_type_from_wire(request.service_type)
        return rate_to_wire(self._catalog.index.match(service_type, request.endpoint))

    @unary
    async def RateUsage(
        self, request: rating_pb2.RateUsageRequest, context: Context
    ) -> rating_pb2.RatedUsage:
        self._auth.principal(context)
        return self._rate_one(request)

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
        for item in request.items:
            result = response.results.add()
            try:
                result.rated.CopyFrom(self._rate_one(item))
            except MeterlineError as error:
                result.error.code = status_code_for(error).value[0]
                result.error.message = error.message
        return response

    @unary
    async def UpsertTariff(
        self, request: rating_pb2.UpsertTariffRequest, context: Context
    ) -> rating_pb2.Tariff:
        self._auth.principal(context).require_kind(PrincipalKind.OPERATOR, action="change tariffs")
        if not request.HasField("tariff"):
            raise InvalidArgument("tariff is missing.")
        (written,) = await self._catalog.upsert([tariff_from_wire(request.tariff)])
        return tariff_to_wire(written)

    @unary
    async def ImportTariffs(
        self, request: rating_pb2.ImportTariffsRequest, context: Context
    ) -> rating_pb2.ImportTariffsResponse:
        self._auth.principal(context).require_kind(PrincipalKind.OPERATOR, action="change tariffs")
        if not request.tariffs:
            raise InvalidArgument("The import holds no tariffs.")
        if len(request.tariffs) > MAX_IMPORT_TARIFFS:
            raise InvalidArgument(f"An import holds at most {MAX_IMPORT_TARIFFS} tariffs.")
        items = []
        for number, wire in enumerate(request.tariffs, start=1):
            try:
                items.append(tariff_from_wire(wire))
            except InvalidArgument as error:
                raise InvalidArgument(f"tariff {number}: {error.message}") from error
        written = await self._catalog.upsert(items)
        return rating_pb2.ImportTariffsResponse(written=len(written))

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
        after = _decode_token(request.page_token) if request.page_token else None
        page = await self._catalog.list_page(service_type, after, limit + 1)
        response = rating_pb2.ListTariffsResponse(
            tariffs=[tariff_to_wire(tariff) for tariff in page[:limit]]
        )
        if len(page) > limit:
            last = page[limit - 1]
            response.next_page_token = _encode_token(last.service_type.value, last.prefix)
        return response


def _encode_token(service_type: str, prefix: str) -> str:
    return base64.urlsafe_b64encode(f"{service_type}\n{prefix}".encode()).decode()


def _decode_token(token: str) -> tuple[str, str]:
    try:
        service_type, prefix = base64.urlsafe_b64decode(token.encode()).decode().split("\n", 1)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidArgument("page_token is not one this service gave out.") from exc
    return service_type, prefix
