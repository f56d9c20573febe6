"""The device's entry point: log in, start services, read the balance."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, timedelta

import grpc

from client_sdk.auth import TokenProvider
from client_sdk.config import ClientConfig
from client_sdk.errors import AuthenticationError
from client_sdk.failover import ServerPool
from client_sdk.session import ServiceSession, UsageSource
from client_sdk.types import Rate, ServiceRecord, ServiceType, TerminationReason, Unit
from meterline.billing.v1 import billing_pb2, billing_pb2_grpc
from meterline.rating.v1 import rating_pb2, types_pb2
from meterline.service.v1 import service_pb2, service_pb2_grpc


@dataclass(frozen=True, slots=True)
class Balance:
    account_id: str
    currency: str
    balance_micros: int
    """Funded minus charged."""
    available_micros: int
    """Balance minus what running services hold."""


def _rate(rate: rating_pb2.Rate) -> Rate:
    return Rate(
        tariff_id=rate.tariff_id,
        prefix=rate.prefix,
        unit=Unit(types_pb2.Unit.Name(rate.unit)),
        price_per_unit_micros=rate.price_per_unit_micros,
        increment_units=rate.increment_units,
        minimum_units=rate.minimum_units,
        setup_fee_micros=rate.setup_fee_micros,
        currency=rate.currency,
    )


def _record(record: service_pb2.ServiceRecord) -> ServiceRecord:
    reason = service_pb2.TerminationReason.Name(record.termination_reason)
    return ServiceRecord(
        session_id=record.session_id,
        account_id=record.account_id,
        service_type=ServiceType(types_pb2.ServiceType.Name(record.service_type)),
        endpoint=record.endpoint,
        rate=_rate(record.rate),
        started_at=record.started_at.ToDatetime(tzinfo=UTC),
        ended_at=record.ended_at.ToDatetime(tzinfo=UTC),
        duration=timedelta(seconds=record.duration.ToTimedelta().total_seconds()),
        used_units=record.used_units,
        billed_units=record.billed_units,
        charged_micros=record.charged_micros,
        termination_reason=TerminationReason(reason.removeprefix("TERMINATION_REASON_")),
        gateway_id=record.gateway_id,
    )


class MeterlineClient:
    """One device's connection to Meterline. Use `async with MeterlineClient(config)`."""

    def __init__(self, config: ClientConfig) -> None:
        self.config = config
        self.service_pool = ServerPool(
            config.service_addresses, config.tls, config.max_failover_attempts
        )
        self.auth_pool = ServerPool(config.auth_addresses, config.tls, config.max_failover_attempts)
        self.tokens = TokenProvider(
            self.auth_pool,
            config.client_id,
            config.client_secret,
            config.token_refresh_margin,
            config.call_timeout,
        )

    async def __aenter__(self) -> MeterlineClient:
        await self.login()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def login(self) -> str:
        """Exchange the credential for a token; returns the account it is bound to."""
        await self.tokens.token()
        return self.tokens.account_id

    @property
    def account_id(self) -> str:
        return self.tokens.account_id

    async def close(self) -> None:
        await self.service_pool.close()
        await self.auth_pool.close()

    async def start_service(
        self,
        service_type: ServiceType | str,
        endpoint: str,
        *,
        account_id: str | None = None,
        application_id: str = "",
        usage_source: UsageSource | None = None,
        report_interval: float | None = None,
    ) -> ServiceSession:
        """Start a service. With `usage_source`, usage is reported every `report_interval`
        seconds on its own; without, call `session.report(used_units)`."""
        account = account_id or await self.login()
        if not account:
            raise AuthenticationError(
                "This credential is not bound to an account; pass account_id."
            )
        request = service_pb2.StartServiceRequest(
            account_id=account,
            service_type=types_pb2.ServiceType.Value(ServiceType(service_type).value),
            endpoint=endpoint,
            application_id=application_id,
            # The same request id on every retry: a failover cannot start it twice.
            request_id=uuid.uuid4().hex,
        )

        async def call(channel: grpc.aio.Channel) -> service_pb2.StartServiceResponse:
            stub = service_pb2_grpc.ServiceManagerStub(channel)
            return await stub.StartService(
                request, metadata=await self.tokens.metadata(), timeout=self.config.call_timeout
            )

        started = await self.service_pool.call(call)
        return ServiceSession(
            self,
            started,
            _rate(started.rate),
            usage_source,
            report_interval or self.config.report_interval,
        )

    async def stop_session(self, session_id: str, used_units: int) -> ServiceRecord:
        request = service_pb2.StopServiceRequest(session_id=session_id, used_units=used_units)

        async def call(channel: grpc.aio.Channel) -> service_pb2.ServiceRecord:
            stub = service_pb2_grpc.ServiceManagerStub(channel)
            return await stub.StopService(
                request, metadata=await self.tokens.metadata(), timeout=self.config.call_timeout
            )

        return _record(await self.service_pool.call(call))

    async def balance(self) -> Balance:
        account = self.account_id or await self.login()
        request = billing_pb2.GetAccountRequest(account_id=account)

        async def call(channel: grpc.aio.Channel) -> billing_pb2.Account:
            stub = billing_pb2_grpc.BillingManagerStub(channel)
            return await stub.GetAccount(
                request, metadata=await self.tokens.metadata(), timeout=self.config.call_timeout
            )

        found = await self.auth_pool.call(call)
        return Balance(
            account_id=found.account_id,
            currency=found.currency,
            balance_micros=found.balance_micros,
            available_micros=found.available_micros,
        )
