"""Configuration: the one place that reads the environment. Every `METERLINE_*` variable
is listed here, with its default, and documented in docs/configuration.md."""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_RATING_ADDRESS = "127.0.0.1:50051"
DEFAULT_BILLING_ADDRESS = "127.0.0.1:50052"
DEFAULT_SERVICE_ADDRESS = "127.0.0.1:50053"


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


@dataclass(frozen=True)
class Settings:
    endpoints: Endpoints = field(default_factory=Endpoints)
    stores: Stores = field(default_factory=Stores)
    quota: QuotaPolicy = field(default_factory=QuotaPolicy)
    engine: SessionEngine = field(default_factory=SessionEngine)
    data_dir: Path = Path(".meterline")
    """`METERLINE_DATA_DIR`: the embedded servers' data, the generated token secret."""
    token_secret: str = ""
    """`METERLINE_TOKEN_SECRET`: the key every service signs and checks tokens with (at least
    32 characters). Unset: one is generated once into DATA_DIR/token-secret."""
    token_ttl_seconds: int = 900
    """`METERLINE_TOKEN_TTL_SECONDS`: how long an issued access token is valid."""
    migrate_on_start: bool = True
    """`METERLINE_MIGRATE_ON_START`: each service upgrades its database schema on start."""
    log_level: str = "INFO"
    """`METERLINE_LOG_LEVEL`: DEBUG, INFO, WARNING or ERROR."""


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


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Read every METERLINE_* variable once."""
    env = os.environ if env is None else env
    data_dir = Path(env.get("METERLINE_DATA_DIR", "") or ".meterline")
    return Settings(
        endpoints=Endpoints(
            rating=env.get("METERLINE_RATING_ADDRESS") or DEFAULT_RATING_ADDRESS,
            billing=env.get("METERLINE_BILLING_ADDRESS") or DEFAULT_BILLING_ADDRESS,
            service=env.get("METERLINE_SERVICE_ADDRESS") or DEFAULT_SERVICE_ADDRESS,
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
        data_dir=data_dir,
        token_secret=env.get("METERLINE_TOKEN_SECRET", ""),
        token_ttl_seconds=_int(env, "METERLINE_TOKEN_TTL_SECONDS", 900, minimum=10),
        migrate_on_start=_bool(env, "METERLINE_MIGRATE_ON_START", True),
        log_level=(env.get("METERLINE_LOG_LEVEL") or "INFO").upper(),
    )


def token_secret(settings: Settings) -> str:
    """The configured secret, or the one generated once into the data folder."""
    if settings.token_secret:
        if len(settings.token_secret) < 32:
            raise ConfigError("METERLINE_TOKEN_SECRET must be at least 32 characters long")
        return settings.token_secret
    path = settings.data_dir / "token-secret"
    if not path.exists():
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(secrets.token_urlsafe(48))
    return path.read_text().strip()


def require_url(value: str, variable: str) -> str:
    if not value:
        raise ConfigError(
            f"{variable} is not set. Set it to a PostgreSQL or Redis URL, or run "
            "`meterline up`, which starts the embedded default."
        )
    return value
