"""OpenTelemetry traces across the three service processes: with METERLINE_TRACES=console
each process writes its spans as JSON lines, and one StartService is one trace: the
service manager's SERVER span, its CLIENT spans to the rating service and the billing
manager, and their SERVER spans as children of those, linked through the `traceparent`
metadata. A log line written inside the RPC carries the trace id."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from meterline.rating.v1 import types_pb2
from meterline.service.v1 import service_pb2
from tests.support.clients import device, ensure_tariff, new_account, stubs
from tests.support.stack import service_processes
from tests.support.stores import StoreUrls

pytestmark = pytest.mark.e2e


def _spans(log: Path) -> list[dict[str, Any]]:
    spans = []
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("{") and '"context"' in line:
            spans.append(json.loads(line))
    return spans


def _named(spans: list[dict[str, Any]], name: str, kind: str) -> list[dict[str, Any]]:
    return [span for span in spans if span["name"] == name and span["kind"] == f"SpanKind.{kind}"]


async def test_one_start_is_one_trace_across_the_services(
    stores: StoreUrls, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("METERLINE_TRACES", "console")
    with service_processes(stores, tmp_path) as endpoints:
        api = stubs(endpoints)
        try:
            await ensure_tariff(api.rating, "+4420", 10_000)
            account_id = await new_account(api.billing, 10_000_000)
            started = await api.service.StartService(
                service_pb2.StartServiceRequest(
                    account_id=account_id, service_type=types_pb2.VOICE, endpoint="+442071234567"
                ),
                metadata=device(account_id),
            )
        finally:
            await api.close()
    service = _spans(tmp_path / "service.log")
    rating = _spans(tmp_path / "rating.log")
    billing = _spans(tmp_path / "billing.log")

    (start,) = _named(service, "meterline.service.v1.ServiceManager/StartService", "SERVER")
    trace_id = start["context"]["trace_id"]
    assert start["parent_id"] is None  # the test's own call sent no trace context
    assert start["resource"]["attributes"]["service.name"] == "meterline-service"

    def child_of(parent: dict[str, Any], spans: list[dict[str, Any]], name: str, kind: str) -> Any:
        found = [
            span
            for span in _named(spans, name, kind)
            if span["context"]["trace_id"] == trace_id
            and span["parent_id"] == parent["context"]["span_id"]
        ]
        assert found, f"no {kind} span {name} under {parent['name']} in trace {trace_id}"
        return found[0]

    for peer, method in (
        (rating, "meterline.rating.v1.RatingService/GetRate"),
        (billing, "meterline.billing.v1.BillingManager/GetAccount"),
        (billing, "meterline.billing.v1.BillingManager/Reserve"),
    ):
        call = child_of(start, service, method, "CLIENT")
        served = child_of(call, peer, method, "SERVER")
        assert served["status"]["status_code"] == "UNSET"
        assert served["attributes"]["rpc.grpc.status_code"] == 0

    # "session ... started" is logged inside StartService: its line names the trace.
    hex_id = trace_id.removeprefix("0x")
    lines = [
        line
        for line in (tmp_path / "service.log").read_text().splitlines()
        if f"session {started.session_id} started" in line
    ]
    assert lines, "the start was not logged"
    assert re.search(rf" trace={hex_id}$", lines[0]), lines[0]
