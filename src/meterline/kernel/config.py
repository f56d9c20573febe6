"""Configuration: the one place that reads the environment. Every `METERLINE_*` variable
is listed here, with its default, and documented in docs/configuration.md."""

from __future__ import annotations

import enum
import hashlib
import hmac
import os
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from meterline.kernel.money import AmountError, parse_amount

DEFAULT_RATING_ADDRESS = "127.0.0.1:50051"
DEFAULT_BILLING_ADDRESS = "127.0.0.1:50052"
DEFAULT_SERVICE_ADDRESS = "127.0.0.1:50053"
DEFAULT_WEB_ADDRESS = "127.0.0.1:50054"
PEER_HEALTH_CHECK_MODES = ("auto", "on", "off")


class ConfigError(ValueError):
    """A setting that is missing or cannot be used."""


@dataclass(frozen=True)
class Endpoints:
    """Where the services listen, and where clients find them."""

    rating: str = DEFAULT_RATING_ADDRESS
    """`METERLINE_RATING_ADDRESS`: host:port of the rating service."""
    billing: str = DEFAULT_BILLING_ADDRESS
    """`METERLINE_BILLING_ADDRESS`: host:port of the billing manager (and AuthService)."""
    service: str = DEFAULT_SERVICE_ADDRESS
    """`METERLINE_SERVICE_ADDRESS`: host:port of the service manager."""
    rating_peers: str = ""
    """`METERLINE_RATING_PEERS`: the rating instances the service manager calls: a
    comma-separated list of IP host:port, or one `dns:///name:port` that resolves to every
    instance; calls are spread over them (`round_robin`, `kernel/peer_targets.py`). Unset:
    METERLINE_RATING_ADDRESS."""
    billing_peers: str = ""
    """`METERLINE_BILLING_PEERS`: the billing manager instances the service manager calls,
    in the same forms. Unset: METERLINE_BILLING_ADDRESS."""
    peer_health_checks: str = "auto"
    """`METERLINE_PEER_HEALTH_CHECKS`: whether the service manager sends calls only to the
    peer instances whose health says SERVING (gRPC client-side health checking): `auto`
    for the peer settings that name several instances (a list, a `dns:` target), `on` for
    every peer setting, `off` for none."""

    @property
    def rating_target(self) -> str:
        """The rating instances a caller dials: METERLINE_RATING_PEERS or the address."""
        return self.rating_peers or self.rating

    @property
    def billing_target(self) -> str:
        """The billing instances a caller dials: METERLINE_BILLING_PEERS or the address."""
        return self.billing_peers or self.billing


@dataclass(frozen=True)
class Stores:
    """Database and Redis URLs. Empty means: not configured (`meterline up` then starts the
    embedded default)."""

    rating_database_url: str = ""
    """`METERLINE_RATING_DATABASE_URL`: the rating database (tariffs)."""
    billing_database_url: str = ""
    """`METERLINE_BILLING_DATABASE_URL`: the account database (accounts, ledger, holds)."""
    service_database_url: str = ""
    """`METERLINE_SERVICE_DATABASE_URL`: the service database (gateways, sessions, records)."""
    redis_url: str = ""
    """`METERLINE_REDIS_URL`: presence (the active users)."""
    redis_prefix: str = "meterline"
    """`METERLINE_REDIS_PREFIX`: prefix of every Redis key, so installs can share a Redis."""


@dataclass(frozen=True)
class QuotaPolicy:
    """How much usage one quota slice grants, per unit, and how long a grant lasts."""

    slice_seconds: int = 60
    """`METERLINE_SLICE_SECONDS`: seconds granted per slice."""
    slice_bytes: int = 10_000_000
    """`METERLINE_SLICE_BYTES`: bytes granted per slice."""
    slice_messages: int = 20
    """`METERLINE_SLICE_MESSAGES`: messages granted per slice."""
    slice_events: int = 20
    """`METERLINE_SLICE_EVENTS`: application events granted per slice."""
    validity_seconds: int = 120
    """`METERLINE_QUOTA_VALIDITY_SECONDS`: a session with no usage update for this long is
    terminated (liveness timeout)."""
    low_balance_micros: int = 500_000
    """`METERLINE_LOW_BALANCE_THRESHOLD`: an amount in the account's currency (default
    0.50); once the balance a session would leave falls below it, the session's answers,
    the account's watchers and the gateway get a low-balance notice. 0 turns it off."""


@dataclass(frozen=True)
class SessionEngine:
    """How the service manager keeps the sessions whose streams it holds."""

    usage_flush_ms: int = 50
    """`METERLINE_USAGE_FLUSH_MS`: usage of the sessions an instance holds is written to the
    service database in one statement this often (and at every new slice, settlement and
    shutdown). A client that never returns is settled at most this far behind."""
    reserve_ahead_at: float = 0.5
    """`METERLINE_RESERVE_AHEAD_AT`: the share of a quota slice used (0 < x <= 1) at which
    the next slice is reserved, in the background, so an update never waits for it."""
    max_sequence_gap: int = 10_000
    """`METERLINE_MAX_SEQUENCE_GAP`: a usage update whose sequence is more than this far
    ahead of the last one applied is refused with INVALID_ARGUMENT."""
    max_watches_per_caller: int = 20
    """`METERLINE_MAX_WATCHES_PER_CALLER`: open WatchAccount and WatchTerminations streams
    one credential may have on one instance; more get RESOURCE_EXHAUSTED."""
    max_meter_streams_per_caller: int = 20_000
    """`METERLINE_MAX_METER_STREAMS_PER_CALLER`: open Meter streams one credential may have
    on one instance (a gateway meters many subscribers); more get RESOURCE_EXHAUSTED."""


class ClientAuth(enum.StrEnum):
    """Whether a server asks its clients for a certificate."""

    NONE = "none"
    """Any client may connect; callers prove who they are with their token only."""
    REQUIRE = "require"
    """Mutual TLS: a client must present a certificate signed by METERLINE_TLS_CA_FILE."""


@dataclass(frozen=True)
class TlsSettings:
    """How a process secures its channels: TLS unless plaintext is asked for. Read and
    checked into gRPC credentials by `meterline.kernel.tls`."""

    cert_file: Path | None = None
    """`METERLINE_TLS_CERT_FILE`: this process's certificate chain (PEM). A service serves
    it, and presents it as its client certificate on calls to its peers; the CLI presents
    it to servers that require client certificates."""
    key_file: Path | None = field(default=None, repr=False)
    """`METERLINE_TLS_KEY_FILE`: the private key of `cert_file` (PEM, unencrypted)."""
    ca_file: Path | None = None
    """`METERLINE_TLS_CA_FILE`: the authorities (PEM bundle) trusted for outgoing calls and,
    with client_auth=require, for client certificates. Unset: the system's roots."""
    client_auth: ClientAuth = ClientAuth.NONE
    """`METERLINE_TLS_CLIENT_AUTH`: `none` or `require` (mutual TLS)."""
    plaintext: bool = False
    """`METERLINE_PLAINTEXT`: no TLS at all, on servers and channels alike. Only for
    development on loopback; a service with neither this nor a certificate refuses to
    start."""

    @property
    def configured(self) -> bool:
        """Whether any TLS setting was given (else a client may look elsewhere, e.g. at
        the stack `meterline up` runs)."""
        return bool(self.plaintext or self.cert_file or self.key_file or self.ca_file)


@dataclass(frozen=True)
class ComponentSettings:
    """Client components the service manager hands out for the SDK's update check."""

    signing_key_file: Path | None = None
    """`METERLINE_COMPONENT_SIGNING_KEY_FILE`: the Ed25519 private key (PEM, PKCS#8,
    unencrypted) `meterline component publish` signs with. Unset: one is generated once
    into DATA_DIR/component-signing-key.pem. A file named here must exist."""
    max_bytes: int = 256 * 1024 * 1024
    """`METERLINE_COMPONENT_MAX_BYTES`: the largest component the service manager accepts."""


@dataclass(frozen=True)
class GatewaySettings:
    """The gateway registry, session tickets and the gateways' durable notice streams."""

    liveness_seconds: int = 30
    """`METERLINE_GATEWAY_LIVENESS_SECONDS`: a gateway not heard of for this long (no
    heartbeat, no open WatchTerminations) gets no new sessions, unless it was registered
    with its liveness check off."""
    notice_retention_seconds: int = 7 * 24 * 3600
    """`METERLINE_GATEWAY_NOTICE_RETENTION_SECONDS`: notices (terminations, final units,
    low balance) are kept this long for a gateway to resume from its cursor (default 7
    days); older ones are deleted."""
    ticket_key_file: Path | None = None
    """`METERLINE_SESSION_TICKET_KEY_FILE`: the Ed25519 private key (PEM, PKCS#8,
    unencrypted) session tickets are signed with. Unset: a key derived from the token
    secret, so every service manager of an installation signs with the same key."""


@dataclass(frozen=True)
class WebSettings:
    """The end users' web page (`meterline web`, docs/web.md). It serves HTTPS with this
    process's TLS certificate (METERLINE_TLS_CERT_FILE and KEY_FILE, the services' own)
    and reaches the billing manager and the service manager at their addresses above, as
    a client, over TLS."""

    address: str = DEFAULT_WEB_ADDRESS
    """`METERLINE_WEB_ADDRESS`: host:port the page listens on (port 0 picks one)."""
    session_hours: int = 8
    """`METERLINE_WEB_SESSION_HOURS`: a signed-in browser session ends this long after its
    sign-in (the page then asks for the password again)."""


@dataclass(frozen=True)
class Settings:
    endpoints: Endpoints = field(default_factory=Endpoints)
    stores: Stores = field(default_factory=Stores)
    quota: QuotaPolicy = field(default_factory=QuotaPolicy)
    engine: SessionEngine = field(default_factory=SessionEngine)
    tls: TlsSettings = field(default_factory=TlsSettings)
    components: ComponentSettings = field(default_factory=ComponentSettings)
    gateways: GatewaySettings = field(default_factory=GatewaySettings)
    web: WebSettings = field(default_factory=WebSettings)
    data_dir: Path = Path(".meterline")
    """`METERLINE_DATA_DIR`: the embedded servers' data, the generated token secret."""
    token_secret: str = ""
    """`METERLINE_TOKEN_SECRET`: the key every service signs and checks tokens with (at least
    32 characters). Unset: one is generated once into DATA_DIR/token-secret."""
    voucher_secret: str = ""
    """`METERLINE_VOUCHER_SECRET`: the key voucher codes are hashed with (HMAC-SHA256, at
    least 32 characters); every billing manager of an installation needs the same one.
    Unset: one derived from the token secret."""
    hold_ttl_seconds: int = 24 * 3600
    """`METERLINE_HOLD_TTL_SECONDS`: how long a credit hold stays open when its Reserve
    names no TTL (1 second to 30 days; default 1 day); an open hold past its expiry is
    released by the billing manager's sweep."""
    hold_sweep_seconds: int = 30
    """`METERLINE_HOLD_SWEEP_SECONDS`: how often each billing manager releases expired
    holds."""
    token_ttl_seconds: int = 900
    """`METERLINE_TOKEN_TTL_SECONDS`: how long an issued access token is valid."""
    migrate_on_start: bool = True
    """`METERLINE_MIGRATE_ON_START`: each service upgrades its database schema on start."""
    log_level: str = "INFO"
    """`METERLINE_LOG_LEVEL`: DEBUG, INFO, WARNING or ERROR."""
    metrics_address: str = ""
    """`METERLINE_METRICS_ADDRESS`: host:port where this process serves Prometheus
    /metrics (port 0 picks one, logged); empty: not served. Each process needs its own."""
    log_format: str = "text"
    """`METERLINE_LOG_FORMAT`: text (one readable line per record) or json (one JSON
    object per line, for log collectors)."""
    traces: str = "off"
    """`METERLINE_TRACES`: off, console (one JSON line per span on stdout) or otlp (to the
    collector at the standard OTEL_EXPORTER_OTLP_ENDPOINT). Unset: the standard
    OTEL_TRACES_EXPORTER (otlp, console or none), else off."""
    trace_service_name: str = ""
    """`OTEL_SERVICE_NAME`: the service.name of this process's spans. Unset: meterline-rating,
    meterline-billing or meterline-service."""


def _int(env: Mapping[str, str], name: str, default: int, minimum: int = 1) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise ConfigError(f"{name}={raw!r} is not a whole number") from exc
    if value < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, not {value}")
    return value


def _fraction(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError as exc:
        raise ConfigError(f"{name}={raw!r} is not a number") from exc
    if not 0 < value <= 1:
        raise ConfigError(f"{name} must be more than 0 and at most 1, not {value}")
    return value


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name}={raw!r} is not true or false")


def _amount(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = parse_amount(raw)
    except AmountError as exc:
        raise ConfigError(f"{name}={raw!r}: {exc}") from exc
    if value < 0:
        raise ConfigError(f"{name} cannot be negative, not {raw}")
    return value


def _path(env: Mapping[str, str], name: str) -> Path | None:
    raw = env.get(name, "").strip()
    return Path(raw).expanduser() if raw else None


def _tls(env: Mapping[str, str]) -> TlsSettings:
    raw_auth = (env.get("METERLINE_TLS_CLIENT_AUTH", "").strip() or "none").lower()
    try:
        client_auth = ClientAuth(raw_auth)
    except ValueError as exc:
        raise ConfigError(
            f"METERLINE_TLS_CLIENT_AUTH={raw_auth!r} is not one of: none, require"
        ) from exc
    tls = TlsSettings(
        cert_file=_path(env, "METERLINE_TLS_CERT_FILE"),
        key_file=_path(env, "METERLINE_TLS_KEY_FILE"),
        ca_file=_path(env, "METERLINE_TLS_CA_FILE"),
        client_auth=client_auth,
        plaintext=_bool(env, "METERLINE_PLAINTEXT", False),
    )
    if (tls.cert_file is None) != (tls.key_file is None):
        raise ConfigError(
            "METERLINE_TLS_CERT_FILE and METERLINE_TLS_KEY_FILE go together: set both or neither"
        )
    if tls.plaintext and (tls.cert_file or tls.ca_file):
        raise ConfigError(
            "METERLINE_PLAINTEXT=1 turns TLS off: unset it, or unset METERLINE_TLS_CERT_FILE, "
            "METERLINE_TLS_KEY_FILE and METERLINE_TLS_CA_FILE"
        )
    if tls.client_auth is ClientAuth.REQUIRE and tls.plaintext:
        raise ConfigError("METERLINE_TLS_CLIENT_AUTH=require needs TLS: unset METERLINE_PLAINTEXT")
    return tls


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Read every METERLINE_* variable once."""
    env = os.environ if env is None else env
    data_dir = Path(env.get("METERLINE_DATA_DIR", "") or ".meterline")
    return Settings(
        endpoints=Endpoints(
            rating=env.get("METERLINE_RATING_ADDRESS") or DEFAULT_RATING_ADDRESS,
            billing=env.get("METERLINE_BILLING_ADDRESS") or DEFAULT_BILLING_ADDRESS,
            service=env.get("METERLINE_SERVICE_ADDRESS") or DEFAULT_SERVICE_ADDRESS,
            rating_peers=(env.get("METERLINE_RATING_PEERS") or "").strip(),
            billing_peers=(env.get("METERLINE_BILLING_PEERS") or "").strip(),
            peer_health_checks=_one_of(
                env, "METERLINE_PEER_HEALTH_CHECKS", PEER_HEALTH_CHECK_MODES, "auto"
            ),
        ),
        stores=Stores(
            rating_database_url=env.get("METERLINE_RATING_DATABASE_URL", ""),
            billing_database_url=env.get("METERLINE_BILLING_DATABASE_URL", ""),
            service_database_url=env.get("METERLINE_SERVICE_DATABASE_URL", ""),
            redis_url=env.get("METERLINE_REDIS_URL", ""),
            redis_prefix=env.get("METERLINE_REDIS_PREFIX") or "meterline",
        ),
        quota=QuotaPolicy(
            slice_seconds=_int(env, "METERLINE_SLICE_SECONDS", 60),
            slice_bytes=_int(env, "METERLINE_SLICE_BYTES", 10_000_000),
            slice_messages=_int(env, "METERLINE_SLICE_MESSAGES", 20),
            slice_events=_int(env, "METERLINE_SLICE_EVENTS", 20),
            validity_seconds=_int(env, "METERLINE_QUOTA_VALIDITY_SECONDS", 120),
            low_balance_micros=_amount(env, "METERLINE_LOW_BALANCE_THRESHOLD", 500_000),
        ),
        engine=SessionEngine(
            usage_flush_ms=_int(env, "METERLINE_USAGE_FLUSH_MS", 50),
            reserve_ahead_at=_fraction(env, "METERLINE_RESERVE_AHEAD_AT", 0.5),
            max_sequence_gap=_int(env, "METERLINE_MAX_SEQUENCE_GAP", 10_000),
            max_watches_per_caller=_int(env, "METERLINE_MAX_WATCHES_PER_CALLER", 20),
            max_meter_streams_per_caller=_int(
                env, "METERLINE_MAX_METER_STREAMS_PER_CALLER", 20_000
            ),
        ),
        tls=_tls(env),
        components=ComponentSettings(
            signing_key_file=_path(env, "METERLINE_COMPONENT_SIGNING_KEY_FILE"),
            max_bytes=_int(env, "METERLINE_COMPONENT_MAX_BYTES", 256 * 1024 * 1024),
        ),
        gateways=GatewaySettings(
            liveness_seconds=_int(env, "METERLINE_GATEWAY_LIVENESS_SECONDS", 30),
            notice_retention_seconds=_int(
                env, "METERLINE_GATEWAY_NOTICE_RETENTION_SECONDS", 7 * 24 * 3600, minimum=60
            ),
            ticket_key_file=_path(env, "METERLINE_SESSION_TICKET_KEY_FILE"),
        ),
        web=WebSettings(
            address=(env.get("METERLINE_WEB_ADDRESS") or "").strip() or DEFAULT_WEB_ADDRESS,
            session_hours=_int(env, "METERLINE_WEB_SESSION_HOURS", 8),
        ),
        data_dir=data_dir,
        token_secret=env.get("METERLINE_TOKEN_SECRET", ""),
        voucher_secret=env.get("METERLINE_VOUCHER_SECRET", ""),
        hold_ttl_seconds=_int(env, "METERLINE_HOLD_TTL_SECONDS", 24 * 3600),
        hold_sweep_seconds=_int(env, "METERLINE_HOLD_SWEEP_SECONDS", 30),
        token_ttl_seconds=_int(env, "METERLINE_TOKEN_TTL_SECONDS", 900, minimum=10),
        migrate_on_start=_bool(env, "METERLINE_MIGRATE_ON_START", True),
        log_level=_one_of(env, "METERLINE_LOG_LEVEL", LOG_LEVELS, "INFO"),
        log_format=_one_of(env, "METERLINE_LOG_FORMAT", LOG_FORMATS, "text"),
        metrics_address=_metrics_address(env),
        traces=_traces(env),
        trace_service_name=(env.get("OTEL_SERVICE_NAME") or "").strip(),
    )


TRACE_EXPORTERS = ("off", "console", "otlp")


def _traces(env: Mapping[str, str]) -> str:
    """METERLINE_TRACES, else what the standard OTEL_TRACES_EXPORTER asks for."""
    if (env.get("METERLINE_TRACES") or "").strip():
        return _one_of(env, "METERLINE_TRACES", TRACE_EXPORTERS, "off")
    standard = (env.get("OTEL_TRACES_EXPORTER") or "").strip().lower()
    if standard in ("", "none"):
        return "off"
    if standard in ("otlp", "console"):
        return standard
    raise ConfigError(
        f"OTEL_TRACES_EXPORTER={standard!r}: Meterline sends traces with otlp or console "
        "(or none); set one of those, or METERLINE_TRACES."
    )


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
LOG_FORMATS = ("text", "json")


def _one_of(env: Mapping[str, str], name: str, allowed: Sequence[str], default: str) -> str:
    """A setting that must be one of `allowed` (case-insensitive); refused otherwise,
    never quietly taken as the default."""
    value = (env.get(name) or "").strip()
    if not value:
        return default
    for choice in allowed:
        if value.lower() == choice.lower():
            return choice
    raise ConfigError(f"{name}={value!r} is not one of {', '.join(allowed)}.")


TOKEN_SECRET_FILE = "token-secret"
MIN_TOKEN_SECRET_LENGTH = 32


def token_secret(settings: Settings, create: bool = True) -> str:
    """The configured secret, or the one in the data folder: generated there once when
    `create` (what `meterline up` and a service do), else it must exist (what the CLI
    does: a new secret would sign tokens no running service accepts)."""
    if settings.token_secret:
        if len(settings.token_secret) < MIN_TOKEN_SECRET_LENGTH:
            raise ConfigError(
                f"METERLINE_TOKEN_SECRET is {len(settings.token_secret)} characters long; "
                f"a token secret has at least {MIN_TOKEN_SECRET_LENGTH}"
            )
        return settings.token_secret
    path = settings.data_dir / TOKEN_SECRET_FILE
    if not path.exists():
        if not create:
            raise ConfigError(
                f"no Meterline installation here: METERLINE_TOKEN_SECRET is not set and "
                f"{path.resolve()} does not exist. Run this where you ran `meterline up` "
                "(or set METERLINE_DATA_DIR to its data folder), or set METERLINE_TOKEN_SECRET "
                "to the services' secret"
            )
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(secrets.token_urlsafe(48))
    try:
        secret = path.read_text().strip()
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"cannot read the token secret {path.resolve()}: {error}") from error
    if len(secret) < MIN_TOKEN_SECRET_LENGTH:
        raise ConfigError(
            f"the token secret file {path.resolve()} holds {len(secret)} characters; a token "
            f"secret has at least {MIN_TOKEN_SECRET_LENGTH}. Restore the file, or delete it "
            "and restart the stack (`meterline down`, `meterline up`) to make a new one"
        )
    return secret


def voucher_secret(settings: Settings) -> str:
    """The key voucher codes are hashed with: METERLINE_VOUCHER_SECRET, or else one derived
    from the token secret (HMAC-SHA256), so every billing manager of an installation
    agrees with nothing more to distribute. Set it on its own before the token secret is
    ever changed: a new voucher secret makes every unredeemed voucher unknown."""
    if settings.voucher_secret:
        if len(settings.voucher_secret) < MIN_TOKEN_SECRET_LENGTH:
            raise ConfigError(
                f"METERLINE_VOUCHER_SECRET is {len(settings.voucher_secret)} characters long; "
                f"a voucher secret has at least {MIN_TOKEN_SECRET_LENGTH}"
            )
        return settings.voucher_secret
    return hmac.new(
        token_secret(settings).encode(), b"meterline voucher codes v1", hashlib.sha256
    ).hexdigest()


def component_signing_key_file(settings: Settings) -> tuple[Path, bool]:
    """Where the component signing key is, and whether it was configured (a configured
    file must exist; the default one in the data folder is made on first use)."""
    configured = settings.components.signing_key_file
    if configured is not None:
        return configured, True
    return settings.data_dir / "component-signing-key.pem", False


def _metrics_address(env: Mapping[str, str]) -> str:
    """METERLINE_METRICS_ADDRESS: empty (no endpoint) or host:port."""
    address = (env.get("METERLINE_METRICS_ADDRESS") or "").strip()
    port = address.rpartition(":")[2]
    if address and not (port.isdigit() and int(port) <= 65535):
        raise ConfigError(
            f"METERLINE_METRICS_ADDRESS {address!r} is not host:port (e.g. 127.0.0.1:9464)"
        )
    return address


def require_url(value: str, variable: str) -> str:
    if not value:
        raise ConfigError(
            f"{variable} is not set. Set it to a "
            f"{'Redis' if 'REDIS' in variable else 'PostgreSQL'} URL, or run "
            "`meterline up`, which starts the embedded default."
        )
    return value
