"""Settlement against the real services, PostgreSQL and Redis: a hold an operator
captured or released directly before the session stopped (settlement records what the
ledger did, with the difference flagged, and `ledger verify` agrees); GetHold and who may
read a hold; an account suspended mid-session (its streams end with OPERATOR at once,
the charge is exact, and it cannot start again), and the same when the status event is
lost (the refused next slice ends the session with OPERATOR)."""

from __future__ import annotations

import asyncio
import uuid

import grpc
import psycopg
import pytest

from billing_manager.storage.ledger_audit import verify
from meterline.billing.v1 import billing_pb2
from meterline.kernel.db import libpq_dsn
from meterline.kernel.grpc_errors import error_reason
from meterline.kernel.principals import Principal, PrincipalKind
from meterline.service.v1 import service_pb2
from tests.support.clients import OPERATOR, Stubs, new_account
from tests.support.session_calls import (
    DEADLINE,
    Metadata,
    get_account,
    meter,
    own_device,
    start,
    start_request,
    voice_tariff,
)
from tests.support.stack import InProcessStack, metadata, token_for
from tests.support.stores import StoreUrls

pytestmark = pytest.mark.integration

PRICE = 10_000
"""0.01 a second."""
FUNDED = 1_000_000


async def _session(api: Stubs, prefix: str) -> tuple[str, str, Metadata]:
    await voice_tariff(api, prefix, PRICE)
    account_id = await new_account(api.billing, FUNDED)
    who = own_device(account_id)
    session_id = await start(api, account_id, f"{prefix}4567", who)
    return account_id, session_id, who


async def _hold_of(api: Stubs, account_id: str) -> str:
    listed = await api.billing.ListLedgerEntries(
        billing_pb2.ListLedgerEntriesRequest(
            account_id=account_id, kinds=[billing_pb2.TRANSACTION_KIND_RESERVE]
        ),
        metadata=OPERATOR,
        timeout=DEADLINE,
    )
    (hold_id,) = {entry.hold_id for entry in listed.entries}
    return hold_id


async def _stop(api: Stubs, session_id: str, used: int, who: Metadata) -> service_pb2.ServiceRecord:
    return await api.service.StopService(
        service_pb2.StopServiceRequest(session_id=session_id, used_units=used),
        metadata=who,
        timeout=DEADLINE,
    )


def _audit(stores: StoreUrls, account_id: str) -> list[str]:
    audit = verify(stores.billing_url, stores.service_url, [account_id])
    assert audit.sessions == 1
    return audit.mismatches


# -- holds someone else closed ---------------------------------------------------------------


async def test_a_hold_an_operator_captured_first_gives_a_flagged_record(
    api: Stubs, stores: StoreUrls
) -> None:
    account_id, session_id, who = await _session(api, "+35871")
    await meter(api, session_id, who, (1, 7))
    hold_id = await _hold_of(api, account_id)
    await api.billing.Capture(
        billing_pb2.CaptureRequest(
            hold_id=hold_id, amount_micros=30_000, idempotency_key=uuid.uuid4().hex
        ),
        metadata=OPERATOR,
        timeout=DEADLINE,
    )

    record = await _stop(api, session_id, 7, who)

    assert record.charged_micros == 30_000
    assert record.settlement_difference_micros == 7 * PRICE - 30_000
    assert hold_id in record.settlement_note and "captured for 0.03" in record.settlement_note
    assert record.termination_reason == service_pb2.TERMINATION_REASON_CLIENT_STOP
    hold = await api.billing.GetHold(
        billing_pb2.GetHoldRequest(hold_id=hold_id), metadata=OPERATOR, timeout=DEADLINE
    )
    assert (hold.status, hold.captured_micros) == (billing_pb2.HOLD_STATUS_CAPTURED, 30_000)
    account = await get_account(api, account_id)
    assert (account.balance_micros, account.held_micros) == (FUNDED - 30_000, 0)
    # The record charges what the ledger captured: the audit finds nothing to report.
    assert _audit(stores, account_id) == []
    # A repeat answers the same record.
    again = await _stop(api, session_id, 7, who)
    assert (again.charged_micros, again.settlement_note) == (30_000, record.settlement_note)


async def test_a_hold_an_operator_released_first_gives_a_record_of_no_charge(
    api: Stubs, stores: StoreUrls
) -> None:
    account_id, session_id, who = await _session(api, "+35872")
    await meter(api, session_id, who, (1, 5))
    hold_id = await _hold_of(api, account_id)
    await api.billing.Release(
        billing_pb2.ReleaseRequest(hold_id=hold_id, idempotency_key=uuid.uuid4().hex),
        metadata=OPERATOR,
        timeout=DEADLINE,
    )

    record = await _stop(api, session_id, 5, who)

    assert (record.charged_micros, record.settlement_difference_micros) == (0, 5 * PRICE)
    assert f"Hold {hold_id} was released by another caller" in record.settlement_note
    assert (await get_account(api, account_id)).balance_micros == FUNDED
    assert _audit(stores, account_id) == []


async def test_a_session_settled_normally_is_not_flagged(api: Stubs, stores: StoreUrls) -> None:
    account_id, session_id, who = await _session(api, "+35873")
    await meter(api, session_id, who, (1, 4))
    record = await _stop(api, session_id, 4, who)
    assert record.charged_micros == 4 * PRICE
    assert (record.settlement_difference_micros, record.settlement_note) == (0, "")
    assert _audit(stores, account_id) == []


async def test_a_hold_is_read_by_operators_and_its_own_device_only(api: Stubs) -> None:
    account_id, _, who = await _session(api, "+35874")
    hold_id = await _hold_of(api, account_id)
    request = billing_pb2.GetHoldRequest(hold_id=hold_id)
    own = await api.billing.GetHold(request, metadata=who, timeout=DEADLINE)
    assert (own.account_id, own.status) == (account_id, billing_pb2.HOLD_STATUS_OPEN)
    assert own.amount_micros > 0

    stranger = own_device(await new_account(api.billing))
    for asked, caller in (
        (request, stranger),
        (billing_pb2.GetHoldRequest(hold_id="hold_nobody"), OPERATOR),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await api.billing.GetHold(asked, metadata=caller, timeout=DEADLINE)
        assert raised.value.code() is grpc.StatusCode.NOT_FOUND
        assert error_reason(raised.value) == "HOLD_NOT_FOUND"
    gateway = metadata(token_for(Principal(PrincipalKind.GATEWAY, "gw", gateway_id="local")))
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await api.billing.GetHold(request, metadata=gateway, timeout=DEADLINE)
    assert raised.value.code() is grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await api.billing.GetHold(billing_pb2.GetHoldRequest(), metadata=OPERATOR)
    assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "hold_id" in (raised.value.details() or "")


# -- a suspended account ---------------------------------------------------------------------


def _update(session_id: str, sequence: int, used: int) -> service_pb2.ResourceUtilizationUpdate:
    return service_pb2.ResourceUtilizationUpdate(
        session_id=session_id, sequence=sequence, used_units=used, accept_pushes=True
    )


async def _read(call: object, within: float) -> service_pb2.MeterResponse | None:
    """The stream's next answer, or None once it ended."""
    answer = await asyncio.wait_for(call.read(), within)  # type: ignore[attr-defined]
    if answer is grpc.aio.EOF:  # type: ignore[attr-defined]
        return None
    assert isinstance(answer, service_pb2.MeterResponse)
    return answer


async def test_suspending_an_account_ends_its_streams_with_operator_at_once(
    api: Stubs,
) -> None:
    account_id, session_id, who = await _session(api, "+35875")
    call = api.service.Meter(metadata=who, timeout=DEADLINE)  # type: ignore[call-arg]
    await call.write(_update(session_id, 1, 6))
    first = await _read(call, DEADLINE)
    assert (
        first is not None
        and first.charged_micros == 6 * PRICE
        and not first.HasField("termination")
    )

    await api.billing.SetAccountStatus(
        billing_pb2.SetAccountStatusRequest(
            account_id=account_id, status=billing_pb2.ACCOUNT_STATUS_SUSPENDED
        ),
        metadata=OPERATOR,
        timeout=DEADLINE,
    )
    # No update is sent: the termination is pushed, within a bounded wait.
    pushed = await _read(call, 5)
    assert pushed is not None and pushed.pushed and pushed.termination.ended
    assert pushed.termination.reason == service_pb2.TERMINATION_REASON_OPERATOR
    assert await _read(call, 5) is None  # and the stream ended
    await call.done_writing()

    record = await _stop(api, session_id, 0, OPERATOR)
    assert record.termination_reason == service_pb2.TERMINATION_REASON_OPERATOR
    assert record.charged_micros == 6 * PRICE
    account = await get_account(api, account_id)
    assert (account.balance_micros, account.held_micros) == (FUNDED - 6 * PRICE, 0)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await api.service.StartService(
            start_request(account_id, "+358754567"), metadata=who, timeout=DEADLINE
        )
    assert raised.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert error_reason(raised.value) == "ACCOUNT_SUSPENDED"


async def test_a_lost_suspension_event_ends_the_session_at_its_next_slice(
    api: Stubs, stack: InProcessStack, stores: StoreUrls
) -> None:
    """The account is suspended behind the billing manager's back (no event is sent):
    the next slice is refused for the account's status, and the session ends with
    OPERATOR, not BALANCE_EXHAUSTED, though the balance would pay for it."""
    account_id, session_id, who = await _session(api, "+35876")
    (answer,) = await meter(api, session_id, who, (1, 2))
    grant = answer.granted_units
    assert grant == stack.settings.quota.slice_seconds
    with psycopg.connect(libpq_dsn(stores.billing_url), autocommit=True) as conn:
        conn.execute(
            "UPDATE accounts SET status = 'SUSPENDED' WHERE account_id = %s", (account_id,)
        )

    (cut,) = await meter(api, session_id, who, (2, grant + 1))

    assert cut.termination.ended
    assert cut.termination.reason == service_pb2.TERMINATION_REASON_OPERATOR
    record = await _stop(api, session_id, 0, OPERATOR)
    assert record.termination_reason == service_pb2.TERMINATION_REASON_OPERATOR
    assert (record.billed_units, record.charged_micros) == (grant, grant * PRICE)
    assert (await get_account(api, account_id)).held_micros == 0


async def _usage_written(stores: StoreUrls, session_id: str, used: int) -> None:
    """Wait until the session's usage is in the database (the batch that writes it also
    lets the session go on the instance whose stream closed)."""
    async with await psycopg.AsyncConnection.connect(
        libpq_dsn(stores.service_url), autocommit=True
    ) as conn:
        for _ in range(100):
            cursor = await conn.execute(
                "SELECT used_units FROM sessions WHERE session_id = %s", (session_id,)
            )
            row = await cursor.fetchone()
            if row is not None and row[0] == used:
                return
            await asyncio.sleep(0.05)
    raise AssertionError(f"the usage of {session_id} was not written")


async def _record_within(
    api: Stubs, account_id: str, seconds: float
) -> service_pb2.ServiceRecord | None:
    """The account's first service record, read without stopping anything; None if none
    was written within `seconds`."""
    deadline = asyncio.get_running_loop().time() + seconds
    while asyncio.get_running_loop().time() < deadline:
        found = await api.service.ListServiceRecords(
            service_pb2.ListServiceRecordsRequest(account_id=account_id),
            metadata=OPERATOR,
            timeout=DEADLINE,
        )
        if found.records:
            return found.records[0]
        await asyncio.sleep(0.1)
    return None


async def test_suspending_an_account_ends_a_session_between_streams_with_operator(
    api: Stubs, stores: StoreUrls
) -> None:
    """A session whose stream closed without a stop is held by no stream: the instance
    that hears of the suspension ends it with OPERATOR at once (not the liveness sweep a
    minute later, as LIVENESS_TIMEOUT), at the exact charge of its usage."""
    account_id, session_id, who = await _session(api, "+35877")
    await meter(api, session_id, who, (1, 6))  # the stream ends; the session goes on
    await _usage_written(stores, session_id, 6)
    await asyncio.sleep(0.2)

    await api.billing.SetAccountStatus(
        billing_pb2.SetAccountStatusRequest(
            account_id=account_id, status=billing_pb2.ACCOUNT_STATUS_SUSPENDED
        ),
        metadata=OPERATOR,
        timeout=DEADLINE,
    )

    record = await _record_within(api, account_id, 5)
    assert record is not None, "the session between streams was not ended on the suspension"
    assert record.session_id == session_id
    assert record.termination_reason == service_pb2.TERMINATION_REASON_OPERATOR
    assert (record.used_units, record.charged_micros) == (6, 6 * PRICE)
    account = await get_account(api, account_id)
    assert (account.balance_micros, account.held_micros) == (FUNDED - 6 * PRICE, 0)
    assert _audit(stores, account_id) == []
