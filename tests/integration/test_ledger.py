"""Money movements on the real PostgreSQL: idempotency, holds, concurrency, invariants."""

from __future__ import annotations

import asyncio
import uuid

import grpc
import psycopg
import pytest

from meterline.billing.v1 import billing_pb2
from meterline.kernel.db import libpq_dsn
from meterline.kernel.grpc_errors import error_reason
from tests.support.clients import OPERATOR, Stubs, new_account
from tests.support.stores import StoreUrls

pytestmark = pytest.mark.integration


async def _account(api: Stubs, account_id: str) -> billing_pb2.Account:
    return await api.billing.GetAccount(
        billing_pb2.GetAccountRequest(account_id=account_id), metadata=OPERATOR
    )


async def _reserve(api: Stubs, account_id: str, amount: int, key: str | None = None) -> str:
    hold = await api.billing.Reserve(
        billing_pb2.ReserveRequest(
            account_id=account_id, amount_micros=amount, idempotency_key=key or uuid.uuid4().hex
        ),
        metadata=OPERATOR,
    )
    return str(hold.hold_id)


def _ledger_sums(stores: StoreUrls, account_id: str) -> tuple[int, int, list[int]]:
    """(sum of the customer's entries, sum of every entry, each transaction's sum)"""
    with psycopg.connect(libpq_dsn(stores.billing_url)) as conn:
        customer = conn.execute(
            "SELECT coalesce(sum(amount_micros), 0) FROM ledger_entries WHERE account_id = %s "
            "AND ledger_account IN ('CUSTOMER_AVAILABLE', 'CUSTOMER_HELD')",
            (account_id,),
        ).fetchone()
        everything = conn.execute(
            "SELECT coalesce(sum(amount_micros), 0) FROM ledger_entries WHERE account_id = %s",
            (account_id,),
        ).fetchone()
        per_transaction = conn.execute(
            "SELECT sum(amount_micros) FROM ledger_entries WHERE account_id = %s "
            "GROUP BY transaction_id",
            (account_id,),
        ).fetchall()
    assert customer is not None and everything is not None
    return int(customer[0]), int(everything[0]), [int(row[0]) for row in per_transaction]


async def test_funding_twice_with_one_key_funds_once(api: Stubs, stores: StoreUrls) -> None:
    account_id = await new_account(api.billing)
    request = billing_pb2.FundAccountRequest(
        account_id=account_id, amount_micros=1_000_000, idempotency_key=f"fund-{account_id}"
    )
    first = await api.billing.FundAccount(request, metadata=OPERATOR)
    again = await api.billing.FundAccount(request, metadata=OPERATOR)
    assert again.transaction.transaction_id == first.transaction.transaction_id
    assert again.account.balance_micros == 1_000_000

    changed = billing_pb2.FundAccountRequest(
        account_id=account_id, amount_micros=2_000_000, idempotency_key=f"fund-{account_id}"
    )
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await api.billing.FundAccount(changed, metadata=OPERATOR)
    assert raised.value.code() is grpc.StatusCode.ALREADY_EXISTS
    assert error_reason(raised.value) == "IDEMPOTENCY_KEY_REUSED"
    assert (await _account(api, account_id)).balance_micros == 1_000_000
    customer, _, transactions = _ledger_sums(stores, account_id)
    assert customer == 1_000_000
    assert transactions == [0]


async def test_concurrent_repeats_of_one_key_move_money_once(api: Stubs) -> None:
    account_id = await new_account(api.billing)
    request = billing_pb2.FundAccountRequest(
        account_id=account_id, amount_micros=300_000, idempotency_key=f"burst-{account_id}"
    )
    results = await asyncio.gather(
        *(api.billing.FundAccount(request, metadata=OPERATOR) for _ in range(10))
    )
    assert len({result.transaction.transaction_id for result in results}) == 1
    assert (await _account(api, account_id)).balance_micros == 300_000


@pytest.mark.parametrize(
    ("amount", "key", "words"),
    [(-5, "k", "more than 0"), (0, "k", "more than 0"), (5, "", "idempotency_key is missing")],
)
async def test_bad_funding_is_refused(api: Stubs, amount: int, key: str, words: str) -> None:
    account_id = await new_account(api.billing)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await api.billing.FundAccount(
            billing_pb2.FundAccountRequest(
                account_id=account_id, amount_micros=amount, idempotency_key=key
            ),
            metadata=OPERATOR,
        )
    assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert words in (raised.value.details() or "")
    assert (await _account(api, account_id)).balance_micros == 0


async def test_fifty_concurrent_reserves_never_overdraw(api: Stubs, stores: StoreUrls) -> None:
    account_id = await new_account(api.billing, funded_micros=1_000_000)
    outcomes = await asyncio.gather(
        *(_reserve(api, account_id, 30_000) for _ in range(50)), return_exceptions=True
    )
    held = [outcome for outcome in outcomes if isinstance(outcome, str)]
    refused = [outcome for outcome in outcomes if isinstance(outcome, grpc.aio.AioRpcError)]
    assert len(held) == 33 and len(refused) == 17
    assert all(error_reason(error) == "INSUFFICIENT_FUNDS" for error in refused)
    account = await _account(api, account_id)
    assert account.available_micros == 1_000_000 - 33 * 30_000
    assert account.available_micros >= 0
    assert account.held_micros == 33 * 30_000
    customer, _, transactions = _ledger_sums(stores, account_id)
    assert customer == account.balance_micros == 1_000_000
    assert all(total == 0 for total in transactions)


async def test_concurrent_reserves_respect_a_credit_limit(api: Stubs) -> None:
    account_id = await new_account(api.billing, credit_limit_micros=500_000)
    outcomes = await asyncio.gather(
        *(_reserve(api, account_id, 30_000) for _ in range(50)), return_exceptions=True
    )
    assert sum(isinstance(outcome, str) for outcome in outcomes) == 16
    account = await _account(api, account_id)
    assert account.available_micros == -16 * 30_000
    assert account.available_micros >= -500_000


async def test_a_hold_is_settled_once(api: Stubs, stores: StoreUrls) -> None:
    account_id = await new_account(api.billing, funded_micros=1_000_000)
    hold_id = await _reserve(api, account_id, 400_000)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await api.billing.Capture(
            billing_pb2.CaptureRequest(
                hold_id=hold_id, amount_micros=400_001, idempotency_key="c0"
            ),
            metadata=OPERATOR,
        )
    assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT

    capture = billing_pb2.CaptureRequest(
        hold_id=hold_id, amount_micros=250_000, idempotency_key=f"capture-{hold_id}"
    )
    hold = await api.billing.Capture(capture, metadata=OPERATOR)
    assert (hold.captured_micros, hold.released_micros) == (250_000, 150_000)
    assert hold.status == billing_pb2.HOLD_STATUS_CAPTURED
    repeat = await api.billing.Capture(capture, metadata=OPERATOR)
    assert repeat.captured_micros == 250_000

    for second in (
        api.billing.Capture(
            billing_pb2.CaptureRequest(hold_id=hold_id, amount_micros=1, idempotency_key="c2"),
            metadata=OPERATOR,
        ),
        api.billing.Release(
            billing_pb2.ReleaseRequest(hold_id=hold_id, idempotency_key="r2"), metadata=OPERATOR
        ),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await second
        assert raised.value.code() is grpc.StatusCode.FAILED_PRECONDITION
        assert error_reason(raised.value) == "HOLD_CLOSED"

    account = await _account(api, account_id)
    assert (account.balance_micros, account.available_micros) == (750_000, 750_000)
    customer, everything, transactions = _ledger_sums(stores, account_id)
    assert customer == 750_000
    assert everything == 0  # funding, holds and revenue balance out
    assert all(total == 0 for total in transactions)


async def test_release_gives_everything_back(api: Stubs) -> None:
    account_id = await new_account(api.billing, funded_micros=100_000)
    hold_id = await _reserve(api, account_id, 100_000)
    assert (await _account(api, account_id)).available_micros == 0
    hold = await api.billing.Release(
        billing_pb2.ReleaseRequest(hold_id=hold_id, idempotency_key=f"release-{hold_id}"),
        metadata=OPERATOR,
    )
    assert hold.released_micros == 100_000
    account = await _account(api, account_id)
    assert (account.available_micros, account.held_micros) == (100_000, 0)


async def test_the_ledger_is_append_only(api: Stubs, stores: StoreUrls) -> None:
    account_id = await new_account(api.billing, funded_micros=10)
    with (
        psycopg.connect(libpq_dsn(stores.billing_url)) as conn,
        pytest.raises(psycopg.errors.RaiseException, match="append-only"),
    ):
        conn.execute(
            "UPDATE ledger_entries SET amount_micros = 0 WHERE account_id = %s", (account_id,)
        )
    with (
        psycopg.connect(libpq_dsn(stores.billing_url)) as conn,
        pytest.raises(psycopg.errors.RaiseException, match="append-only"),
    ):
        conn.execute("DELETE FROM ledger_entries WHERE account_id = %s", (account_id,))
    assert (await _account(api, account_id)).balance_micros == 10


async def test_a_bill_is_the_captured_charges_of_its_period(api: Stubs) -> None:
    from datetime import UTC, datetime, timedelta

    from google.protobuf.timestamp_pb2 import Timestamp

    account_id = await new_account(api.billing, funded_micros=1_000_000)
    for amount in (120_000, 80_000):
        hold_id = await _reserve(api, account_id, 200_000)
        await api.billing.Capture(
            billing_pb2.CaptureRequest(
                hold_id=hold_id, amount_micros=amount, idempotency_key=f"cap-{hold_id}"
            ),
            metadata=OPERATOR,
        )
    start, end = Timestamp(), Timestamp()
    start.FromDatetime(datetime.now(UTC) - timedelta(hours=1))
    end.FromDatetime(datetime.now(UTC) + timedelta(hours=1))
    request = billing_pb2.GenerateInvoiceRequest(
        account_id=account_id,
        period_start=start,
        period_end=end,
        idempotency_key=f"bill-{account_id}",
    )
    invoice = await api.billing.GenerateInvoice(request, metadata=OPERATOR)
    assert invoice.total_micros == 200_000
    assert sorted(line.amount_micros for line in invoice.lines) == [80_000, 120_000]
    assert sum(line.amount_micros for line in invoice.lines) == invoice.total_micros
    again = await api.billing.GenerateInvoice(request, metadata=OPERATOR)
    assert again.invoice_id == invoice.invoice_id
    fetched = await api.billing.GetInvoice(
        billing_pb2.GetInvoiceRequest(invoice_id=invoice.invoice_id), metadata=OPERATOR
    )
    assert fetched.total_micros == 200_000
    account = await _account(api, account_id)
    assert account.balance_micros == 1_000_000 - invoice.total_micros
