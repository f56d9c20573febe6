"""Money movements on the real PostgreSQL: idempotency, holds, concurrency, invariants,
and the running balances: always the sums of the entries, and reads that do not grow
with the ledger."""

from __future__ import annotations

import asyncio
import random
import statistics
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import grpc
import psycopg
import pytest

from billing_manager.storage.movement_store import BalanceDrift, MovementStore
from meterline.billing.v1 import billing_pb2
from meterline.kernel.db import libpq_dsn
from meterline.kernel.grpc_errors import error_reason
from tests.support.clients import OPERATOR, Stubs, new_account
from tests.support.stores import StoreUrls

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
async def movements(stores: StoreUrls) -> AsyncIterator[MovementStore]:
    """The billing manager's own store on the test run's account database, for its check
    of the running balances."""
    store = MovementStore(stores.billing_url, pool_size=2)
    await store.open()
    try:
        yield store
    finally:
        await store.close()


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


def _customer_sums(stores: StoreUrls, account_id: str) -> tuple[int, int]:
    """(sum of the CUSTOMER_AVAILABLE entries, sum of the CUSTOMER_HELD entries)"""
    with psycopg.connect(libpq_dsn(stores.billing_url)) as conn:
        row = conn.execute(
            "SELECT coalesce(sum(amount_micros) FILTER (WHERE ledger_account = "
            "'CUSTOMER_AVAILABLE'), 0), coalesce(sum(amount_micros) FILTER (WHERE "
            "ledger_account = 'CUSTOMER_HELD'), 0) FROM ledger_entries WHERE account_id = %s",
            (account_id,),
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


async def _refusal(call: Awaitable[object]) -> tuple[grpc.StatusCode, str, str]:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call
    error = raised.value
    return error.code(), error_reason(error) or "", error.details() or ""


def _capture(hold_id: str, amount: int, key: str) -> billing_pb2.CaptureRequest:
    return billing_pb2.CaptureRequest(hold_id=hold_id, amount_micros=amount, idempotency_key=key)


def _release(hold_id: str, key: str) -> billing_pb2.ReleaseRequest:
    return billing_pb2.ReleaseRequest(hold_id=hold_id, idempotency_key=key)


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


async def test_fifty_concurrent_reserves_never_overdraw(
    api: Stubs, stores: StoreUrls, movements: MovementStore
) -> None:
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
    assert await movements.running_balance_drift(account_id) == []


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
    end.FromDatetime(datetime.now(UTC))  # a bill's period has ended
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


# -- running balances ----------------------------------------------------------------------


async def test_running_balances_are_the_sums_of_the_entries_after_concurrent_movements(
    api: Stubs, stores: StoreUrls, movements: MovementStore
) -> None:
    """Reserves, captures, releases and funds racing on one account (and their repeats):
    the account's balances, read from its row, are the sums of its entries throughout."""
    account_id = await new_account(api.billing, funded_micros=1_000_000)
    rng = random.Random(6)

    async def fund(number: int) -> None:
        request = billing_pb2.FundAccountRequest(
            account_id=account_id, amount_micros=7_000, idempotency_key=f"f{number}-{account_id}"
        )
        await asyncio.gather(*(api.billing.FundAccount(request, metadata=OPERATOR) for _ in "ab"))

    async def hold_and_settle(number: int) -> None:
        try:
            hold_id = await _reserve(api, account_id, 40_000, f"r{number}-{account_id}")
        except grpc.aio.AioRpcError as error:
            assert error_reason(error) == "INSUFFICIENT_FUNDS"
            return
        await asyncio.sleep(rng.random() / 100)
        if number % 3:
            request = _capture(hold_id, rng.randrange(0, 40_001), f"c{number}-{account_id}")
            calls = [api.billing.Capture(request, metadata=OPERATOR) for _ in "ab"]
        else:
            release = _release(hold_id, f"x{number}-{account_id}")
            calls = [api.billing.Release(release, metadata=OPERATOR) for _ in "ab"]
        first, repeat = await asyncio.gather(*calls)
        assert first == repeat

    async def read(_: int) -> None:
        account = await _account(api, account_id)
        assert account.available_micros + account.held_micros == account.balance_micros
        assert account.available_micros >= 0

    work: list[Callable[[int], Awaitable[None]]] = [hold_and_settle] * 40 + [fund] * 10
    work += [read] * 20
    rng.shuffle(work)
    await asyncio.gather(*(step(number) for number, step in enumerate(work)))
    assert await movements.running_balance_drift(account_id) == []

    account = await _account(api, account_id)
    available, held = _customer_sums(stores, account_id)
    assert (account.available_micros, account.held_micros) == (available, held)
    assert held == 0  # every hold made was captured or released
    _, everything, transactions = _ledger_sums(stores, account_id)
    assert everything == 0 and all(total == 0 for total in transactions)


async def test_the_check_finds_a_running_balance_that_moved_without_entries(
    api: Stubs, stores: StoreUrls, movements: MovementStore
) -> None:
    """The check is not blind: a balance changed behind the ledger's back is reported."""
    account_id = await new_account(api.billing, funded_micros=50_000)
    await _reserve(api, account_id, 20_000)
    assert await movements.running_balance_drift(account_id) == []
    with psycopg.connect(libpq_dsn(stores.billing_url), autocommit=True) as conn:
        conn.execute(
            "UPDATE accounts SET held_micros = held_micros + 1 WHERE account_id = %s",
            (account_id,),
        )
        try:
            drift = await movements.running_balance_drift(account_id)
            everywhere = await movements.running_balance_drift()
        finally:
            conn.execute(
                "UPDATE accounts SET held_micros = held_micros - 1 WHERE account_id = %s",
                (account_id,),
            )
    expected = BalanceDrift(account_id, 30_000, 30_000, 20_001, 20_000)
    assert drift == [expected]
    assert expected in everywhere
    assert await movements.running_balance_drift(account_id) == []


async def test_reads_and_movements_do_not_grow_with_the_ledger(
    api: Stubs, stores: StoreUrls, movements: MovementStore
) -> None:
    """100,000 entries on an account (written as FundAccount writes them, in one
    statement): GetAccount, Reserve and Capture take about as long as on a fresh account,
    and the running balance moved with the entries."""
    fresh = await new_account(api.billing, funded_micros=10**9)
    grown = await new_account(api.billing, funded_micros=10**9)
    funds = 50_000
    with psycopg.connect(libpq_dsn(stores.billing_url), autocommit=True) as conn:
        conn.execute(
            "INSERT INTO ledger_transactions (transaction_id, kind, account_id, amount_micros, "
            "idempotency_key, fingerprint) SELECT 'txn_long_' || %(a)s::text || n, 'FUND', "
            "%(a)s::text, 1, 'long-' || %(a)s::text || n, 'FUND|' || %(a)s::text || '|1' "
            "FROM generate_series(1, %(n)s) AS n",
            {"a": grown, "n": funds},
        )
        conn.execute(
            "INSERT INTO ledger_entries (transaction_id, kind, account_id, ledger_account, "
            "amount_micros) SELECT 'txn_long_' || %(a)s::text || n, 'FUND', %(a)s::text, "
            "side.account, side.amount FROM generate_series(1, %(n)s) AS n, "
            "(VALUES ('FUNDING', -1), ('CUSTOMER_AVAILABLE', 1)) AS side(account, amount)",
            {"a": grown, "n": funds},
        )
        conn.execute("ANALYZE ledger_entries")
    assert (await _account(api, grown)).balance_micros == 10**9 + funds
    assert await movements.running_balance_drift(grown) == []

    async def median(call: Callable[[], Awaitable[object]], times: int = 25) -> float:
        await call()
        taken = []
        for _ in range(times):
            began = time.perf_counter()
            await call()
            taken.append(time.perf_counter() - began)
        return statistics.median(taken)

    async def reserve_and_capture(account_id: str) -> None:
        hold_id = await _reserve(api, account_id, 1_000)
        await api.billing.Capture(_capture(hold_id, 600, uuid.uuid4().hex), metadata=OPERATOR)

    for name, call in (
        ("GetAccount", lambda account_id: _account(api, account_id)),
        ("Reserve+Capture", reserve_and_capture),
    ):
        on_fresh = await median(lambda call=call: call(fresh))
        on_grown = await median(lambda call=call: call(grown))
        # Summing 100,000 entries takes tens of milliseconds; a row read does not.
        assert on_grown <= 2 * on_fresh + 0.005, (
            f"{name}: {on_grown * 1000:.1f} ms on the long ledger, "
            f"{on_fresh * 1000:.1f} ms on a fresh account"
        )
    assert await movements.running_balance_drift(grown) == []


# -- idempotency and refusals --------------------------------------------------------------


async def test_each_movement_repeated_returns_its_first_result(
    api: Stubs, stores: StoreUrls, movements: MovementStore
) -> None:
    account_id = await new_account(api.billing, funded_micros=500_000)
    reserve = billing_pb2.ReserveRequest(
        account_id=account_id, amount_micros=100_000, idempotency_key=f"r-{account_id}"
    )
    first = await api.billing.Reserve(reserve, metadata=OPERATOR)
    assert await api.billing.Reserve(reserve, metadata=OPERATOR) == first
    other = await _reserve(api, account_id, 50_000)

    capture = _capture(first.hold_id, 30_000, f"c-{account_id}")
    captured = await api.billing.Capture(capture, metadata=OPERATOR)
    assert await api.billing.Capture(capture, metadata=OPERATOR) == captured
    release = _release(other, f"x-{account_id}")
    released = await api.billing.Release(release, metadata=OPERATOR)
    assert await api.billing.Release(release, metadata=OPERATOR) == released
    assert (captured.status, released.status) == (
        billing_pb2.HOLD_STATUS_CAPTURED,
        billing_pb2.HOLD_STATUS_RELEASED,
    )
    # A repeat after the hold was settled still returns the reserve's hold (as it is now).
    again = await api.billing.Reserve(reserve, metadata=OPERATOR)
    assert (again.hold_id, again.status) == (first.hold_id, billing_pb2.HOLD_STATUS_CAPTURED)

    def reused(key: str) -> str:
        return (
            f"The idempotency key {key!r} was already used for a different request; use a "
            "new key for a new movement, or repeat the first request exactly."
        )

    changed_reserve = billing_pb2.ReserveRequest(
        account_id=account_id, amount_micros=100_001, idempotency_key=reserve.idempotency_key
    )
    other_account = await new_account(api.billing, funded_micros=500_000)
    moved_reserve = billing_pb2.ReserveRequest(
        account_id=other_account, amount_micros=100_000, idempotency_key=reserve.idempotency_key
    )
    for call, key in (
        (api.billing.Reserve(changed_reserve, metadata=OPERATOR), reserve.idempotency_key),
        (api.billing.Reserve(moved_reserve, metadata=OPERATOR), reserve.idempotency_key),
        (
            api.billing.Capture(
                _capture(first.hold_id, 1, capture.idempotency_key), metadata=OPERATOR
            ),
            capture.idempotency_key,
        ),
        (
            api.billing.Release(
                _release(first.hold_id, capture.idempotency_key), metadata=OPERATOR
            ),
            capture.idempotency_key,
        ),
        (
            api.billing.Capture(_capture(other, 1, reserve.idempotency_key), metadata=OPERATOR),
            reserve.idempotency_key,
        ),
    ):
        assert await _refusal(call) == (
            grpc.StatusCode.ALREADY_EXISTS,
            "IDEMPOTENCY_KEY_REUSED",
            reused(key),
        )
    account = await _account(api, account_id)
    assert (account.available_micros, account.held_micros) == (470_000, 0)
    assert (await _account(api, other_account)).available_micros == 500_000
    assert await movements.running_balance_drift(account_id) == []


async def test_concurrent_repeats_of_one_reserve_make_one_hold(api: Stubs) -> None:
    account_id = await new_account(api.billing, funded_micros=100_000)
    request = billing_pb2.ReserveRequest(
        account_id=account_id, amount_micros=60_000, idempotency_key=f"burst-{account_id}"
    )
    holds = await asyncio.gather(
        *(api.billing.Reserve(request, metadata=OPERATOR) for _ in range(12))
    )
    assert len({hold.hold_id for hold in holds}) == 1
    account = await _account(api, account_id)
    assert (account.available_micros, account.held_micros) == (40_000, 60_000)


async def test_one_key_racing_on_two_accounts_moves_money_once(
    api: Stubs, movements: MovementStore
) -> None:
    """Two accounts, one key, at the same moment: they do not share a row lock, so they
    meet at the key's unique index; one reserve is made, the other is refused as a reuse."""
    for _ in range(5):
        first, second = [await new_account(api.billing, funded_micros=100_000) for _ in "ab"]
        key = uuid.uuid4().hex
        outcomes = await asyncio.gather(
            _reserve(api, first, 10_000, key),
            _reserve(api, second, 10_000, key),
            return_exceptions=True,
        )
        made = [outcome for outcome in outcomes if isinstance(outcome, str)]
        refused = [outcome for outcome in outcomes if isinstance(outcome, grpc.aio.AioRpcError)]
        assert len(made) == 1 and len(refused) == 1, outcomes
        assert error_reason(refused[0]) == "IDEMPOTENCY_KEY_REUSED"
        held = [(await _account(api, account)).held_micros for account in (first, second)]
        assert sorted(held) == [0, 10_000]
        for account in (first, second):
            assert await movements.running_balance_drift(account) == []


async def test_refusals_keep_their_status_reason_and_sentence(
    api: Stubs, stores: StoreUrls
) -> None:
    account_id = await new_account(api.billing, funded_micros=10_000)
    missing = "acct_missing"
    hold_id = await _reserve(api, account_id, 4_000)
    assert await _refusal(_reserve(api, account_id, 30_000)) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "INSUFFICIENT_FUNDS",
        "Insufficient funds: 0.03 is needed but only 0.006 is available. Fund the account "
        "and try again.",
    )
    for call in (
        _reserve(api, missing, 1),
        api.billing.FundAccount(
            billing_pb2.FundAccountRequest(
                account_id=missing, amount_micros=1, idempotency_key="k"
            ),
            metadata=OPERATOR,
        ),
        _account(api, missing),
    ):
        assert await _refusal(call) == (
            grpc.StatusCode.NOT_FOUND,
            "ACCOUNT_NOT_FOUND",
            f"There is no account {missing!r}.",
        )
    for call in (
        api.billing.Capture(_capture("hold_missing", 1, "k1"), metadata=OPERATOR),
        api.billing.Release(_release("hold_missing", "k2"), metadata=OPERATOR),
    ):
        assert await _refusal(call) == (
            grpc.StatusCode.NOT_FOUND,
            "HOLD_NOT_FOUND",
            "There is no hold 'hold_missing'.",
        )
    assert await _refusal(
        api.billing.Capture(_capture(hold_id, 4_001, uuid.uuid4().hex), metadata=OPERATOR)
    ) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_ARGUMENT",
        "Cannot capture 4001 micro-units from a hold of 4000.",
    )
    await api.billing.Release(_release(hold_id, uuid.uuid4().hex), metadata=OPERATOR)
    # A closed hold answers before the amount is judged.
    assert await _refusal(
        api.billing.Capture(_capture(hold_id, 4_001, uuid.uuid4().hex), metadata=OPERATOR)
    ) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "HOLD_CLOSED",
        f"Hold {hold_id} is already released; a hold is settled only once.",
    )

    with psycopg.connect(libpq_dsn(stores.billing_url), autocommit=True) as conn:
        conn.execute(
            "UPDATE accounts SET status = 'SUSPENDED' WHERE account_id = %s", (account_id,)
        )
    assert await _refusal(_reserve(api, account_id, 1)) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "ACCOUNT_SUSPENDED",
        f"Account {account_id} is suspended; it cannot take new charges.",
    )
    account = await _account(api, account_id)
    assert (account.available_micros, account.held_micros) == (10_000, 0)
    assert account.status == billing_pb2.ACCOUNT_STATUS_SUSPENDED


async def test_a_movement_whose_connection_is_killed_runs_again_and_moves_money_once(
    api: Stubs, stores: StoreUrls, movements: MovementStore
) -> None:
    """A reserve waits for its account's row lock; its database connection is killed (as a
    restart or an administrator would): it runs again on a fresh connection, after the
    lock is free, and the hold is made once."""
    account_id = await new_account(api.billing, funded_micros=100_000)
    key = f"killed-{account_id}"
    with psycopg.connect(libpq_dsn(stores.billing_url), autocommit=True) as admin:
        with psycopg.connect(libpq_dsn(stores.billing_url)) as locker:
            locker.execute("SELECT 1 FROM accounts WHERE account_id = %s FOR UPDATE", (account_id,))
            reserve = asyncio.create_task(_reserve(api, account_id, 25_000, key))
            waiting = None
            for _ in range(100):
                waiting = admin.execute(
                    "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                    "AND query LIKE %s",
                    ("%ledger_reserve%",),
                ).fetchone()
                if waiting:
                    break
                await asyncio.sleep(0.02)
            assert waiting, "the reserve never waited for the row lock"
            admin.execute("SELECT pg_terminate_backend(%s)", (waiting[0],))
            await asyncio.sleep(0.3)
            assert not reserve.done()  # running again, and waiting for the lock again
        # The locker's transaction ended with its connection: the lock is free.
        hold_id = await asyncio.wait_for(reserve, 10)
    assert await _reserve(api, account_id, 25_000, key) == hold_id
    account = await _account(api, account_id)
    assert (account.available_micros, account.held_micros) == (75_000, 25_000)
    assert await movements.running_balance_drift(account_id) == []
