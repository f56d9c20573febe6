"""The health status follows the stores: a server whose database cannot be reached says
NOT_SERVING (so a load balancer or a client's failover can go elsewhere) and SERVING
again once it can. Each server runs `follow_store` as a background task with a probe of
its own stores."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence

from grpc_health.v1 import health_pb2

from meterline.kernel.grpc_server import RunningServer
from meterline.kernel.store_errors import one_line

log = logging.getLogger(__name__)

PROBE_INTERVAL_SECONDS = 2.0
PROBE_TIMEOUT_SECONDS = 6.0
"""Longer than db.CONNECT_TIMEOUT_SECONDS, so a connection attempt fails on its own."""


async def follow_store(
    server: RunningServer,
    service_names: Sequence[str],
    probe: Callable[[], Awaitable[object]],
    store: str = "database",
    interval: float = PROBE_INTERVAL_SECONDS,
) -> None:
    """Run `probe` every `interval` seconds; while it fails (or takes longer than
    PROBE_TIMEOUT_SECONDS), `service_names` and the server as a whole ('') are
    NOT_SERVING. Runs until cancelled."""
    serving = True
    while True:
        await asyncio.sleep(interval)
        try:
            await asyncio.wait_for(probe(), PROBE_TIMEOUT_SECONDS)
        except asyncio.CancelledError:
            raise
        except Exception as error:
            if serving:
                log.warning("the %s cannot be reached (%s): NOT_SERVING", store, one_line(error))
                await _set(server, service_names, health_pb2.HealthCheckResponse.NOT_SERVING)
                serving = False
            continue
        if not serving:
            log.warning("the %s can be reached again: SERVING", store)
            await _set(server, service_names, health_pb2.HealthCheckResponse.SERVING)
            serving = True


async def _set(
    server: RunningServer,
    service_names: Sequence[str],
    status: health_pb2.HealthCheckResponse.ServingStatus.ValueType,
) -> None:
    for name in (*service_names, ""):
        await server.health.set(name, status)
