"""The CLI's calls to the services, as an operator. The operator token is minted from the
deployment's shared secret (METERLINE_TOKEN_SECRET, or the one `meterline up` generated
in the data folder): whoever holds that secret administers the installation."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import grpc

from meterline.auth.v1 import auth_pb2, auth_pb2_grpc
from meterline.billing.v1 import billing_pb2, billing_pb2_grpc
from meterline.kernel.config import Endpoints
from meterline.kernel.grpc_server import bearer, client_channel
from meterline.kernel.principals import Principal, PrincipalKind
from meterline.kernel.tokens import TokenSigner
from meterline.rating.v1 import rating_pb2, rating_pb2_grpc
from meterline.service.v1 import service_pb2, service_pb2_grpc

TIMEOUT = 15.0


@dataclass
class OperatorClient:
    endpoints: Endpoints
    secret: str

    def __post_init__(self) -> None:
        principal = Principal(kind=PrincipalKind.OPERATOR, subject="meterline-cli")
        self._metadata = bearer(TokenSigner(self.secret).issue(principal).token)
        self._channels: dict[str, grpc.aio.Channel] = {}

    def _channel(self, address: str) -> grpc.aio.Channel:
        if address not in self._channels:
            self._channels[address] = client_channel(address)
        return self._channels[address]

    @property
    def billing(self) -> billing_pb2_grpc.BillingManagerAsyncStub:
        return billing_pb2_grpc.BillingManagerStub(self._channel(self.endpoints.billing))

    @property
    def auth(self) -> auth_pb2_grpc.AuthServiceAsyncStub:
        return auth_pb2_grpc.AuthServiceStub(self._channel(self.endpoints.billing))

    @property
    def rating(self) -> rating_pb2_grpc.RatingServiceAsyncStub:
        return rating_pb2_grpc.RatingServiceStub(self._channel(self.endpoints.rating))

    @property
    def service(self) -> service_pb2_grpc.ServiceManagerAsyncStub:
        return service_pb2_grpc.ServiceManagerStub(self._channel(self.endpoints.service))

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close(None)

    async def create_account(
        self, name: str, currency: str, credit_limit: int
    ) -> billing_pb2.Account:
        request = billing_pb2.CreateAccountRequest(
            display_name=name, currency=currency, credit_limit_micros=credit_limit
        )
        return await self.billing.CreateAccount(request, metadata=self._metadata, timeout=TIMEOUT)

    async def fund(self, account_id: str, amount: int, key: str) -> billing_pb2.FundAccountResponse:
        request = billing_pb2.FundAccountRequest(
            account_id=account_id, amount_micros=amount, idempotency_key=key
        )
        return await self.billing.FundAccount(request, metadata=self._metadata, timeout=TIMEOUT)

    async def account(self, account_id: str) -> billing_pb2.Account:
        request = billing_pb2.GetAccountRequest(account_id=account_id)
        return await self.billing.GetAccount(request, metadata=self._metadata, timeout=TIMEOUT)

    async def ledger(self, account_id: str) -> list[billing_pb2.LedgerEntry]:
        entries: list[billing_pb2.LedgerEntry] = []
        token = ""
        while True:
            request = billing_pb2.ListLedgerEntriesRequest(
                account_id=account_id, page_size=1000, page_token=token
            )
            page = await self.billing.ListLedgerEntries(
                request, metadata=self._metadata, timeout=TIMEOUT
            )
            entries.extend(page.entries)
            token = page.next_page_token
            if not token:
                return entries

    async def create_credential(
        self, kind: auth_pb2.PrincipalKind.ValueType, account_id: str = "", gateway: str = ""
    ) -> auth_pb2.CreateCredentialResponse:
        request = auth_pb2.CreateCredentialRequest(
            kind=kind, account_id=account_id, gateway_name=gateway
        )
        return await self.auth.CreateCredential(request, metadata=self._metadata, timeout=TIMEOUT)

    async def import_tariffs(
        self, tariffs: Sequence[rating_pb2.Tariff], plans: Sequence[rating_pb2.RatePlan] = ()
    ) -> int:
        request = rating_pb2.ImportTariffsRequest(tariffs=tariffs, rate_plans=plans)
        response = await self.rating.ImportTariffs(request, metadata=self._metadata, timeout=60)
        return int(response.written)

    async def rate_plans(self) -> list[rating_pb2.RatePlan]:
        response = await self.rating.ListRatePlans(
            rating_pb2.ListRatePlansRequest(), metadata=self._metadata, timeout=TIMEOUT
        )
        return list(response.rate_plans)

    async def assign_plan(self, account_id: str, plan_id: str) -> str:
        response = await self.rating.AssignRatePlan(
            rating_pb2.AssignRatePlanRequest(account_id=account_id, rate_plan_id=plan_id),
            metadata=self._metadata,
            timeout=TIMEOUT,
        )
        return str(response.rate_plan_id)

    async def tariffs(self, include_history: bool = False) -> list[rating_pb2.Tariff]:
        found: list[rating_pb2.Tariff] = []
        token = ""
        while True:
            request = rating_pb2.ListTariffsRequest(
                page_size=1000, page_token=token, include_history=include_history
            )
            page = await self.rating.ListTariffs(request, metadata=self._metadata, timeout=TIMEOUT)
            found.extend(page.tariffs)
            token = page.next_page_token
            if not token:
                return found

    async def active_sessions(self, account_id: str = "") -> list[service_pb2.ActiveSession]:
        request = service_pb2.ListActiveSessionsRequest(account_id=account_id)
        response = await self.service.ListActiveSessions(
            request, metadata=self._metadata, timeout=TIMEOUT
        )
        return list(response.sessions)
