"""BillingManager and AuthService over gRPC: translate, check the caller, delegate."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from billing_manager.authentication import Authentication
from billing_manager.domain.invoices import Invoice, UsageSummary
from billing_manager.domain.ledger import (
    AccountStatus,
    AccountView,
    Hold,
    Transaction,
    TransactionKind,
)
from billing_manager.ledger import Ledger
from meterline.auth.v1 import auth_pb2, auth_pb2_grpc
from meterline.billing.v1 import billing_pb2, billing_pb2_grpc
from meterline.kernel.errors import InvalidArgument, NotFound, PermissionDenied, required
from meterline.kernel.grpc_errors import unary
from meterline.kernel.grpc_server import Authenticator
from meterline.kernel.principals import PrincipalKind
from meterline.kernel.wire import from_timestamp, timestamp

Context = grpc.aio.ServicerContext[Any, Any]
MOVERS = (PrincipalKind.OPERATOR, PrincipalKind.SERVICE)


def account_to_wire(view: AccountView) -> billing_pb2.Account:
    account = view.account
    return billing_pb2.Account(
        account_id=account.account_id,
        display_name=account.display_name,
        currency=account.currency,
        balance_micros=view.balances.balance_micros,
        available_micros=view.balances.available_micros,
        held_micros=view.balances.held_micros,
        status=billing_pb2.AccountStatus.Value(f"ACCOUNT_STATUS_{account.status.value}"),
        credit_limit_micros=account.credit_limit_micros,
        create_time=timestamp(account.created_at),
        postpaid=account.postpaid,
    )


def hold_to_wire(hold: Hold) -> billing_pb2.Hold:
    return billing_pb2.Hold(
        hold_id=hold.hold_id,
        account_id=hold.account_id,
        amount_micros=hold.amount_micros,
        captured_micros=hold.captured_micros,
        released_micros=hold.released_micros,
        status=billing_pb2.HoldStatus.Value(f"HOLD_STATUS_{hold.status.value}"),
        reference=hold.reference,
        create_time=timestamp(hold.created_at),
        expire_time=timestamp(hold.expires_at),
    )


def transaction_to_wire(transaction: Transaction) -> billing_pb2.Transaction:
    return billing_pb2.Transaction(
        transaction_id=transaction.transaction_id,
        kind=billing_pb2.TransactionKind.Value(f"TRANSACTION_KIND_{transaction.kind.value}"),
        account_id=transaction.account_id,
        amount_micros=transaction.amount_micros,
        idempotency_key=transaction.idempotency_key,
        create_time=timestamp(transaction.created_at),
        reference=transaction.reference,
    )


def invoice_to_wire(invoice: Invoice) -> billing_pb2.Invoice:
    content = invoice.content
    wire = billing_pb2.Invoice(
        invoice_id=invoice.invoice_id,
        account_id=invoice.account_id,
        period_start=timestamp(invoice.period_start),
        period_end=timestamp(invoice.period_end),
        total_micros=invoice.total_micros,
        currency=invoice.currency,
        create_time=timestamp(invoice.created_at),
        number=invoice.number,
        account_name=invoice.account_name,
        opening_balance_micros=content.opening_balance_micros,
        funded_micros=content.funded_micros,
        adjusted_micros=content.adjusted_micros,
        refunded_micros=content.refunded_micros,
        closing_balance_micros=content.closing_balance_micros,
        lines=[
            billing_pb2.InvoiceLine(
                reference=line.reference,
                amount_micros=line.amount_micros,
                capture_time=timestamp(line.captured_at),
                transaction_id=line.transaction_id,
            )
            for line in content.lines
        ],
        movements=[
            billing_pb2.InvoiceMovement(
                kind=billing_pb2.TransactionKind.Value(f"TRANSACTION_KIND_{movement.kind.value}"),
                amount_micros=movement.amount_micros,
                create_time=timestamp(movement.created_at),
                description=movement.description,
                transaction_id=movement.transaction_id,
            )
            for movement in content.movements
        ],
    )
    for charge in content.charges:
        line = wire.charges.add(
            service_type=charge.service_type,
            application_id=charge.application_id,
            units=charge.units,
            unit=charge.unit,
            amount_micros=charge.amount_micros,
        )
        for session in charge.sessions:
            shown = line.sessions.add(
                session_id=session.session_id,
                start_time=timestamp(session.start_time),
                endpoint=session.endpoint,
                units=session.units,
                amount_micros=session.amount_micros,
            )
            shown.duration.FromTimedelta(session.duration)
    return wire


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _given_time(stamp: Timestamp, field: str) -> datetime:
    """A time the request had to set: one set to 1970-01-01T00:00:00Z is that time, not
    now (`from_timestamp` reads an unset, zero time as now)."""
    return from_timestamp(stamp, field, default=_EPOCH)


def usage_from_wire(usage: billing_pb2.UsageSummary) -> UsageSummary:
    """A Capture's usage summary; its times are both needed."""
    if not usage.HasField("start_time") or not usage.HasField("end_time"):
        raise InvalidArgument("usage.start_time and usage.end_time are both needed.")
    return UsageSummary(
        session_id=usage.session_id,
        service_type=usage.service_type,
        endpoint=usage.endpoint,
        application_id=usage.application_id,
        units=usage.units,
        unit=usage.unit,
        start_time=_given_time(usage.start_time, "usage.start_time"),
        end_time=_given_time(usage.end_time, "usage.end_time"),
        charged_micros=usage.charged_micros,
    )


def _invoice_page(page_size: int, page_token: str) -> tuple[int, tuple[datetime, str] | None]:
    """ListInvoices' page: at most 500 bills, after the token's (created_at, invoice_id)."""
    if page_size < 0:
        raise InvalidArgument("page_size cannot be negative.")
    limit = min(page_size or 50, 500)
    if not page_token:
        return limit, None
    created, _, invoice_id = page_token.partition("|")
    try:
        return limit, (datetime.fromisoformat(created), invoice_id)
    except ValueError as exc:
        raise InvalidArgument("page_token is not one this service gave out.") from exc


_STATUSES = {
    billing_pb2.ACCOUNT_STATUS_ACTIVE: AccountStatus.ACTIVE,
    billing_pb2.ACCOUNT_STATUS_SUSPENDED: AccountStatus.SUSPENDED,
    billing_pb2.ACCOUNT_STATUS_CLOSED: AccountStatus.CLOSED,
}


def _page(page_size: int, page_token: str) -> tuple[int, int]:
    if page_size < 0:
        raise InvalidArgument("page_size cannot be negative.")
    try:
        after = int(page_token) if page_token else 0
    except ValueError as exc:
        raise InvalidArgument("page_token is not one this service gave out.") from exc
    return min(page_size or 100, 1000), after


class BillingServicer(billing_pb2_grpc.BillingManagerServicer):
    database_label = "account database"  # in UNAVAILABLE messages

    def __init__(
        self,
        ledger: Ledger,
        auth: Authenticator,
        funded: Callable[[str], None] | None = None,
        status_changed: Callable[[str, str], None] | None = None,
    ) -> None:
        self._ledger = ledger
        self._auth = auth
        # Told each account funded, once the top-up committed (kernel/account_events.py).
        self._funded = funded
        # Told each account suspended or closed, once committed: its sessions are ended.
        self._status_changed = status_changed

    @unary
    async def CreateAccount(
        self, request: billing_pb2.CreateAccountRequest, context: Context
    ) -> billing_pb2.Account:
        self._auth.principal(context).require_kind(PrincipalKind.OPERATOR, action="open accounts")
        view = await self._ledger.create_account(
            request.display_name, request.currency, request.credit_limit_micros
        )
        return account_to_wire(view)

    @unary
    async def GetAccount(
        self, request: billing_pb2.GetAccountRequest, context: Context
    ) -> billing_pb2.Account:
        principal = self._auth.principal(context)
        principal.require_account(required(request.account_id, "account_id", "account"))
        return account_to_wire(await self._ledger.get_account(request.account_id))

    @unary
    async def FundAccount(
        self, request: billing_pb2.FundAccountRequest, context: Context
    ) -> billing_pb2.FundAccountResponse:
        self._auth.principal(context).require_kind(PrincipalKind.OPERATOR, action="fund accounts")
        required(request.account_id, "account_id", "account to fund")
        transaction, view = await self._ledger.fund(
            request.account_id,
            request.amount_micros,
            request.idempotency_key,
            request.payment_reference,
        )
        if self._funded is not None:
            self._funded(request.account_id)
        return billing_pb2.FundAccountResponse(
            transaction=transaction_to_wire(transaction), account=account_to_wire(view)
        )

    @unary
    async def CreateVouchers(
        self, request: billing_pb2.CreateVouchersRequest, context: Context
    ) -> billing_pb2.CreateVouchersResponse:
        self._auth.principal(context).require_kind(PrincipalKind.OPERATOR, action="create vouchers")
        expires_at = (
            from_timestamp(request.expire_time, "expire_time")
            if request.HasField("expire_time")
            else None
        )
        batch_id, codes = await self._ledger.create_vouchers(
            request.count, request.amount_micros, request.currency, expires_at
        )
        response = billing_pb2.CreateVouchersResponse(
            batch_id=batch_id,
            codes=codes,
            amount_micros=request.amount_micros,
            currency=request.currency,
        )
        if expires_at is not None:
            response.expire_time.CopyFrom(request.expire_time)
        return response

    @unary
    async def AdjustAccount(
        self, request: billing_pb2.AdjustAccountRequest, context: Context
    ) -> billing_pb2.AdjustAccountResponse:
        self._auth.principal(context).require_kind(PrincipalKind.OPERATOR, action="adjust accounts")
        required(request.account_id, "account_id", "account to adjust")
        transaction, view = await self._ledger.adjust(
            request.account_id, request.amount_micros, request.reason, request.idempotency_key
        )
        if self._funded is not None and request.amount_micros > 0:
            self._funded(request.account_id)
        return billing_pb2.AdjustAccountResponse(
            transaction=transaction_to_wire(transaction), account=account_to_wire(view)
        )

    @unary
    async def Refund(
        self, request: billing_pb2.RefundRequest, context: Context
    ) -> billing_pb2.RefundResponse:
        self._auth.principal(context).require_kind(PrincipalKind.OPERATOR, action="refund")
        required(request.hold_id, "hold_id", "captured hold to refund")
        transaction, view = await self._ledger.refund(
            request.hold_id, request.amount_micros, request.reason, request.idempotency_key
        )
        if self._funded is not None:
            self._funded(view.account.account_id)
        return billing_pb2.RefundResponse(
            transaction=transaction_to_wire(transaction), account=account_to_wire(view)
        )

    @unary
    async def SetAccountStatus(
        self, request: billing_pb2.SetAccountStatusRequest, context: Context
    ) -> billing_pb2.Account:
        self._auth.principal(context).require_kind(
            PrincipalKind.OPERATOR, action="change account statuses"
        )
        required(request.account_id, "account_id", "account whose status to change")
        status = _STATUSES.get(request.status)
        if status is None:
            raise InvalidArgument("status must be ACTIVE, SUSPENDED or CLOSED.")
        view = await self._ledger.set_account_status(request.account_id, status)
        if self._status_changed is not None and status is not AccountStatus.ACTIVE:
            # Also on a repeat: a service manager that missed the first event hears it.
            self._status_changed(request.account_id, status.value)
        return account_to_wire(view)

    @unary
    async def RedeemVoucher(
        self, request: billing_pb2.RedeemVoucherRequest, context: Context
    ) -> billing_pb2.RedeemVoucherResponse:
        principal = self._auth.principal(context)
        principal.require_account(required(request.account_id, "account_id", "account to fund"))
        redeemed = await self._ledger.redeem_voucher(
            f"{principal.kind.value}:{principal.subject}", request.account_id, request.code
        )
        # The same event as FundAccount's: a session in its final units gets its next slice
        # (again on a repeat: harmless, and it repairs an event the first call lost).
        if self._funded is not None:
            self._funded(request.account_id)
        return billing_pb2.RedeemVoucherResponse(
            transaction=transaction_to_wire(redeemed.transaction),
            account=account_to_wire(redeemed.account),
            already_redeemed=redeemed.already_redeemed,
        )

    @unary
    async def Reserve(
        self, request: billing_pb2.ReserveRequest, context: Context
    ) -> billing_pb2.Hold:
        self._auth.principal(context).require_kind(*MOVERS, action="put holds on accounts")
        required(request.account_id, "account_id", "account to put the hold on")
        ttl = request.ttl.ToTimedelta().total_seconds() if request.HasField("ttl") else None
        if ttl is not None and ttl != int(ttl):
            raise InvalidArgument("ttl is a whole number of seconds.")
        hold = await self._ledger.reserve(
            request.account_id,
            request.amount_micros,
            request.idempotency_key,
            request.reference,
            int(ttl) if ttl is not None else None,
        )
        return hold_to_wire(hold)

    @unary
    async def Capture(
        self, request: billing_pb2.CaptureRequest, context: Context
    ) -> billing_pb2.Hold:
        self._auth.principal(context).require_kind(*MOVERS, action="capture holds")
        required(request.hold_id, "hold_id", "hold to capture")
        hold = await self._ledger.capture(
            request.hold_id,
            request.amount_micros,
            request.idempotency_key,
            usage_from_wire(request.usage) if request.HasField("usage") else None,
        )
        return hold_to_wire(hold)

    @unary
    async def GetHold(
        self, request: billing_pb2.GetHoldRequest, context: Context
    ) -> billing_pb2.Hold:
        principal = self._auth.principal(context)
        principal.require_kind(*MOVERS, PrincipalKind.DEVICE, action="read holds")
        required(request.hold_id, "hold_id", "hold")
        hold = await self._ledger.get_hold(request.hold_id)
        try:
            principal.require_account(hold.account_id)
        except PermissionDenied:
            # Another account's hold looks like no hold: ids must not be probeable.
            raise NotFound(
                f"There is no hold {request.hold_id!r}.", reason="HOLD_NOT_FOUND"
            ) from None
        return hold_to_wire(hold)

    @unary
    async def Release(
        self, request: billing_pb2.ReleaseRequest, context: Context
    ) -> billing_pb2.Hold:
        self._auth.principal(context).require_kind(*MOVERS, action="release holds")
        required(request.hold_id, "hold_id", "hold to release")
        return hold_to_wire(await self._ledger.release(request.hold_id, request.idempotency_key))

    @unary
    async def ListLedgerEntries(
        self, request: billing_pb2.ListLedgerEntriesRequest, context: Context
    ) -> billing_pb2.ListLedgerEntriesResponse:
        principal = self._auth.principal(context)
        principal.require_account(required(request.account_id, "account_id", "account"))
        limit, after = _page(request.page_size, request.page_token)
        try:
            kinds = tuple(
                TransactionKind(
                    billing_pb2.TransactionKind.Name(kind).removeprefix("TRANSACTION_KIND_")
                )
                for kind in request.kinds
            )
        except ValueError as exc:  # UNSPECIFIED, or a number this service does not know
            raise InvalidArgument("kinds names a transaction kind that does not exist.") from exc
        lines = await self._ledger.entries(
            request.account_id,
            after,
            limit + 1,
            kinds,
            from_timestamp(request.start_time, "start_time")
            if request.HasField("start_time")
            else None,
            from_timestamp(request.end_time, "end_time") if request.HasField("end_time") else None,
        )
        response = billing_pb2.ListLedgerEntriesResponse(
            entries=[
                billing_pb2.LedgerEntry(
                    entry_id=line.entry_id,
                    transaction_id=line.transaction_id,
                    kind=billing_pb2.TransactionKind.Value(f"TRANSACTION_KIND_{line.kind.value}"),
                    account_id=line.account_id,
                    ledger_account=billing_pb2.LedgerAccount.Value(
                        f"LEDGER_ACCOUNT_{line.ledger_account.value}"
                    ),
                    amount_micros=line.amount_micros,
                    create_time=timestamp(line.created_at),
                    hold_id=line.hold_id,
                )
                for line in lines[:limit]
            ]
        )
        if len(lines) > limit:
            response.next_page_token = str(lines[limit - 1].entry_id)
        return response

    @unary
    async def GenerateInvoice(
        self, request: billing_pb2.GenerateInvoiceRequest, context: Context
    ) -> billing_pb2.Invoice:
        self._auth.principal(context).require_kind(*MOVERS, action="generate bills")
        required(request.account_id, "account_id", "account to bill")
        if not request.HasField("period_start") or not request.HasField("period_end"):
            raise InvalidArgument("period_start and period_end are both needed.")
        invoice = await self._ledger.invoices.generate(
            request.account_id,
            _given_time(request.period_start, "period_start"),
            _given_time(request.period_end, "period_end"),
            request.idempotency_key,
        )
        return invoice_to_wire(invoice)

    @unary
    async def GetInvoice(
        self, request: billing_pb2.GetInvoiceRequest, context: Context
    ) -> billing_pb2.Invoice:
        principal = self._auth.principal(context)
        required(request.invoice_id, "invoice_id", "bill (its id or its number)")
        invoice = await self._ledger.invoices.get(request.invoice_id)
        try:
            principal.require_account(invoice.account_id)
        except PermissionDenied:
            # Someone else's bill looks like no bill: ids must not be probeable.
            raise NotFound(
                f"There is no invoice {request.invoice_id!r}.", reason="INVOICE_NOT_FOUND"
            ) from None
        return invoice_to_wire(invoice)

    @unary
    async def ListInvoices(
        self, request: billing_pb2.ListInvoicesRequest, context: Context
    ) -> billing_pb2.ListInvoicesResponse:
        principal = self._auth.principal(context)
        required(request.account_id, "account_id", "account whose bills to list")
        try:
            principal.require_account(request.account_id)
        except PermissionDenied:
            # Another account looks like no account: a device cannot probe for ids.
            raise NotFound(
                f"There is no account {request.account_id!r}.", reason="ACCOUNT_NOT_FOUND"
            ) from None
        limit, before = _invoice_page(request.page_size, request.page_token)
        found = await self._ledger.invoices.page(request.account_id, before, limit + 1)
        response = billing_pb2.ListInvoicesResponse(
            invoices=[invoice_to_wire(invoice) for invoice in found[:limit]]
        )
        if len(found) > limit:
            last = found[limit - 1]
            response.next_page_token = f"{last.created_at.isoformat()}|{last.invoice_id}"
        return response

    @unary
    async def ListAccounts(
        self, request: billing_pb2.ListAccountsRequest, context: Context
    ) -> billing_pb2.ListAccountsResponse:
        self._auth.principal(context).require_kind(PrincipalKind.OPERATOR, action="list accounts")
        if request.page_size < 0:
            raise InvalidArgument("page_size cannot be negative.")
        limit = min(request.page_size or 100, 1000)
        views = await self._ledger.list_accounts(request.page_token, limit + 1)
        response = billing_pb2.ListAccountsResponse(
            accounts=[account_to_wire(view) for view in views[:limit]]
        )
        if len(views) > limit:
            response.next_page_token = views[limit - 1].account.account_id
        return response


_KINDS = {
    auth_pb2.PRINCIPAL_KIND_DEVICE: PrincipalKind.DEVICE,
    auth_pb2.PRINCIPAL_KIND_GATEWAY: PrincipalKind.GATEWAY,
    auth_pb2.PRINCIPAL_KIND_OPERATOR: PrincipalKind.OPERATOR,
}
_WIRE_KINDS = {kind: wire for wire, kind in _KINDS.items()}


class AuthServicer(auth_pb2_grpc.AuthServiceServicer):
    database_label = "account database"  # in UNAVAILABLE messages

    def __init__(self, authentication: Authentication, auth: Authenticator) -> None:
        self._authentication = authentication
        self._auth = auth

    @unary
    async def IssueToken(
        self, request: auth_pb2.IssueTokenRequest, context: Context
    ) -> auth_pb2.IssueTokenResponse:
        credential, issued = await self._authentication.issue_token(
            request.client_id, request.client_secret
        )
        return auth_pb2.IssueTokenResponse(
            access_token=issued.token,
            expire_time=timestamp(issued.expires_at),
            kind=_WIRE_KINDS[credential.kind],
            account_id=credential.account_id,
        )

    @unary
    async def CreateCredential(
        self, request: auth_pb2.CreateCredentialRequest, context: Context
    ) -> auth_pb2.CreateCredentialResponse:
        self._auth.principal(context).require_kind(
            PrincipalKind.OPERATOR, action="create credentials"
        )
        kind = _KINDS.get(request.kind)
        if kind is None:
            raise InvalidArgument("kind must be DEVICE, GATEWAY or OPERATOR.")
        credential, secret = await self._authentication.create_credential(
            kind, request.account_id, request.gateway_name
        )
        return auth_pb2.CreateCredentialResponse(
            client_id=credential.client_id,
            client_secret=secret,
            kind=request.kind,
            account_id=credential.account_id,
            gateway_name=credential.gateway_name,
        )
