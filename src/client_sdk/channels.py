"""Opening a channel to one server, secured as the config says."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc

from client_sdk.config import TlsConfig

CHANNEL_OPTIONS: Sequence[tuple[str, Any]] = (
    ("grpc.max_receive_message_length", 8 * 1024 * 1024),
    ("grpc.max_send_message_length", 8 * 1024 * 1024),
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.keepalive_permit_without_calls", 1),
)


def credentials(tls: TlsConfig) -> grpc.ChannelCredentials:
    """The channel credentials of `tls` (not for plaintext)."""
    root = tls.ca_file.read_bytes() if tls.ca_file else None
    key = tls.key_file.read_bytes() if tls.key_file else None
    chain = tls.cert_file.read_bytes() if tls.cert_file else None
    return grpc.ssl_channel_credentials(root, key, chain)


def open_channel(
    address: str, tls: TlsConfig, options: Sequence[tuple[str, Any]] = CHANNEL_OPTIONS
) -> grpc.aio.Channel:
    if tls.plaintext:
        return grpc.aio.insecure_channel(address, options=options)
    channel_options = list(options)
    if tls.server_name:
        channel_options.append(("grpc.ssl_target_name_override", tls.server_name))
    return grpc.aio.secure_channel(address, credentials(tls), options=channel_options)
