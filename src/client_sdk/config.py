"""How a device finds and talks to Meterline."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class TlsConfig:
    """How the SDK secures its channels. TLS is on by default; plaintext must be asked for."""

    ca_file: Path | None = None
    """PEM bundle of the authorities to trust; None trusts the system's roots."""
    cert_file: Path | None = None
    """The device's own certificate (PEM), for servers that require mutual TLS."""
    key_file: Path | None = field(default=None, repr=False)
    """The private key of `cert_file` (PEM)."""
    server_name: str | None = None
    """The name to check in the server's certificate, when it differs from the address."""
    plaintext: bool = False
    """No TLS at all: only for development against servers on loopback."""

    def __post_init__(self) -> None:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together: give both or neither")
        if self.plaintext and (self.ca_file or self.cert_file):
            raise ValueError("plaintext=True cannot be combined with TLS files")


@dataclass(frozen=True)
class ClientConfig:
    """Everything the SDK needs; only the addresses and the credential are required."""

    service_addresses: Sequence[str]
    """Service managers as host:port, primary first; the SDK fails over down the list."""
    auth_addresses: Sequence[str]
    """Billing managers (which host AuthService) as host:port, primary first."""
    client_id: str
    """The device credential's id (`meterline credential issue --account ...`)."""
    client_secret: str = field(repr=False)
    """The device credential's secret; never logged."""
    report_interval: float = 1.0
    """Seconds between automatic usage updates when a usage source is given."""
    call_timeout: float = 10.0
    """Deadline of each unary call, in seconds."""
    token_refresh_margin: float = 60.0
    """Refresh the access token this many seconds before it expires."""
    max_failover_attempts: int = 6
    """How many times one operation may move on to the next server before giving up."""
    tls: TlsConfig = field(default_factory=TlsConfig)
    """Channel security (TLS by default)."""

    def __post_init__(self) -> None:
        if not self.service_addresses:
            raise ValueError("service_addresses needs at least one host:port")
        if not self.auth_addresses:
            raise ValueError("auth_addresses needs at least one host:port")
        if not self.client_id or not self.client_secret:
            raise ValueError("client_id and client_secret are both needed")
        if self.report_interval <= 0:
            raise ValueError("report_interval must be more than 0 seconds")
