"""Raw gRPC stubs for tests that need to send what the SDK never would (over TLS, trusting
the test run's CA)."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass

import grpc

from meterline.auth.v1 import auth_pb2, auth_pb2_grpc
from meterline.billing.v1 import billing_pb2, billing_pb2_grpc
from meterline.kernel.config import Endpoints
from meterline.kernel.principals import Principal, PrincipalKind
from meterline.rating.v1 import rating_pb2, rating_pb2_grpc, types_pb2
from meterline.service.v1 import service_pb2_grpc
from tests.support import tls
from tests.support.stack import metadata, operator_token, token_for


@dataclass
class Stubs:
    rating: rating_pb2_grpc.RatingServiceAsyncStub
    billing: billing_pb2_grpc.BillingManagerAsyncStub
    auth: auth_pb2_grpc.AuthServiceAsyncStub
    service: service_pb2_grpc.ServiceManagerAsyncStub
    channels: list[grpc.aio.Channel]

    async def close(self) -> None:
        for channel in self.channels:
            await channel.close(None)


def stubs(
    endpoints: Endpoints, open_channel: Callable[[str], grpc.aio.Channel] = tls.channel
) -> Stubs:
    rating = open_channel(endpoints.rating)
    billing = open_channel(endpoints.billing)
    service = open_channel(endpoints.service)
    return Stubs(
        rating=rating_pb2_grpc.RatingServiceStub(rating),
        billing=billing_pb2_grpc.BillingManagerStub(billing),
        auth=auth_pb2_grpc.AuthServiceStub(billing),
        service=service_pb2_grpc.ServiceManagerStub(service),
        channels=[rating, billing, service],
    )


OPERATOR = metadata(operator_token())


def device(account_id: str) -> tuple[tuple[str, str], ...]:
    principal = Principal(kind=PrincipalKind.DEVICE, subject="test-device", account_id=account_id)
    return metadata(token_for(principal))


async def ensure_tariff(
    stub: rating_pb2_grpc.RatingServiceAsyncStub,
    prefix: str,
    price_micros: int,
    service_type: types_pb2.ServiceType.ValueType = types_pb2.VOICE,
    unit: types_pb2.Unit.ValueType = types_pb2.SECOND,
    currency: str = "EUR",
) -> None:
    await stub.UpsertTariff(
        rating_pb2.UpsertTariffRequest(
            tariff=rating_pb2.Tariff(
                service_type=service_type,
                prefix=prefix,
                unit=unit,
                price_per_unit_micros=price_micros,
                increment_units=1,
                currency=currency,
            )
        ),
        metadata=OPERATOR,
    )


async def new_account(
    stub: billing_pb2_grpc.BillingManagerAsyncStub,
    funded_micros: int = 0,
    credit_limit_micros: int = 0,
    currency: str = "EUR",
) -> str:
    account = await stub.CreateAccount(
        billing_pb2.CreateAccountRequest(
            display_name="Test", currency=currency, credit_limit_micros=credit_limit_micros
        ),
        metadata=OPERATOR,
    )
    if funded_micros:
        await stub.FundAccount(
            billing_pb2.FundAccountRequest(
                account_id=account.account_id,
                amount_micros=funded_micros,
                idempotency_key=uuid.uuid4().hex,
            ),
            metadata=OPERATOR,
        )
    return str(account.account_id)


async def device_credential(
    stub: auth_pb2_grpc.AuthServiceAsyncStub, account_id: str
) -> tuple[str, str]:
    created = await stub.CreateCredential(
        auth_pb2.CreateCredentialRequest(
            kind=auth_pb2.PRINCIPAL_KIND_DEVICE, account_id=account_id
        ),
        metadata=OPERATOR,
    )
    return created.client_id, created.client_secret
