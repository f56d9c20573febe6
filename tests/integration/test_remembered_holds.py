"""A billing manager remembers the holds its reserves opened, so that their capture or
release is one statement (MovementStore.hold_to_settle). Another billing manager on the
same database may settle such a hold meanwhile: the first must still refuse a second
settlement, answer reads with the hold as it is now, and check a capture against the
hold's amount."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import replace

import grpc
import pytest

import billing_manager.server
from meterline.billing.v1 import billing_pb2, billing_pb2_grpc
from meterline.kernel.grpc_errors import error_reason
from tests.support import tls
from tests.support.clients import OPERATOR, Stubs, new_account
from tests.support.stack import settings_for
from tests.support.stores import StoreUrls

pytestmark = pytest.mark.integration


@pytest.fixture
async def other(stores: StoreUrls) -> AsyncIterator[billing_pb2_grpc.BillingManagerAsyncStub]:
    """A second billing manager on the same account database."""
    settings = replace(settings_for(stores), migrate_on_start=False)
    server = await billing_manager.server.start(settings, "127.0.0.1:0")
    channel = tls.channel(f"127.0.0.1:{server.port}")
    try:
        yield billing_pb2_grpc.BillingManagerStub(channel)
    finally:
        await channel.close(None)
        await server.close(grace=0.5)


def _key() -> str:
    return uuid.uuid4().hex


async def _reserve(stub: billing_pb2_grpc.BillingManagerAsyncStub, account_id: str) -> str:
    hold = await stub.Reserve(
        billing_pb2.ReserveRequest(
            account_id=account_id, amount_micros=1_000, idempotency_key=_key()
        ),
        metadata=OPERATOR,
    )
    return str(hold.hold_id)


async def _refused(call: object) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call  # type: ignore[misc]
    return raised.value.code(), error_reason(raised.value)


async def test_a_hold_settled_elsewhere_is_closed_here(
    api: Stubs, other: billing_pb2_grpc.BillingManagerAsyncStub
) -> None:
    here = api.billing
    account_id = await new_account(here, funded_micros=1_000_000)

    released = await _reserve(here, account_id)
    await other.Release(
        billing_pb2.ReleaseRequest(hold_id=released, idempotency_key=_key()), metadata=OPERATOR
    )
    hold = await here.GetHold(billing_pb2.GetHoldRequest(hold_id=released), metadata=OPERATOR)
    assert hold.status == billing_pb2.HOLD_STATUS_RELEASED
    capture = here.Capture(
        billing_pb2.CaptureRequest(hold_id=released, amount_micros=500, idempotency_key=_key()),
        metadata=OPERATOR,
    )
    assert await _refused(capture) == (grpc.StatusCode.FAILED_PRECONDITION, "HOLD_CLOSED")

    captured = await _reserve(here, account_id)
    await other.Capture(
        billing_pb2.CaptureRequest(hold_id=captured, amount_micros=300, idempotency_key=_key()),
        metadata=OPERATOR,
    )
    release = here.Release(
        billing_pb2.ReleaseRequest(hold_id=captured, idempotency_key=_key()), metadata=OPERATOR
    )
    assert await _refused(release) == (grpc.StatusCode.FAILED_PRECONDITION, "HOLD_CLOSED")

    # A remembered hold is checked against its amount, and settled once here too.
    mine = await _reserve(here, account_id)
    too_much = here.Capture(
        billing_pb2.CaptureRequest(hold_id=mine, amount_micros=1_001, idempotency_key=_key()),
        metadata=OPERATOR,
    )
    assert (await _refused(too_much))[0] == grpc.StatusCode.INVALID_ARGUMENT
    done = await here.Capture(
        billing_pb2.CaptureRequest(hold_id=mine, amount_micros=1_000, idempotency_key=_key()),
        metadata=OPERATOR,
    )
    assert (done.status, done.captured_micros) == (billing_pb2.HOLD_STATUS_CAPTURED, 1_000)
    again = here.Capture(
        billing_pb2.CaptureRequest(hold_id=mine, amount_micros=1_000, idempotency_key=_key()),
        metadata=OPERATOR,
    )
    assert await _refused(again) == (grpc.StatusCode.FAILED_PRECONDITION, "HOLD_CLOSED")

    account = await other.GetAccount(
        billing_pb2.GetAccountRequest(account_id=account_id), metadata=OPERATOR
    )
    assert (account.balance_micros, account.held_micros) == (1_000_000 - 300 - 1_000, 0)
