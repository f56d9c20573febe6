"""Account statuses and postpaid accounts on the real PostgreSQL: a suspended account
cannot take holds, be funded or redeem vouchers until it is reactivated; only an account
with a zero balance and no open holds is closed, for good; an account with a credit limit
is postpaid, and its available may go down to minus the limit."""

from __future__ import annotations

import uuid

import grpc
import pytest

from meterline.billing.v1 import billing_pb2
from meterline.kernel.grpc_errors import error_reason
from tests.support.clients import OPERATOR, Stubs, device, new_account

pytestmark = pytest.mark.integration


async def _status(
    api: Stubs, account_id: str, status: billing_pb2.AccountStatus.ValueType
) -> billing_pb2.Account:
    return await api.billing.SetAccountStatus(
        billing_pb2.SetAccountStatusRequest(account_id=account_id, status=status),
        metadata=OPERATOR,
    )


async def _reason(call: object) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call  # type: ignore[misc]
    return raised.value.code(), error_reason(raised.value) or ""


def _fund(account_id: str, amount: int, key: str | None = None) -> billing_pb2.FundAccountRequest:
    return billing_pb2.FundAccountRequest(
        account_id=account_id, amount_micros=amount, idempotency_key=key or uuid.uuid4().hex
    )


def _reserve(account_id: str, amount: int) -> billing_pb2.ReserveRequest:
    return billing_pb2.ReserveRequest(
        account_id=account_id, amount_micros=amount, idempotency_key=uuid.uuid4().hex
    )


async def test_a_suspended_account_takes_no_holds_fundings_or_vouchers(api: Stubs) -> None:
    account_id = await new_account(api.billing)
    first = _fund(account_id, 1_000_000)
    funded = await api.billing.FundAccount(first, metadata=OPERATOR)
    vouchers = await api.billing.CreateVouchers(
        billing_pb2.CreateVouchersRequest(count=1, amount_micros=1, currency="EUR"),
        metadata=OPERATOR,
    )

    suspended = await _status(api, account_id, billing_pb2.ACCOUNT_STATUS_SUSPENDED)
    assert suspended.status == billing_pb2.ACCOUNT_STATUS_SUSPENDED
    refused = (grpc.StatusCode.FAILED_PRECONDITION, "ACCOUNT_SUSPENDED")
    assert await _reason(api.billing.FundAccount(_fund(account_id, 1), metadata=OPERATOR)) == (
        refused
    )
    assert await _reason(api.billing.Reserve(_reserve(account_id, 1), metadata=OPERATOR)) == (
        refused
    )
    redeem = billing_pb2.RedeemVoucherRequest(account_id=account_id, code=vouchers.codes[0])
    assert await _reason(api.billing.RedeemVoucher(redeem, metadata=OPERATOR)) == refused
    # A retry of a funding made before still answers its first result.
    again = await api.billing.FundAccount(first, metadata=OPERATOR)
    assert again.transaction.transaction_id == funded.transaction.transaction_id
    assert again.account.balance_micros == 1_000_000
    # Suspending twice is a safe retry.
    await _status(api, account_id, billing_pb2.ACCOUNT_STATUS_SUSPENDED)

    active = await _status(api, account_id, billing_pb2.ACCOUNT_STATUS_ACTIVE)
    assert active.status == billing_pb2.ACCOUNT_STATUS_ACTIVE
    await api.billing.Reserve(_reserve(account_id, 1), metadata=OPERATOR)
    await api.billing.RedeemVoucher(redeem, metadata=OPERATOR)


async def test_only_an_empty_account_is_closed_and_it_stays_closed(api: Stubs) -> None:
    account_id = await new_account(api.billing, funded_micros=500)
    not_zero = (grpc.StatusCode.FAILED_PRECONDITION, "BALANCE_NOT_ZERO")
    assert await _reason(_status(api, account_id, billing_pb2.ACCOUNT_STATUS_CLOSED)) == not_zero
    hold = await api.billing.Reserve(_reserve(account_id, 500), metadata=OPERATOR)
    await api.billing.Capture(
        billing_pb2.CaptureRequest(
            hold_id=hold.hold_id, amount_micros=500, idempotency_key=uuid.uuid4().hex
        ),
        metadata=OPERATOR,
    )
    closed = await _status(api, account_id, billing_pb2.ACCOUNT_STATUS_CLOSED)
    assert closed.status == billing_pb2.ACCOUNT_STATUS_CLOSED and closed.balance_micros == 0

    final = (grpc.StatusCode.FAILED_PRECONDITION, "ACCOUNT_CLOSED")
    assert await _reason(_status(api, account_id, billing_pb2.ACCOUNT_STATUS_ACTIVE)) == final
    assert await _reason(api.billing.FundAccount(_fund(account_id, 1), metadata=OPERATOR)) == (
        final
    )
    assert await _reason(api.billing.Reserve(_reserve(account_id, 1), metadata=OPERATOR)) == (final)


async def test_only_operators_change_statuses(api: Stubs) -> None:
    account_id = await new_account(api.billing)
    request = billing_pb2.SetAccountStatusRequest(
        account_id=account_id, status=billing_pb2.ACCOUNT_STATUS_SUSPENDED
    )
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await api.billing.SetAccountStatus(request, metadata=device(account_id))
    assert raised.value.code() is grpc.StatusCode.PERMISSION_DENIED
    unset = billing_pb2.SetAccountStatusRequest(account_id=account_id)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await api.billing.SetAccountStatus(unset, metadata=OPERATOR)
    assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    missing = billing_pb2.SetAccountStatusRequest(
        account_id="acc_nobody", status=billing_pb2.ACCOUNT_STATUS_SUSPENDED
    )
    assert await _reason(api.billing.SetAccountStatus(missing, metadata=OPERATOR)) == (
        grpc.StatusCode.NOT_FOUND,
        "ACCOUNT_NOT_FOUND",
    )


async def test_a_postpaid_account_is_shown_apart_and_may_go_to_minus_its_limit(
    api: Stubs,
) -> None:
    prepaid = await new_account(api.billing, funded_micros=100)
    postpaid = await new_account(api.billing, credit_limit_micros=1_000)
    shown = {
        account_id: await api.billing.GetAccount(
            billing_pb2.GetAccountRequest(account_id=account_id), metadata=OPERATOR
        )
        for account_id in (prepaid, postpaid)
    }
    assert (shown[prepaid].postpaid, shown[postpaid].postpaid) == (False, True)
    await api.billing.Reserve(_reserve(postpaid, 1_000), metadata=OPERATOR)
    after = await api.billing.GetAccount(
        billing_pb2.GetAccountRequest(account_id=postpaid), metadata=OPERATOR
    )
    assert after.available_micros == -1_000
    assert await _reason(api.billing.Reserve(_reserve(postpaid, 1), metadata=OPERATOR)) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "INSUFFICIENT_FUNDS",
    )
