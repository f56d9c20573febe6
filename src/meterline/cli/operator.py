"""The CLI's calls to the services, as an operator, over TLS unless plaintext is asked
for. The operator token is minted from the deployment's shared secret
(METERLINE_TOKEN_SECRET, or the one `meterline up` generated in the data folder): whoever
holds that secret administers the installation."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import grpc

from meterline.auth.v1 import auth_pb2, auth_pb2_grpc
from meterline.billing.v1 import billing_pb2, billing_pb2_grpc
from meterline.kernel.config import Endpoints, TlsSettings
from meterline.kernel.grpc_server import bearer, client_channel
from meterline.kernel.principals import Principal, PrincipalKind
from meterline.kernel.tls import channel_credentials
from meterline.kernel.tokens import TokenSigner
from meterline.rating.v1 import rating_pb2, rating_pb2_grpc
from meterline.service.v1 import service_pb2, service_pb2_grpc

TIMEOUT = 15.0


@dataclass
class OperatorClient:
    endpoints: Endpoints
    secret: str
    tls: TlsSettings
    """The channels' security; a file it names that cannot be used raises ConfigError."""

    def __post_init__(self) -> None:
        principal = Principal(kind=PrincipalKind.OPERATOR, subject="meterline-cli")
        self._metadata = bearer(TokenSigner(self.secret).issue(principal).token)
        self._credentials = channel_credentials(self.tls)
        self._channels: dict[str, grpc.aio.Channel] = {}

    def _channel(self, address: str) -> grpc.aio.Channel:
        if address not in self._channels:
            self._channels[address] = client_channel(address, self._credentials)
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

    async def accounts(
        self, page: Callable[[int], None] | None = None
    ) -> list[billing_pb2.Account]:
        """Every account, in id order; `page` is told how many came with each page."""
        found: list[billing_pb2.Account] = []
        token = ""
        while True:
            request = billing_pb2.ListAccountsRequest(page_size=1000, page_token=token)
            response = await self.billing.ListAccounts(
                request, metadata=self._metadata, timeout=TIMEOUT
            )
            found.extend(response.accounts)
            if page is not None:
                page(len(response.accounts))
            token = response.next_page_token
            if not token:
                return found

    async def fund(
        self, account_id: str, amount: int, key: str, payment_reference: str = ""
    ) -> billing_pb2.FundAccountResponse:
        request = billing_pb2.FundAccountRequest(
            account_id=account_id,
            amount_micros=amount,
            idempotency_key=key,
            payment_reference=payment_reference,
        )
        return await self.billing.FundAccount(request, metadata=self._metadata, timeout=TIMEOUT)

    async def create_vouchers(
        self, request: billing_pb2.CreateVouchersRequest
    ) -> billing_pb2.CreateVouchersResponse:
        return await self.billing.CreateVouchers(
            request, metadata=self._metadata, timeout=TIMEOUT * 4
        )

    async def adjust(
        self, account_id: str, amount: int, reason: str, key: str
    ) -> billing_pb2.AdjustAccountResponse:
        request = billing_pb2.AdjustAccountRequest(
            account_id=account_id, amount_micros=amount, reason=reason, idempotency_key=key
        )
        return await self.billing.AdjustAccount(request, metadata=self._metadata, timeout=TIMEOUT)

    async def refund(
        self, hold_id: str, amount: int, reason: str, key: str
    ) -> billing_pb2.RefundResponse:
        request = billing_pb2.RefundRequest(
            hold_id=hold_id, amount_micros=amount, reason=reason, idempotency_key=key
        )
        return await self.billing.Refund(request, metadata=self._metadata, timeout=TIMEOUT)

    async def set_account_status(
        self, account_id: str, status: billing_pb2.AccountStatus.ValueType
    ) -> billing_pb2.Account:
        request = billing_pb2.SetAccountStatusRequest(account_id=account_id, status=status)
        return await self.billing.SetAccountStatus(
            request, metadata=self._metadata, timeout=TIMEOUT
        )

    async def redeem_voucher(self, account_id: str, code: str) -> billing_pb2.RedeemVoucherResponse:
        request = billing_pb2.RedeemVoucherRequest(account_id=account_id, code=code)
        return await self.billing.RedeemVoucher(request, metadata=self._metadata, timeout=TIMEOUT)

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

    async def generate_invoice(
        self, request: billing_pb2.GenerateInvoiceRequest
    ) -> billing_pb2.Invoice:
        return await self.billing.GenerateInvoice(request, metadata=self._metadata, timeout=TIMEOUT)

    async def invoice(self, invoice_id: str) -> billing_pb2.Invoice:
        """A bill by its id or its number."""
        request = billing_pb2.GetInvoiceRequest(invoice_id=invoice_id)
        return await self.billing.GetInvoice(request, metadata=self._metadata, timeout=TIMEOUT)

    async def invoices(self, account_id: str) -> list[billing_pb2.Invoice]:
        """Every bill of the account, newest first."""
        found: list[billing_pb2.Invoice] = []
        token = ""
        while True:
            request = billing_pb2.ListInvoicesRequest(
                account_id=account_id, page_size=500, page_token=token
            )
            page = await self.billing.ListInvoices(
                request, metadata=self._metadata, timeout=TIMEOUT
            )
            found.extend(page.invoices)
            token = page.next_page_token
            if not token:
                return found

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

    async def tariffs(
        self, include_history: bool = False, page: Callable[[int], None] | None = None
    ) -> list[rating_pb2.Tariff]:
        """Every tariff; `page` is told how many came with each page."""
        found: list[rating_pb2.Tariff] = []
        token = ""
        while True:
            request = rating_pb2.ListTariffsRequest(
                page_size=1000, page_token=token, include_history=include_history
            )
            response = await self.rating.ListTariffs(
                request, metadata=self._metadata, timeout=TIMEOUT
            )
            found.extend(response.tariffs)
            if page is not None:
                page(len(response.tariffs))
            token = response.next_page_token
            if not token:
                return found

    async def stop_session(self, session_id: str) -> service_pb2.ServiceRecord:
        """End a session as an operator: it is settled at the usage last reported."""
        request = service_pb2.StopServiceRequest(session_id=session_id, used_units=0)
        return await self.service.StopService(request, metadata=self._metadata, timeout=TIMEOUT)

    async def gateways(self) -> list[service_pb2.RegisteredGateway]:
        response = await self.service.ListGateways(
            service_pb2.ListGatewaysRequest(), metadata=self._metadata, timeout=TIMEOUT
        )
        return list(response.gateways)

    async def active_sessions(self, account_id: str = "") -> list[service_pb2.ActiveSession]:
        request = service_pb2.ListActiveSessionsRequest(account_id=account_id)
        response = await self.service.ListActiveSessions(
            request, metadata=self._metadata, timeout=TIMEOUT
        )
        return list(response.sessions)

    async def publish_component(
        self, requests: Iterable[service_pb2.PublishComponentRequest]
    ) -> service_pb2.PublishComponentResponse:
        # An upload of many megabytes may take a while on a slow link.
        return await self.service.PublishComponent(
            iter(requests), metadata=self._metadata, timeout=600
        )

    async def components(self, name: str = "", platform: str = "") -> list[service_pb2.Component]:
        request = service_pb2.ListComponentsRequest(name=name, platform=platform)
        response = await self.service.ListComponents(
            request, metadata=self._metadata, timeout=TIMEOUT
        )
        return list(response.components)

    async def register_gateway(
        self, request: service_pb2.RegisterGatewayRequest
    ) -> service_pb2.RegisteredGateway:
        return await self.service.RegisterGateway(request, metadata=self._metadata, timeout=TIMEOUT)

    async def update_gateway(
        self, request: service_pb2.UpdateGatewayRequest
    ) -> service_pb2.RegisteredGateway:
        return await self.service.UpdateGateway(request, metadata=self._metadata, timeout=TIMEOUT)

    async def ticket_key(self) -> service_pb2.SessionTicketKey:
        return await self.service.GetSessionTicketKey(
            service_pb2.GetSessionTicketKeyRequest(), metadata=self._metadata, timeout=TIMEOUT
        )

    async def add_identity(
        self, account_id: str, identity: service_pb2.SubscriberIdentity
    ) -> service_pb2.AccountIdentity:
        request = service_pb2.AddAccountIdentityRequest(account_id=account_id, identity=identity)
        return await self.service.AddAccountIdentity(
            request, metadata=self._metadata, timeout=TIMEOUT
        )

    async def remove_identity(
        self, account_id: str, identity: service_pb2.SubscriberIdentity
    ) -> bool:
        request = service_pb2.RemoveAccountIdentityRequest(account_id=account_id, identity=identity)
        response = await self.service.RemoveAccountIdentity(
            request, metadata=self._metadata, timeout=TIMEOUT
        )
        return bool(response.removed)

    async def identities(self, account_id: str) -> list[service_pb2.AccountIdentity]:
        request = service_pb2.ListAccountIdentitiesRequest(account_id=account_id)
        response = await self.service.ListAccountIdentities(
            request, metadata=self._metadata, timeout=TIMEOUT
        )
        return list(response.identities)
