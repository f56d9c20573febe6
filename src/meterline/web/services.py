"""The page's calls to the services: a gRPC client like the CLI and the SDK, over TLS, each
call with the signed-in user's own token, so the services check every right themselves
(a device's: its own account only)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import cast

import grpc

from meterline.auth.v1 import auth_pb2, auth_pb2_grpc
from meterline.billing.v1 import billing_pb2, billing_pb2_grpc
from meterline.kernel.config import Endpoints, TlsSettings
from meterline.kernel.grpc_server import bearer, client_channel
from meterline.kernel.tls import channel_credentials
from meterline.service.v1 import service_pb2, service_pb2_grpc

TIMEOUT = 10.0
"""Seconds a unary call may take before the page says the service did not answer."""
PAGE_SIZE = 20


class PortalServices:
    """Stubs of the billing manager (and its AuthService) and the service manager."""

    def __init__(self, endpoints: Endpoints, tls: TlsSettings) -> None:
        self._endpoints = endpoints
        self._credentials = channel_credentials(tls)  # bad TLS files fail here, at start
        self._channels: list[grpc.aio.Channel] = []

    def _open(self) -> None:
        """The channels, made on first use: a grpc.aio channel belongs to the event loop
        it was made in, and the server's loop starts after this object is built."""
        billing = client_channel(self._endpoints.billing, self._credentials)
        service = client_channel(self._endpoints.service, self._credentials)
        self._channels = [billing, service]
        self._auth_stub = auth_pb2_grpc.AuthServiceStub(billing)
        self._billing_stub = billing_pb2_grpc.BillingManagerStub(billing)
        self._service_stub = service_pb2_grpc.ServiceManagerStub(service)

    @property
    def _auth(self) -> auth_pb2_grpc.AuthServiceAsyncStub:
        if not self._channels:
            self._open()
        return self._auth_stub

    @property
    def _billing(self) -> billing_pb2_grpc.BillingManagerAsyncStub:
        if not self._channels:
            self._open()
        return self._billing_stub

    @property
    def _service(self) -> service_pb2_grpc.ServiceManagerAsyncStub:
        if not self._channels:
            self._open()
        return self._service_stub

    async def close(self) -> None:
        for channel in self._channels:
            await channel.close(None)
        self._channels = []

    async def issue_token(self, client_id: str, secret: str) -> auth_pb2.IssueTokenResponse:
        return await self._auth.IssueToken(
            auth_pb2.IssueTokenRequest(client_id=client_id, client_secret=secret),
            timeout=TIMEOUT,
        )

    async def account(self, token: str, account_id: str) -> billing_pb2.Account:
        return await self._billing.GetAccount(
            billing_pb2.GetAccountRequest(account_id=account_id),
            metadata=bearer(token),
            timeout=TIMEOUT,
        )

    async def active_sessions(self, token: str, account_id: str) -> list[service_pb2.ActiveSession]:
        found = await self._service.ListActiveSessions(
            service_pb2.ListActiveSessionsRequest(account_id=account_id),
            metadata=bearer(token),
            timeout=TIMEOUT,
        )
        return list(found.sessions)

    def watch(self, token: str, account_id: str) -> AsyncIterator[service_pb2.AccountEvent]:
        """The account's events as they come (no deadline: it lasts as long as the page)."""
        call = self._service.WatchAccount(
            service_pb2.WatchAccountRequest(account_id=account_id), metadata=bearer(token)
        )
        return cast(AsyncIterator[service_pb2.AccountEvent], call)

    async def service_records(
        self, token: str, account_id: str, page_token: str
    ) -> service_pb2.ListServiceRecordsResponse:
        return await self._service.ListServiceRecords(
            service_pb2.ListServiceRecordsRequest(
                account_id=account_id, page_size=PAGE_SIZE, page_token=page_token
            ),
            metadata=bearer(token),
            timeout=TIMEOUT,
        )

    async def ledger_entries(
        self, token: str, account_id: str, page_token: str
    ) -> billing_pb2.ListLedgerEntriesResponse:
        return await self._billing.ListLedgerEntries(
            billing_pb2.ListLedgerEntriesRequest(
                account_id=account_id, page_size=PAGE_SIZE, page_token=page_token
            ),
            metadata=bearer(token),
            timeout=TIMEOUT,
        )

    async def invoices(
        self, token: str, account_id: str, page_token: str
    ) -> billing_pb2.ListInvoicesResponse:
        return await self._billing.ListInvoices(
            billing_pb2.ListInvoicesRequest(
                account_id=account_id, page_size=PAGE_SIZE, page_token=page_token
            ),
            metadata=bearer(token),
            timeout=TIMEOUT,
        )

    async def invoice(self, token: str, invoice_id: str) -> billing_pb2.Invoice:
        return await self._billing.GetInvoice(
            billing_pb2.GetInvoiceRequest(invoice_id=invoice_id),
            metadata=bearer(token),
            timeout=TIMEOUT,
        )

    async def redeem_voucher(
        self, token: str, account_id: str, code: str
    ) -> billing_pb2.RedeemVoucherResponse:
        return await self._billing.RedeemVoucher(
            billing_pb2.RedeemVoucherRequest(account_id=account_id, code=code),
            metadata=bearer(token),
            timeout=TIMEOUT,
        )
