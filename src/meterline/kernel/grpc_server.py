"""Building a Meterline gRPC server and channel: limits, TLS, health checking, reflection,
auth. The credentials come from `meterline.kernel.tls`."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from meterline.kernel import tracing
from meterline.kernel.errors import Unauthenticated
from meterline.kernel.principals import Principal
from meterline.kernel.reflection import enable_reflection
from meterline.kernel.request_guard import RequestGuard
from meterline.kernel.tokens import TokenSigner

log = logging.getLogger(__name__)

# Messages above this are refused with RESOURCE_EXHAUSTED before they reach a servicer.
MAX_MESSAGE_BYTES = 8 * 1024 * 1024
# Calls a server lets wait to be taken up before it starts cancelling new ones at random
# (and, from the hard limit, all of them). See SERVER_OPTIONS.
MAX_PENDING_CALLS = 20_000
MAX_PENDING_CALLS_HARD = 30_000

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
    # Clients ping every 20 s (CHANNEL_OPTIONS, the SDK's KeepAliveConfig), also on a
    # connection with no call open: accept that, or the server answers a third such ping
    # with GOAWAY "too_many_pings" and every stream on the connection fails.
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.so_reuseport", 0),
    # Calls that arrived but that the event loop has not taken up yet. gRPC's defaults
    # (1,000, then at random up to 3,000, then every one) cancel the rest with a bare
    # CANCELLED, which a device cannot tell from a server that dropped it: thousands of
    # devices reconnecting at once after a failover are expected, and their calls should
    # wait (each has its deadline) rather than be shed. About 16 KB per waiting call.
    ("grpc.server.max_pending_requests", MAX_PENDING_CALLS),
    ("grpc.server.max_pending_requests_hard_limit", MAX_PENDING_CALLS_HARD),
)


class Authenticator:
    """Turns a call's `authorization` metadata into a Principal, or refuses it."""

    def __init__(self, signer: TokenSigner) -> None:
        self.signer = signer

    def principal(self, context: grpc.aio.ServicerContext[Any, Any]) -> Principal:
        return self.principal_until(context)[0]

    def principal_until(
        self, context: grpc.aio.ServicerContext[Any, Any]
    ) -> tuple[Principal, float]:
        """The caller and when its token expires (a Unix time), for streams that must end
        then."""
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
        return self.signer.verify_bearer_until(authorization)


@dataclass
class RunningServer:
    server: grpc.aio.Server
    port: int
    health: Any
    """The grpc_health aio HealthServicer (untyped upstream)."""

    async def stop(self, grace: float = 5.0) -> None:
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)


def listen(
    server: grpc.aio.Server, address: str, credentials: grpc.ServerCredentials | None
) -> int:
    """Add `address` (port 0 picks one) to `server`, with TLS unless `credentials` is None
    (`tls.server_credentials` gives None only when METERLINE_PLAINTEXT=1 asked for it);
    the port."""
    if credentials is None:
        port = server.add_insecure_port(address)
    else:
        port = server.add_secure_port(address, credentials)
    if port == 0:
        raise OSError(f"could not listen on {address}")
    return port


async def start_server(
    address: str,
    registrations: Sequence[Callable[[grpc.aio.Server], None]],
    service_names: Sequence[str],
    credentials: grpc.ServerCredentials | None,
) -> RunningServer:
    """Start a server on `address` (port 0 picks one) with health checking and reflection,
    listening with `credentials` (from `tls.server_credentials`; None: plaintext)."""
    # Every call passes the request guard: undecodable bodies and unstorable text are
    # refused with INVALID_ARGUMENT before a servicer sees them.
    # With tracing on, its span is outermost, so a refused request is traced as well.
    server = grpc.aio.server(
        options=SERVER_OPTIONS,
        interceptors=(*tracing.server_interceptors(), RequestGuard()),
    )
    for register in registrations:
        register(server)
    health_servicer = health.aio.HealthServicer()  # type: ignore[attr-defined]
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in (*service_names, ""):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    enable_reflection(server, (*service_names, health.SERVICE_NAME))
    port = listen(server, address, credentials)
    await server.start()
    names = ", ".join(service_names)
    if credentials is None:
        log.warning("listening on port %d WITHOUT TLS (METERLINE_PLAINTEXT=1): %s", port, names)
    else:
        log.info("listening on port %d with TLS: %s", port, names)
    return RunningServer(server, port, health_servicer)


def client_channel(
    address: str,
    credentials: grpc.ChannelCredentials | None,
    options: Sequence[tuple[str, Any]] = CHANNEL_OPTIONS,
) -> grpc.aio.Channel:
    """A channel to `address`, with TLS unless `credentials` is None (from
    `tls.channel_credentials`, which gives None only when plaintext was asked for)."""
    # With tracing on, each call is a CLIENT span whose context travels in its metadata.
    interceptors = tracing.client_interceptors() or None
    if credentials is None:
        return grpc.aio.insecure_channel(address, options=options, interceptors=interceptors)
    return grpc.aio.secure_channel(address, credentials, options=options, interceptors=interceptors)


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)
