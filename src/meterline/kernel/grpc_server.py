"""Building a Meterline gRPC server: limits, health checking, reflection, auth."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from meterline.kernel.errors import Unauthenticated
from meterline.kernel.principals import Principal
from meterline.kernel.tokens import TokenSigner

log = logging.getLogger(__name__)

# Messages above this are refused with RESOURCE_EXHAUSTED before they reach a servicer.
MAX_MESSAGE_BYTES = 8 * 1024 * 1024

CHANNEL_OPTIONS: Sequence[tuple[str, Any]] = (
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.keepalive_permit_without_calls", 1),
)

SERVER_OPTIONS: Sequence[tuple[str, Any]] = (
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ("grpc.so_reuseport", 0),
)


class Authenticator:
    """Turns a call's `authorization` metadata into a Principal, or refuses it."""

    def __init__(self, signer: TokenSigner) -> None:
        self.signer = signer

    def principal(self, context: grpc.aio.ServicerContext[Any, Any]) -> Principal:
        authorization = None
        for key, value in context.invocation_metadata() or ():
            if key == "authorization":
                authorization = value if isinstance(value, str) else value.decode()
                break
        if authorization is None:
            raise Unauthenticated(
                "This call needs an access token: send 'authorization: Bearer <token>' "
                "metadata (IssueToken gives one)."
            )
        return self.signer.verify_bearer(authorization)


@dataclass
class RunningServer:
    server: grpc.aio.Server
    port: int
    health: Any
    """The grpc_health aio HealthServicer (untyped upstream)."""

    async def stop(self, grace: float = 5.0) -> None:
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)


async def start_server(
    address: str,
    registrations: Sequence[Callable[[grpc.aio.Server], None]],
    service_names: Sequence[str],
) -> RunningServer:
    """Start a server on `address` (port 0 picks one) with health checking and reflection."""
    server = grpc.aio.server(options=SERVER_OPTIONS)
    for register in registrations:
        register(server)
    health_servicer = health.aio.HealthServicer()  # type: ignore[attr-defined]
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in (*service_names, ""):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    reflection.enable_server_reflection(
        (*service_names, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    port = server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"could not listen on {address}")
    await server.start()
    log.info("listening on port %d: %s", port, ", ".join(service_names))
    return RunningServer(server, port, health_servicer)


def client_channel(address: str) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)
