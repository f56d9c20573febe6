"""Opening a channel to one server, secured as the config says."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc

from client_sdk.config import FailoverConfig, KeepAliveConfig, TlsConfig

MAX_MESSAGE_BYTES = 8 * 1024 * 1024


def channel_options(
    keep_alive: KeepAliveConfig, failover: FailoverConfig
) -> tuple[tuple[str, Any], ...]:
    """The channel arguments of a config: message limits, keepalive pings, reconnect pace."""
    reconnect_ms = int(failover.max_reconnect_backoff * 1000)
    return (
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.keepalive_time_ms", int(keep_alive.interval * 1000)),
        ("grpc.keepalive_timeout_ms", int(keep_alive.timeout * 1000)),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.keepalive_permit_without_calls", int(keep_alive.permit_without_calls)),
        ("grpc.initial_reconnect_backoff_ms", min(1000, reconnect_ms)),
        ("grpc.min_reconnect_backoff_ms", min(1000, reconnect_ms)),
        ("grpc.max_reconnect_backoff_ms", reconnect_ms),
        # The SDK does its own retries, across servers, under its recovery policy.
        ("grpc.enable_retries", 0),
    )


CHANNEL_OPTIONS: Sequence[tuple[str, Any]] = channel_options(KeepAliveConfig(), FailoverConfig())


def credentials(tls: TlsConfig) -> grpc.ChannelCredentials:
    """The channel credentials of `tls` (not for plaintext)."""
    root = _read(tls.ca_file)
    key = _read(tls.key_file)
    chain = _read(tls.cert_file)
    return grpc.ssl_channel_credentials(root, key, chain)


def _read(path: Path | str | None) -> bytes | None:
    return Path(path).read_bytes() if path else None


def open_channel(
    address: str, tls: TlsConfig, options: Sequence[tuple[str, Any]] = CHANNEL_OPTIONS
) -> grpc.aio.Channel:
    if tls.plaintext:
        return grpc.aio.insecure_channel(address, options=options)
    arguments = list(options)
    if tls.server_name:
        arguments.append(("grpc.ssl_target_name_override", tls.server_name))
    return grpc.aio.secure_channel(address, credentials(tls), options=arguments)
