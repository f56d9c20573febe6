"""A call that names no account, hold or bill (the billing manager's calls, and
WatchAccount) is the caller's mistake: INVALID_ARGUMENT with a sentence naming the
missing field, never NOT_FOUND for an empty name (which reads as "that account does not
exist"), nor a stream that waits forever; and nothing moves."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import pytest
from google.protobuf import timestamp_pb2

from meterline.billing.v1 import billing_pb2
from meterline.service.v1 import service_pb2
from tests.support.clients import OPERATOR, Stubs, new_account

pytestmark = pytest.mark.integration

START = timestamp_pb2.Timestamp(seconds=1_700_000_000)
END = timestamp_pb2.Timestamp(seconds=1_700_086_400)


async def _first_event(api: Stubs) -> Any:
    call = api.service.WatchAccount(
        service_pb2.WatchAccountRequest(), metadata=OPERATOR, timeout=10
    )
    async for event in call:
        return event
    return None


CALLS: dict[str, tuple[str, Callable[[Stubs], Awaitable[Any]]]] = {
    "GetAccount": ("account_id", lambda api: api.billing.GetAccount(
        billing_pb2.GetAccountRequest(), metadata=OPERATOR)),
    "FundAccount": ("account_id", lambda api: api.billing.FundAccount(
        billing_pb2.FundAccountRequest(amount_micros=1, idempotency_key="k-missing-fund"),
        metadata=OPERATOR)),
    "Reserve": ("account_id", lambda api: api.billing.Reserve(
        billing_pb2.ReserveRequest(amount_micros=1, idempotency_key="k-missing-reserve"),
        metadata=OPERATOR)),
    "Capture": ("hold_id", lambda api: api.billing.Capture(
        billing_pb2.CaptureRequest(amount_micros=1, idempotency_key="k-missing-capture"),
        metadata=OPERATOR)),
    "Release": ("hold_id", lambda api: api.billing.Release(
        billing_pb2.ReleaseRequest(idempotency_key="k-missing-release"), metadata=OPERATOR)),
    "GetHold": ("hold_id", lambda api: api.billing.GetHold(
        billing_pb2.GetHoldRequest(), metadata=OPERATOR)),
    "ListLedgerEntries": ("account_id", lambda api: api.billing.ListLedgerEntries(
        billing_pb2.ListLedgerEntriesRequest(), metadata=OPERATOR)),
    "GenerateInvoice": ("account_id", lambda api: api.billing.GenerateInvoice(
        billing_pb2.GenerateInvoiceRequest(period_start=START, period_end=END),
        metadata=OPERATOR)),
    "GetInvoice": ("invoice_id", lambda api: api.billing.GetInvoice(
        billing_pb2.GetInvoiceRequest(), metadata=OPERATOR)),
    "ListInvoices": ("account_id", lambda api: api.billing.ListInvoices(
        billing_pb2.ListInvoicesRequest(), metadata=OPERATOR)),
    "RedeemVoucher": ("account_id", lambda api: api.billing.RedeemVoucher(
        billing_pb2.RedeemVoucherRequest(code="ABCD-EFGH-JKLM-NPQR"), metadata=OPERATOR)),
    "SetAccountStatus": ("account_id", lambda api: api.billing.SetAccountStatus(
        billing_pb2.SetAccountStatusRequest(status=billing_pb2.ACCOUNT_STATUS_SUSPENDED),
        metadata=OPERATOR)),
    "AdjustAccount": ("account_id", lambda api: api.billing.AdjustAccount(
        billing_pb2.AdjustAccountRequest(
            amount_micros=1, reason="goodwill", idempotency_key="k-missing-adjust"),
        metadata=OPERATOR)),
    "Refund": ("hold_id", lambda api: api.billing.Refund(
        billing_pb2.RefundRequest(
            amount_micros=1, reason="goodwill", idempotency_key="k-missing-refund"),
        metadata=OPERATOR)),
    "WatchAccount": ("account_id", lambda api: _first_event(api)),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(CALLS))
async def test_a_call_without_its_id_is_invalid_argument(api: Stubs, name: str) -> None:
    field, call = CALLS[name]
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await call(api)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (
        refused.value.code(),
        refused.value.details(),
    )
    assert field in (refused.value.details() or "")


async def test_a_refused_movement_keeps_its_key_unused(api: Stubs) -> None:
    """The refusal recorded nothing: the same idempotency key then funds a real account."""
    key = f"k-missing-{uuid.uuid4().hex}"
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await api.billing.FundAccount(
            billing_pb2.FundAccountRequest(amount_micros=250_000, idempotency_key=key),
            metadata=OPERATOR,
        )
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    account_id = await new_account(api.billing, 1_000_000)
    funded = await api.billing.FundAccount(
        billing_pb2.FundAccountRequest(
            account_id=account_id, amount_micros=250_000, idempotency_key=key
        ),
        metadata=OPERATOR,
    )
    assert funded.account.balance_micros == 1_250_000
