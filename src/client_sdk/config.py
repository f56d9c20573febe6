"""How a device finds and talks to Meterline: one `ClientConfig`, with typed sub-configs for
channel security, retries, failover and keepalive. Every field is documented here and
checked when the config is made, so a setting that cannot work fails at start-up."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from client_sdk.updates import UpdateConfig


def _positive(name: str, value: float) -> None:
    if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a number of seconds above 0, not {value!r}")


def _whole(name: str, value: int, minimum: int = 1) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be a whole number of at least {minimum}, not {value!r}")


def _addresses(name: str, addresses: Sequence[str]) -> None:
    if isinstance(addresses, str):
        raise ValueError(f"{name} is a list of host:port strings, not one string")
    if not addresses:
        raise ValueError(f"{name} needs at least one host:port")
    for address in addresses:
        if not isinstance(address, str) or not address or any(c.isspace() for c in address):
            raise ValueError(f"{name}: {address!r} is not a host:port address")
        if "://" not in address and not address.startswith("unix:"):
            _, colon, port = address.rpartition(":")
            if not colon or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"{name}: {address!r} has no port; write host:port")
    if len(set(addresses)) != len(addresses):
        raise ValueError(f"{name} names an address twice: {list(addresses)}")


@dataclass(frozen=True)
class TlsConfig:
    """How the SDK secures its channels. TLS is on by default; plaintext must be asked for."""

    ca_file: Path | str | None = None
    """PEM bundle of the authorities to trust; None trusts the system's roots. A `str` is
    taken as a path, as everywhere in this config."""
    cert_file: Path | str | None = None
    """The device's own certificate (PEM), for servers that require mutual TLS."""
    key_file: Path | str | None = field(default=None, repr=False)
    """The private key of `cert_file` (PEM)."""
    server_name: str | None = None
    """The name to check in the server's certificate, when it differs from the address."""
    plaintext: bool = False
    """No TLS at all: only for development against servers on loopback."""

    def __post_init__(self) -> None:
        for name in ("ca_file", "cert_file", "key_file"):
            value = getattr(self, name)
            if isinstance(value, str):
                object.__setattr__(self, name, Path(value))
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together: give both or neither")
        if self.plaintext and (self.ca_file or self.cert_file):
            raise ValueError("plaintext=True cannot be combined with TLS files")


@dataclass(frozen=True)
class RetryConfig:
    """How one operation tries again after a failure the recovery policy calls recoverable
    (a server unavailable, a broken connection, a missed deadline). An operation is one
    unary call, or bringing the usage stream back after it broke. Each attempt goes to the
    best server at that moment (see `FailoverConfig`); the waits between attempts are
    random (full jitter) and grow exponentially."""

    initial_backoff: float = 0.1
    """Seconds: the first wait is random between 0 and this. Keep it small: the first retry
    usually goes to another server, which has no reason to be slow."""
    max_backoff: float = 2.0
    """Seconds: no wait between two attempts is longer than this."""
    max_attempts: int = 8
    """Attempts of one operation over all servers, the first included."""
    max_elapsed: float = 30.0
    """Seconds: no new attempt starts this long after the first began. The operation then
    raises `ServersUnavailable`."""

    def __post_init__(self) -> None:
        _positive("RetryConfig.initial_backoff", self.initial_backoff)
        _positive("RetryConfig.max_backoff", self.max_backoff)
        _whole("RetryConfig.max_attempts", self.max_attempts)
        _positive("RetryConfig.max_elapsed", self.max_elapsed)
        if self.max_backoff < self.initial_backoff:
            raise ValueError("RetryConfig.max_backoff cannot be less than initial_backoff")


@dataclass(frozen=True)
class FailoverConfig:
    """Deadlines that make a hung server count as surely as a dead one, and the circuit
    breaker each address has. Work goes to the first address of the list whose circuit is
    closed; a failure that the recovery policy calls recoverable counts against the
    address; at `failure_threshold` failures in a row its circuit opens and new work goes
    down the list. After `cool_down` the SDK asks the address's standard gRPC health
    service (grpc.health.v1) every `health_check_interval`; once it answers SERVING the
    circuit closes and new calls and streams go back to it: the primary is used again as
    soon as it is healthy. Streams that moved stay where they are until they break."""

    call_timeout: float = 10.0
    """Seconds: the deadline of each unary call attempt (start, stop, balance, login)."""
    ack_timeout: float = 2.0
    """Seconds: a usage update the server has not acknowledged this long after it was sent
    counts as the server being unavailable; the stream resumes on the next server. It
    bounds how long a frozen server holds a session's usage. Raise it for links whose round
    trip can be longer."""
    open_timeout: float = 5.0
    """Seconds: the same deadline for the first update on a newly opened stream, which
    takes the session over on that server (more work than an update, and done by many
    sessions at once after a failover)."""
    failure_threshold: int = 1
    """Recoverable failures in a row (on any call or stream to the address) that open its
    circuit. A success resets the count."""
    cool_down: float = 3.0
    """Seconds an open circuit waits before the first health check may close it."""
    health_check_interval: float = 1.0
    """Seconds between health checks of an address whose circuit is open past cool_down."""
    health_check_timeout: float = 1.0
    """Seconds: the deadline of one health check."""
    health_service: str = ""
    """The service name asked of grpc.health.v1; empty asks about the server as a whole."""
    max_reconnect_backoff: float = 2.0
    """Seconds: the longest a channel waits before it tries to connect again to a server
    that was unreachable, so a server that is back is found soon."""

    def __post_init__(self) -> None:
        _positive("FailoverConfig.call_timeout", self.call_timeout)
        _positive("FailoverConfig.ack_timeout", self.ack_timeout)
        _positive("FailoverConfig.open_timeout", self.open_timeout)
        _whole("FailoverConfig.failure_threshold", self.failure_threshold)
        _positive("FailoverConfig.cool_down", self.cool_down)
        _positive("FailoverConfig.health_check_interval", self.health_check_interval)
        _positive("FailoverConfig.health_check_timeout", self.health_check_timeout)
        _positive("FailoverConfig.max_reconnect_backoff", self.max_reconnect_backoff)


@dataclass(frozen=True)
class KeepAliveConfig:
    """HTTP/2 pings on each connection, so a connection that died without a word (a
    router's state lost, a cable pulled) is noticed while no call is running. Meterline's
    servers accept a ping every 10 seconds at most from a client with no call open."""

    interval: float = 20.0
    """Seconds between pings."""
    timeout: float = 10.0
    """Seconds: a ping not answered within this closes the connection."""
    permit_without_calls: bool = True
    """Ping also while no call or stream is open."""

    def __post_init__(self) -> None:
        _positive("KeepAliveConfig.interval", self.interval)
        _positive("KeepAliveConfig.timeout", self.timeout)


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
    heartbeat_interval: float | None = None
    """Seconds without a usage update after which a session resends its last cumulative
    count, so the server never ends it for silence while the application runs (it matters
    to sessions whose caller reports by hand). None: a third of the server's liveness
    timeout, which the SDK learns from the validity of each session's grant."""
    updates: UpdateConfig | None = None
    """The component-update check: the pinned signing key and what the device runs. With
    it, connecting checks for a newer component (`MeterlineClient.update_available`); the
    download and its verification happen only when asked; nothing is ever installed."""
    token_refresh_margin: float = 60.0
    """Refresh the access token this many seconds before it expires (at most a third of
    the token's lifetime before). A token the server finds expired anyway (a device clock
    that is wrong) is refreshed and the call made again, once."""
    tls: TlsConfig = field(default_factory=TlsConfig)
    """Channel security (TLS by default)."""
    retry: RetryConfig = field(default_factory=RetryConfig)
    """How an operation tries again after a recoverable failure."""
    failover: FailoverConfig = field(default_factory=FailoverConfig)
    """Deadlines, circuit breakers and health checks: when to leave a server, when to go back."""
    keep_alive: KeepAliveConfig = field(default_factory=KeepAliveConfig)
    """HTTP/2 pings on idle connections."""

    def __post_init__(self) -> None:
        _addresses("service_addresses", self.service_addresses)
        _addresses("auth_addresses", self.auth_addresses)
        if not self.client_id or not self.client_secret:
            raise ValueError("client_id and client_secret are both needed")
        if not (isinstance(self.report_interval, int | float) and self.report_interval > 0):
            raise ValueError("report_interval must be more than 0 seconds")
        if self.heartbeat_interval is not None:
            _positive("heartbeat_interval", self.heartbeat_interval)
        if not (
            isinstance(self.token_refresh_margin, int | float) and self.token_refresh_margin >= 0
        ):
            raise ValueError("token_refresh_margin must be 0 seconds or more")
        for name, kind in (
            ("tls", TlsConfig),
            ("retry", RetryConfig),
            ("failover", FailoverConfig),
            ("keep_alive", KeepAliveConfig),
        ):
            if not isinstance(getattr(self, name), kind):
                raise ValueError(f"{name} must be a {kind.__name__}")
