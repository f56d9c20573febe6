"""The servers accept the keepalive pings their clients send, also on a connection with no
call open: a server that counted them as abuse would close the connection with GOAWAY
"too_many_pings" after the third, failing every stream on it."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from meterline.kernel.grpc_server import SERVER_OPTIONS

pytestmark = pytest.mark.integration

PING_MS = 300


async def test_idle_keepalive_pings_do_not_close_the_connection() -> None:
    # The servers' options, with the minimum ping interval scaled down with the pings so
    # the test takes seconds, not a minute.
    options = [
        (name, PING_MS - 100 if name == "grpc.http2.min_ping_interval_without_data_ms" else value)
        for name, value in SERVER_OPTIONS
    ]
    server = grpc.aio.server(options=options)
    health_servicer = health.aio.HealthServicer()  # type: ignore[attr-defined]
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(
        f"127.0.0.1:{port}",
        options=[
            ("grpc.keepalive_time_ms", PING_MS),
            ("grpc.keepalive_timeout_ms", 5_000),
            ("grpc.http2.max_pings_without_data", 0),
            ("grpc.keepalive_permit_without_calls", 1),
        ],
    )
    try:
        stub = health_pb2_grpc.HealthStub(channel)
        answer = await stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert answer.status == health_pb2.HealthCheckResponse.SERVING
        # No call open for ten ping intervals: the server sees only pings.
        states = []
        for _ in range(10):
            await asyncio.sleep(PING_MS / 1000)
            states.append(channel.get_state())
        assert set(states) == {grpc.ChannelConnectivity.READY}, states
    finally:
        await channel.close()
        await server.stop(None)
