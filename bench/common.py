"""What the benches share: percentiles and verdicts, failure counts, device tokens."""

from __future__ import annotations

import asyncio
import math
import signal
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from tests.support.stack import metadata, token_for

from meterline.kernel.config import load_settings
from meterline.kernel.grpc_server import listen
from meterline.kernel.principals import Principal, PrincipalKind
from meterline.kernel.tls import server_credentials

Metadata = tuple[tuple[str, str], ...]


def percentile(values: Sequence[float], share: float) -> float:
    """Nearest-rank percentile of `values` (seconds), in milliseconds; nan when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(share * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1] * 1000


def ms(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.1f}"


def verdict(met: bool) -> str:
    return "met" if met else "NOT met"


def describe(error: BaseException) -> str:
    if isinstance(error, grpc.aio.AioRpcError):
        return f"{error.code().name}: {error.details()} [{error.debug_error_string()}]"
    if isinstance(error, TimeoutError):
        return "no answer (or end of stream) within the bench's time limit"
    return f"{type(error).__name__}: {error}"


@dataclass
class Failures:
    count: int = 0
    first: str = ""
    kinds: dict[str, int] = field(default_factory=dict)
    """Count per gRPC status (or exception type)."""
    first_of_kind: dict[str, str] = field(default_factory=dict)

    def add(self, error: BaseException) -> None:
        self.count += 1
        if not self.first:
            self.first = describe(error)
        if isinstance(error, grpc.aio.AioRpcError):
            kind = error.code().name
        else:
            kind = type(error).__name__
        self.kinds[kind] = self.kinds.get(kind, 0) + 1
        self.first_of_kind.setdefault(kind, describe(error))

    def text(self) -> str:
        if not self.count:
            return "none"
        kinds = ", ".join(f"{kind} {count:,}" for kind, count in sorted(self.kinds.items()))
        text = f"{self.count:,} ({kinds}; first: {self.first})"
        if len(self.kinds) > 1:
            others = "; ".join(
                message for message in self.first_of_kind.values() if message != self.first
            )
            text += f"; first of each other kind: {others}"
        return text


def device_metadata(account_id: str) -> Metadata:
    principal = Principal(kind=PrincipalKind.DEVICE, subject="bench-device", account_id=account_id)
    return metadata(token_for(principal, timedelta(hours=2)))


async def close_channels(channels: Sequence[grpc.aio.Channel]) -> None:
    for channel in channels:
        await channel.close(None)


async def serve_until_stopped(server: grpc.aio.Server, port: int, *, tls: bool = True) -> None:
    """Serve a bench's echo `server` (its handlers added) on 127.0.0.1:`port` until SIGTERM
    or SIGINT: health SERVING, and TLS as the services have it (the same settings and
    kernel helpers), so that the comparison with them is fair."""
    health_servicer = health.aio.HealthServicer()  # type: ignore[attr-defined]
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    address = f"127.0.0.1:{port}"
    if tls:
        listen(server, address, server_credentials(load_settings().tls))
    else:
        server.add_insecure_port(address)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await server.stop(0.5)
