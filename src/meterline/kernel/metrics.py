"""Prometheus metrics: one registry per process, served on `METERLINE_METRICS_ADDRESS`
(host:port; unset: not served). Every RPC is counted by method and status code with its
latency (recorded when the call is done, by the servicer decorators in `grpc_errors`, so a
stream's messages cost nothing extra): ledger movements and slices reserved are the
billing manager's `meterline_rpc_calls_total{code="OK"}` of Reserve, Capture, Release,
FundAccount, RedeemVoucher, AdjustAccount and Refund. The service manager counts what it
does below."""

from __future__ import annotations

import logging
import time
from typing import Any

from prometheus_client import Counter, Gauge, Histogram, start_http_server

log = logging.getLogger(__name__)

RPC_CALLS = Counter(
    "meterline_rpc_calls", "RPCs answered, by method and status code", ["method", "code"]
)
RPC_SECONDS = Histogram(
    "meterline_rpc_seconds",
    "RPC duration (a stream's whole life), by method",
    ["method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 60, 600),
)
USAGE_UPDATES = Counter("meterline_usage_updates", "Usage updates applied by this instance")
CUT_OFFS = Counter("meterline_cut_offs", "Sessions ended by the service, by reason", ["reason"])
SESSIONS_STARTED = Counter("meterline_sessions_started", "Sessions started by this instance")
ACTIVE_SESSIONS = Gauge("meterline_active_sessions", "Sessions this instance holds in memory")


def call_done(method: str, started: float) -> Any:
    """A done-callback for a servicer context: counts the call with its final code."""

    def record(context: Any) -> None:
        code = context.code()
        name = "OK" if code is None else getattr(code, "name", str(code))
        RPC_CALLS.labels(method, name).inc()
        RPC_SECONDS.labels(method).observe(time.perf_counter() - started)

    return record


def serve_metrics(address: str) -> int:
    """Serve /metrics on `address` (host:port, port 0 picks one); the port."""
    host, _, port = address.rpartition(":")
    server, _thread = start_http_server(int(port), addr=host.strip("[]") or "127.0.0.1")
    bound = int(server.server_port)
    log.info("metrics on http://%s:%d/metrics", host or "127.0.0.1", bound)
    return bound
