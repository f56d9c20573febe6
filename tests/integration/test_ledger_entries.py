"""ListLedgerEntries with filters (kinds, a time range) and paging."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import grpc
import pytest

from meterline.billing.v1 import billing_pb2
from meterline.kernel.wire import timestamp
from tests.support.clients import OPERATOR, Stubs, new_account

pytestmark = pytest.mark.integration


async def _list(api: Stubs, request: billing_pb2.ListLedgerEntriesRequest) -> list[int]:
    """Every entry id the filters match, a page of two at a time."""
    found: list[int] = []
    while True:
        page = await api.billing.ListLedgerEntries(request, metadata=OPERATOR)
        found += [entry.entry_id for entry in page.entries]
        if not page.next_page_token:
            return found
        request.page_token = page.next_page_token


async def test_entries_are_filtered_by_kind_and_time_and_paged(api: Stubs) -> None:
    before = datetime.now(UTC) - timedelta(seconds=1)
    account_id = await new_account(api.billing, funded_micros=1_000)
    hold = await api.billing.Reserve(
        billing_pb2.ReserveRequest(
            account_id=account_id, amount_micros=400, idempotency_key=uuid.uuid4().hex
        ),
        metadata=OPERATOR,
    )
    await api.billing.Capture(
        billing_pb2.CaptureRequest(
            hold_id=hold.hold_id, amount_micros=300, idempotency_key=uuid.uuid4().hex
        ),
        metadata=OPERATOR,
    )
    every = await _list(
        api, billing_pb2.ListLedgerEntriesRequest(account_id=account_id, page_size=2)
    )
    assert len(every) == 2 + 2 + 3  # fund, reserve, capture (held, revenue, released)
    captures = await _list(
        api,
        billing_pb2.ListLedgerEntriesRequest(
            account_id=account_id, page_size=2, kinds=[billing_pb2.TRANSACTION_KIND_CAPTURE]
        ),
    )
    assert captures == every[4:]
    both = await _list(
        api,
        billing_pb2.ListLedgerEntriesRequest(
            account_id=account_id,
            page_size=2,
            kinds=[billing_pb2.TRANSACTION_KIND_FUND, billing_pb2.TRANSACTION_KIND_RESERVE],
        ),
    )
    assert both == every[:4]
    window = billing_pb2.ListLedgerEntriesRequest(account_id=account_id, page_size=2)
    window.start_time.CopyFrom(timestamp(before))
    window.end_time.CopyFrom(timestamp(datetime.now(UTC) + timedelta(seconds=1)))
    assert await _list(api, window) == every
    later = billing_pb2.ListLedgerEntriesRequest(account_id=account_id)
    later.start_time.CopyFrom(timestamp(datetime.now(UTC) + timedelta(hours=1)))
    assert await _list(api, later) == []

    backwards = billing_pb2.ListLedgerEntriesRequest(account_id=account_id)
    backwards.start_time.CopyFrom(timestamp(datetime.now(UTC)))
    backwards.end_time.CopyFrom(timestamp(before))
    unspecified = billing_pb2.ListLedgerEntriesRequest(
        account_id=account_id, kinds=[billing_pb2.TRANSACTION_KIND_UNSPECIFIED]
    )
    for bad in (backwards, unspecified):
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await api.billing.ListLedgerEntries(bad, metadata=OPERATOR)
        assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT
