"""Prometheus metrics, scraped over HTTP from /metrics during a real session on the test
stack: the RPC counters (by method and code), their latency histogram, usage updates,
sessions started, slices reserved and ledger movements all move."""

from __future__ import annotations

import asyncio
import re
import urllib.request
import uuid

import grpc
import pytest

from meterline.billing.v1 import billing_pb2
from meterline.kernel.metrics import serve_metrics
from meterline.rating.v1 import types_pb2
from meterline.service.v1 import service_pb2
from tests.support.clients import OPERATOR, Stubs, device, ensure_tariff, new_account

pytestmark = pytest.mark.integration


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        return str(answer.read().decode())


def _value(text: str, name: str, **labels: str) -> float:
    """The sample `name{labels}` (labels in any order), 0 when absent."""
    for line in text.splitlines():
        if not line.startswith(name + ("{" if labels else " ")):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.partition("}")[0]))
        if all(found.get(key) == value for key, value in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


async def test_a_session_moves_the_counters(api: Stubs) -> None:
    port = await asyncio.to_thread(serve_metrics, "127.0.0.1:0")
    before = await asyncio.to_thread(_scrape, port)
    await ensure_tariff(api.rating, "+4420", 10_000)
    account_id = await new_account(api.billing, 10_000_000)
    started = await api.service.StartService(
        service_pb2.StartServiceRequest(
            account_id=account_id, service_type=types_pb2.VOICE, endpoint="+442071234567"
        ),
        metadata=device(account_id),
    )
    updates = [
        service_pb2.ResourceUtilizationUpdate(
            session_id=started.session_id, sequence=n, used_units=n * 5
        )
        for n in range(1, 6)
    ]
    answers = [a async for a in api.service.Meter(iter(updates), metadata=device(account_id))]
    assert len(answers) == 5
    await api.service.StopService(
        service_pb2.StopServiceRequest(session_id=started.session_id, used_units=25),
        metadata=device(account_id),
    )
    after = await asyncio.to_thread(_scrape, port)

    def moved(name: str, **labels: str) -> float:
        return _value(after, name, **labels) - _value(before, name, **labels)

    start = {"method": "ServiceManager.StartService", "code": "OK"}
    assert moved("meterline_rpc_calls_total", **start) >= 1
    assert moved("meterline_rpc_calls_total", method="ServiceManager.Meter", code="OK") >= 1
    assert moved("meterline_rpc_calls_total", method="BillingManager.Reserve", code="OK") >= 1
    assert moved("meterline_rpc_seconds_count", method="ServiceManager.StartService") >= 1
    assert moved("meterline_usage_updates_total") >= 5
    assert moved("meterline_sessions_started_total") >= 1
    assert "meterline_active_sessions" in after


async def test_a_refused_call_is_counted_under_its_code(api: Stubs) -> None:
    port = await asyncio.to_thread(serve_metrics, "127.0.0.1:0")
    labels = {"method": "ServiceManager.StopService", "code": "NOT_FOUND"}
    before = _value(await asyncio.to_thread(_scrape, port), "meterline_rpc_calls_total", **labels)
    account_id = await new_account(api.billing, 0)
    with pytest.raises(grpc.aio.AioRpcError):
        await api.service.StopService(
            service_pb2.StopServiceRequest(session_id="ses_nope", used_units=0),
            metadata=device(account_id),
        )
    after = _value(await asyncio.to_thread(_scrape, port), "meterline_rpc_calls_total", **labels)
    assert after == before + 1


async def test_ledger_movements_count_each_transaction_once(api: Stubs) -> None:
    """A repeated key answers the first result and writes nothing: it is not counted."""
    port = await asyncio.to_thread(serve_metrics, "127.0.0.1:0")
    account_id = await new_account(api.billing, 0)
    before = await asyncio.to_thread(_scrape, port)
    fund = billing_pb2.FundAccountRequest(
        account_id=account_id, amount_micros=5_000_000, idempotency_key=uuid.uuid4().hex
    )
    reserve = billing_pb2.ReserveRequest(
        account_id=account_id, amount_micros=1_000_000, idempotency_key=uuid.uuid4().hex
    )
    for _ in range(2):  # each twice: the repeat is the same movement
        await api.billing.FundAccount(fund, metadata=OPERATOR)
        hold = await api.billing.Reserve(reserve, metadata=OPERATOR)
    capture = billing_pb2.CaptureRequest(
        hold_id=hold.hold_id, amount_micros=400_000, idempotency_key=uuid.uuid4().hex
    )
    for _ in range(2):
        await api.billing.Capture(capture, metadata=OPERATOR)
    after = await asyncio.to_thread(_scrape, port)
    for kind in ("FUND", "RESERVE", "CAPTURE"):
        moved = _value(after, "meterline_ledger_movements_total", kind=kind) - _value(
            before, "meterline_ledger_movements_total", kind=kind
        )
        assert moved == 1, kind


async def test_a_session_past_its_first_grant_counts_a_slice(api: Stubs) -> None:
    port = await asyncio.to_thread(serve_metrics, "127.0.0.1:0")
    await ensure_tariff(api.rating, "+4420", 10_000)
    account_id = await new_account(api.billing, 50_000_000)
    before = _value(await asyncio.to_thread(_scrape, port), "meterline_slices_reserved_total")
    started = await api.service.StartService(
        service_pb2.StartServiceRequest(
            account_id=account_id, service_type=types_pb2.VOICE, endpoint="+442071234567"
        ),
        metadata=device(account_id),
    )
    granted = started.granted_units
    assert granted > 0
    updates = [
        service_pb2.ResourceUtilizationUpdate(
            session_id=started.session_id, sequence=n, used_units=n * granted // 4
        )
        for n in range(1, 7)  # up to 1.5 grants
    ]
    answers = [a async for a in api.service.Meter(iter(updates), metadata=device(account_id))]
    assert answers[-1].granted_units > granted
    await api.service.StopService(
        service_pb2.StopServiceRequest(session_id=started.session_id, used_units=6 * granted // 4),
        metadata=device(account_id),
    )
    after = _value(await asyncio.to_thread(_scrape, port), "meterline_slices_reserved_total")
    assert after >= before + 1
