"""Adjustments and refunds by an operator on the real PostgreSQL: new ledger transactions
(never updates) with their reason kept, idempotent by key; a prepaid account never
adjusted below zero; a hold never refunded beyond what it captured, under concurrency."""

from __future__ import annotations

import asyncio
import uuid

import grpc
import psycopg
import pytest

from meterline.billing.v1 import billing_pb2
from meterline.kernel.db import libpq_dsn
from meterline.kernel.grpc_errors import error_reason
from tests.support.clients import OPERATOR, Stubs, device, new_account
from tests.support.stores import StoreUrls

pytestmark = pytest.mark.integration


def _adjust(
    account_id: str, amount: int, reason: str = "goodwill", key: str = ""
) -> billing_pb2.AdjustAccountRequest:
    return billing_pb2.AdjustAccountRequest(
        account_id=account_id,
        amount_micros=amount,
        reason=reason,
        idempotency_key=key or uuid.uuid4().hex,
    )


def _refund(hold_id: str, amount: int, key: str = "") -> billing_pb2.RefundRequest:
    return billing_pb2.RefundRequest(
        hold_id=hold_id,
        amount_micros=amount,
        reason="dropped call",
        idempotency_key=key or uuid.uuid4().hex,
    )


async def _reason(call: object) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call  # type: ignore[misc]
    return raised.value.code(), error_reason(raised.value) or ""


async def _captured_hold(api: Stubs, account_id: str, held: int, captured: int) -> str:
    hold = await api.billing.Reserve(
        billing_pb2.ReserveRequest(
            account_id=account_id, amount_micros=held, idempotency_key=uuid.uuid4().hex
        ),
        metadata=OPERATOR,
    )
    await api.billing.Capture(
        billing_pb2.CaptureRequest(
            hold_id=hold.hold_id, amount_micros=captured, idempotency_key=uuid.uuid4().hex
        ),
        metadata=OPERATOR,
    )
    return str(hold.hold_id)


def _sums(stores: StoreUrls, account_id: str) -> list[tuple[str, int, str]]:
    """(kind, each transaction's entries' sum, reference) of the ADJUST and REFUND ones."""
    with psycopg.connect(libpq_dsn(stores.billing_url)) as conn:
        rows = conn.execute(
            "SELECT t.kind, sum(e.amount_micros), t.reference FROM ledger_transactions t "
            "JOIN ledger_entries e USING (transaction_id) WHERE t.account_id = %s "
            "AND t.kind IN ('ADJUST', 'REFUND') GROUP BY t.transaction_id, t.kind, t.reference "
            "ORDER BY t.created_at",
            (account_id,),
        ).fetchall()
    return [(row[0], int(row[1]), row[2]) for row in rows]


async def test_adjustments_move_the_balance_both_ways_with_their_reason(
    api: Stubs, stores: StoreUrls
) -> None:
    account_id = await new_account(api.billing, funded_micros=1_000)
    request = _adjust(account_id, 500, "compensation for outage 2026-11-30")
    first = await api.billing.AdjustAccount(request, metadata=OPERATOR)
    assert first.account.balance_micros == 1_500
    assert first.transaction.kind == billing_pb2.TRANSACTION_KIND_ADJUST
    assert first.transaction.reference == "compensation for outage 2026-11-30"
    again = await api.billing.AdjustAccount(request, metadata=OPERATOR)
    assert again.transaction.transaction_id == first.transaction.transaction_id
    assert again.account.balance_micros == 1_500

    down = await api.billing.AdjustAccount(
        _adjust(account_id, -1_500, "double top-up"), metadata=OPERATOR
    )
    assert down.account.balance_micros == 0 and down.transaction.amount_micros == -1_500
    # A prepaid account is never adjusted below zero.
    assert await _reason(api.billing.AdjustAccount(_adjust(account_id, -1), metadata=OPERATOR)) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "INSUFFICIENT_FUNDS",
    )
    assert _sums(stores, account_id) == [
        ("ADJUST", 0, "compensation for outage 2026-11-30"),
        ("ADJUST", 0, "double top-up"),
    ]
    # A postpaid one down to minus its limit.
    postpaid = await new_account(api.billing, credit_limit_micros=300)
    owed = await api.billing.AdjustAccount(_adjust(postpaid, -300), metadata=OPERATOR)
    assert owed.account.available_micros == -300

    for bad in (
        _adjust(account_id, 0),
        _adjust(account_id, 5, reason=" "),
        _adjust(account_id, 5, reason="x" * 201),
    ):
        code, _ = await _reason(api.billing.AdjustAccount(bad, metadata=OPERATOR))
        assert code is grpc.StatusCode.INVALID_ARGUMENT
    code, _ = await _reason(
        api.billing.AdjustAccount(_adjust(account_id, 5), metadata=device(account_id))
    )
    assert code is grpc.StatusCode.PERMISSION_DENIED


async def test_a_refund_never_gives_back_more_than_was_captured(
    api: Stubs, stores: StoreUrls
) -> None:
    account_id = await new_account(api.billing, funded_micros=10_000)
    hold_id = await _captured_hold(api, account_id, held=5_000, captured=3_000)

    # Twenty concurrent refunds of 200 against a capture of 3,000: fifteen at most.
    results = await asyncio.gather(
        *(api.billing.Refund(_refund(hold_id, 200), metadata=OPERATOR) for _ in range(20)),
        return_exceptions=True,
    )
    made = [result for result in results if isinstance(result, billing_pb2.RefundResponse)]
    refused = [result for result in results if isinstance(result, grpc.aio.AioRpcError)]
    assert len(made) == 15 and len(refused) == 5
    assert {error_reason(error) for error in refused} == {"REFUND_TOO_LARGE"}
    account = await api.billing.GetAccount(
        billing_pb2.GetAccountRequest(account_id=account_id), metadata=OPERATOR
    )
    assert account.balance_micros == 10_000  # 10,000 - 3,000 captured + 3,000 refunded
    assert all(row[:2] == ("REFUND", 0) for row in _sums(stores, account_id))

    # A retry returns the first result, even now that nothing more can be refunded.
    request = _refund(hold_id, 1, key=made[0].transaction.idempotency_key)
    request.amount_micros = made[0].transaction.amount_micros
    again = await api.billing.Refund(request, metadata=OPERATOR)
    assert again.transaction.transaction_id == made[0].transaction.transaction_id


async def test_only_captured_holds_are_refunded(api: Stubs) -> None:
    account_id = await new_account(api.billing, funded_micros=1_000)
    open_hold = await api.billing.Reserve(
        billing_pb2.ReserveRequest(
            account_id=account_id, amount_micros=100, idempotency_key=uuid.uuid4().hex
        ),
        metadata=OPERATOR,
    )
    assert await _reason(api.billing.Refund(_refund(open_hold.hold_id, 1), metadata=OPERATOR)) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "HOLD_NOT_CAPTURED",
    )
    assert await _reason(api.billing.Refund(_refund("hold_nothing", 1), metadata=OPERATOR)) == (
        grpc.StatusCode.NOT_FOUND,
        "HOLD_NOT_FOUND",
    )
    code, _ = await _reason(api.billing.Refund(_refund(open_hold.hold_id, 0), metadata=OPERATOR))
    assert code is grpc.StatusCode.INVALID_ARGUMENT
