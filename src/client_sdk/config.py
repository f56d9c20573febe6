"""How a device finds and talks to Meterline."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field


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

    def __post_init__(self) -> None:
        if not self.service_addresses:
            raise ValueError("service_addresses needs at least one host:port")
        if not self.auth_addresses:
            raise ValueError("auth_addresses needs at least one host:port")
        if not self.client_id or not self.client_secret:
            raise ValueError("client_id and client_secret are both needed")
        if self.report_interval <= 0:
            raise ValueError("report_interval must be more than 0 seconds")
