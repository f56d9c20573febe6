"""Prepaid vouchers on the real PostgreSQL through the billing manager: made by an
operator, redeemed by a device on its own account exactly once under concurrency, refused
with a reason (and nothing changed) when used, expired, unknown or in another currency,
guessing throttled per credential; and FundAccount idempotent by a payment reference."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import uuid
from datetime import UTC, datetime, timedelta

import grpc
import psycopg
import pytest
from redis.asyncio import Redis

from billing_manager.domain.vouchers import normalize
from meterline.billing.v1 import billing_pb2
from meterline.kernel.account_events import account_funded_channel
from meterline.kernel.db import libpq_dsn
from meterline.kernel.grpc_errors import error_reason
from meterline.kernel.principals import Principal, PrincipalKind
from meterline.kernel.wire import timestamp
from tests.support.clients import OPERATOR, Stubs, new_account
from tests.support.stack import VOUCHER_SECRET, metadata, token_for
from tests.support.stores import StoreUrls

pytestmark = pytest.mark.integration

Metadata = tuple[tuple[str, str], ...]


def _device(account_id: str) -> Metadata:
    """A device credential of its own, so that its refused codes count for it alone."""
    subject = f"dev-{uuid.uuid4().hex[:12]}"
    return metadata(token_for(Principal(PrincipalKind.DEVICE, subject, account_id=account_id)))


async def _vouchers(
    api: Stubs,
    count: int = 1,
    amount: int = 10_000_000,
    currency: str = "EUR",
    expires: datetime | None = None,
) -> billing_pb2.CreateVouchersResponse:
    request = billing_pb2.CreateVouchersRequest(
        count=count, amount_micros=amount, currency=currency
    )
    if expires is not None:
        request.expire_time.CopyFrom(timestamp(expires))
    return await api.billing.CreateVouchers(request, metadata=OPERATOR)


async def _redeem(
    api: Stubs, account_id: str, code: str, who: Metadata
) -> billing_pb2.RedeemVoucherResponse:
    return await api.billing.RedeemVoucher(
        billing_pb2.RedeemVoucherRequest(account_id=account_id, code=code), metadata=who
    )


async def _balance(api: Stubs, account_id: str) -> int:
    account = await api.billing.GetAccount(
        billing_pb2.GetAccountRequest(account_id=account_id), metadata=OPERATOR
    )
    return int(account.balance_micros)


async def _refused(call: object) -> tuple[grpc.StatusCode, str, str]:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call  # type: ignore[misc]
    error = raised.value
    return error.code(), error_reason(error) or "", error.details() or ""


def _redeemed(stores: StoreUrls, batch_id: str) -> list[tuple[str | None, str | None]]:
    with psycopg.connect(libpq_dsn(stores.billing_url)) as conn:
        rows = conn.execute(
            "SELECT account_id, transaction_id FROM vouchers WHERE batch_id = %s", (batch_id,)
        ).fetchall()
    return [(row[0], row[1]) for row in rows]


async def test_a_device_redeems_a_voucher_on_its_own_account_once(
    api: Stubs, stores: StoreUrls
) -> None:
    batch = await _vouchers(api, count=3, amount=10_000_000)
    assert len(batch.codes) == 3 and len(set(batch.codes)) == 3
    assert all(len(code) == 19 and code.count("-") == 3 for code in batch.codes)
    account_id = await new_account(api.billing)
    device = _device(account_id)

    redis = Redis.from_url(stores.redis_url)
    pubsub = redis.pubsub()
    await pubsub.subscribe(account_funded_channel(stores.redis_prefix, account_id))
    try:
        await pubsub.get_message(timeout=1.0)  # the subscription's confirmation
        # As typed by a person: lower case, spaces for dashes.
        typed = batch.codes[0].lower().replace("-", " ")
        first = await _redeem(api, account_id, typed, device)
        assert first.account.balance_micros == 10_000_000
        assert not first.already_redeemed
        assert first.transaction.kind == billing_pb2.TRANSACTION_KIND_FUND
        assert batch.codes[0] not in first.transaction.idempotency_key
        # The same event as FundAccount's, for the service managers.
        event = None
        for _ in range(20):
            event = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.5)
            if event is not None:
                break
        assert event is not None and event["data"] == account_id.encode()
    finally:
        await pubsub.aclose()  # type: ignore[no-untyped-call]
        await redis.aclose()

    # A retry (the answer was lost) returns the first result and funds nothing more.
    again = await _redeem(api, account_id, batch.codes[0], device)
    assert again.transaction.transaction_id == first.transaction.transaction_id
    assert again.already_redeemed  # so a person can be told nothing was added
    assert again.account.balance_micros == 10_000_000
    assert await _balance(api, account_id) == 10_000_000

    # Anyone else: used.
    other = await new_account(api.billing)
    code, reason, words = await _refused(_redeem(api, other, batch.codes[0], _device(other)))
    assert (code, reason) == (grpc.StatusCode.FAILED_PRECONDITION, "VOUCHER_USED")
    assert "already redeemed" in words
    assert await _balance(api, other) == 0

    # An operator may redeem on any account; a device only on its own.
    operator = await _redeem(api, other, batch.codes[1], OPERATOR)
    assert operator.account.balance_micros == 10_000_000
    code, _, _ = await _refused(_redeem(api, other, batch.codes[2], device))
    assert code is grpc.StatusCode.PERMISSION_DENIED
    assert sorted(row for row in _redeemed(stores, batch.batch_id) if row[0]) == sorted(
        [
            (account_id, first.transaction.transaction_id),
            (other, operator.transaction.transaction_id),
        ]
    )


async def test_only_a_keyed_hash_of_each_code_is_stored(api: Stubs, stores: StoreUrls) -> None:
    batch = await _vouchers(api, count=2)
    with psycopg.connect(libpq_dsn(stores.billing_url)) as conn:
        rows = conn.execute(
            "SELECT v::text, code_hash FROM vouchers v WHERE batch_id = %s ORDER BY code_hash",
            (batch.batch_id,),
        ).fetchall()
    expected = sorted(
        hmac.new(VOUCHER_SECRET.encode(), normalize(code).encode(), hashlib.sha256).hexdigest()
        for code in batch.codes
    )
    assert [row[1] for row in rows] == expected
    for code in batch.codes:
        assert all(normalize(code) not in row[0] and code not in row[0] for row in rows)


async def test_fifty_concurrent_redemptions_of_one_code_fund_once(
    api: Stubs, stores: StoreUrls
) -> None:
    batch = await _vouchers(api, amount=5_000_000)
    accounts = [await new_account(api.billing) for _ in range(5)]

    async def attempt(i: int) -> str:
        # A credential each (ten devices per account): a device's refused codes would
        # otherwise throttle it before all its tries raced.
        account_id = accounts[i % len(accounts)]
        try:
            answer = await _redeem(api, account_id, batch.codes[0], _device(account_id))
        except grpc.aio.AioRpcError as error:
            assert error_reason(error) == "VOUCHER_USED", error.details()
            return ""
        return str(answer.transaction.transaction_id)

    results = await asyncio.gather(*(attempt(i) for i in range(50)))
    won = {result for result in results if result}
    assert len(won) == 1  # one transaction: the repeats on the winner's account share it
    balances = [await _balance(api, account_id) for account_id in accounts]
    assert sorted(balances) == [0, 0, 0, 0, 5_000_000]
    winner = accounts[balances.index(5_000_000)]
    assert _redeemed(stores, batch.batch_id) == [(winner, won.pop())]


async def test_refused_redemptions_say_why_and_change_nothing(
    api: Stubs, stores: StoreUrls
) -> None:
    account_id = await new_account(api.billing)
    device = _device(account_id)
    expired = await _vouchers(api, expires=datetime.now(UTC) + timedelta(hours=1))
    with psycopg.connect(libpq_dsn(stores.billing_url)) as conn:
        conn.execute(
            "UPDATE vouchers SET expires_at = now() - interval '1 second' WHERE batch_id = %s",
            (expired.batch_id,),
        )
    dollars = await _vouchers(api, currency="USD")
    unknown = "2345-6789-ABCD-EFGH"

    cases = [
        (expired.codes[0], grpc.StatusCode.FAILED_PRECONDITION, "VOUCHER_EXPIRED", "expired"),
        (dollars.codes[0], grpc.StatusCode.FAILED_PRECONDITION, "CURRENCY_MISMATCH", "currency"),
        (unknown, grpc.StatusCode.NOT_FOUND, "VOUCHER_UNKNOWN", "no such voucher"),
        ("not-a-code", grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT", "voucher code"),
    ]
    for code_text, status, reason, words in cases:
        found = await _refused(_redeem(api, account_id, code_text, device))
        assert found[:2] == (status, reason), found
        assert words in found[2]
    assert await _balance(api, account_id) == 0
    assert _redeemed(stores, expired.batch_id) == [(None, None)]
    assert _redeemed(stores, dollars.batch_id) == [(None, None)]

    # A suspended account cannot be topped up; the voucher stays unused.
    good = await _vouchers(api)
    with psycopg.connect(libpq_dsn(stores.billing_url)) as conn:
        conn.execute(
            "UPDATE accounts SET status = 'SUSPENDED' WHERE account_id = %s", (account_id,)
        )
    found = await _refused(_redeem(api, account_id, good.codes[0], OPERATOR))
    assert found[:2] == (grpc.StatusCode.FAILED_PRECONDITION, "ACCOUNT_SUSPENDED")
    assert _redeemed(stores, good.batch_id) == [(None, None)]


async def test_guessing_codes_is_throttled_per_credential(api: Stubs) -> None:
    account_id = await new_account(api.billing)
    guesser = _device(account_id)
    batch = await _vouchers(api)
    for i in range(5):
        found = await _refused(
            _redeem(api, account_id, "2345-6789-ABCD-" + "XYZW"[i % 4] * 3 + "23456"[i], guesser)
        )
        assert found[1] == "VOUCHER_UNKNOWN"
    # Over the limit: even a good code waits.
    code, reason, words = await _refused(_redeem(api, account_id, batch.codes[0], guesser))
    assert (code, reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "VOUCHER_ATTEMPTS_EXHAUSTED")
    assert "try again in" in words
    assert await _balance(api, account_id) == 0
    # Another credential of the same account is not held back by it.
    redeemed = await _redeem(api, account_id, batch.codes[0], _device(account_id))
    assert redeemed.account.balance_micros == 10_000_000


async def test_only_operators_make_vouchers_and_bad_batches_are_refused(api: Stubs) -> None:
    account_id = await new_account(api.billing)
    request = billing_pb2.CreateVouchersRequest(count=1, amount_micros=1, currency="EUR")
    code, _, _ = await _refused(api.billing.CreateVouchers(request, metadata=_device(account_id)))
    assert code is grpc.StatusCode.PERMISSION_DENIED
    for bad in (
        billing_pb2.CreateVouchersRequest(count=0, amount_micros=1, currency="EUR"),
        billing_pb2.CreateVouchersRequest(count=10_001, amount_micros=1, currency="EUR"),
        billing_pb2.CreateVouchersRequest(count=1, amount_micros=0, currency="EUR"),
        billing_pb2.CreateVouchersRequest(count=1, amount_micros=1, currency="EURO"),
    ):
        code, _, _ = await _refused(api.billing.CreateVouchers(bad, metadata=OPERATOR))
        assert code is grpc.StatusCode.INVALID_ARGUMENT


async def test_a_payment_funds_once_by_its_reference(api: Stubs) -> None:
    account_id = await new_account(api.billing)
    reference = f"psp-{uuid.uuid4().hex}"
    request = billing_pb2.FundAccountRequest(
        account_id=account_id, amount_micros=2_500_000, payment_reference=reference
    )
    first = await api.billing.FundAccount(request, metadata=OPERATOR)
    again = await api.billing.FundAccount(request, metadata=OPERATOR)
    assert again.transaction.transaction_id == first.transaction.transaction_id
    assert await _balance(api, account_id) == 2_500_000

    other = await new_account(api.billing)
    code, reason, _ = await _refused(
        api.billing.FundAccount(
            billing_pb2.FundAccountRequest(
                account_id=other, amount_micros=2_500_000, payment_reference=reference
            ),
            metadata=OPERATOR,
        )
    )
    assert (code, reason) == (grpc.StatusCode.ALREADY_EXISTS, "PAYMENT_ALREADY_RECORDED")
    assert await _balance(api, other) == 0

    code, _, words = await _refused(
        api.billing.FundAccount(
            billing_pb2.FundAccountRequest(
                account_id=other,
                amount_micros=1,
                payment_reference=reference,
                idempotency_key="k",
            ),
            metadata=OPERATOR,
        )
    )
    assert code is grpc.StatusCode.INVALID_ARGUMENT and "not both" in words
