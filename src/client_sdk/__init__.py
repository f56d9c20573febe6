"""Meterline's client SDK: the billing component a device embeds.

async with MeterlineClient(config) as client:
    session = await client.start_service(ServiceType.VOICE, "+442071234567")
    await session.report(42)
    record = await session.stop()

The names below are the public surface; the modules behind them may change. Without
asyncio, `client_sdk.sync` offers the same names with blocking calls.
"""

from client_sdk.client import Balance, MeterlineClient
from client_sdk.config import (
    ClientConfig,
    FailoverConfig,
    KeepAliveConfig,
    RetryConfig,
    TlsConfig,
)
from client_sdk.errors import (
    AccountSuspended,
    AuthenticationError,
    AuthenticationFailed,
    InsufficientFunds,
    InvalidRequest,
    LimitExceeded,
    MeterlineClientError,
    NoGateway,
    NotFound,
    PermissionDenied,
    ServerError,
    ServersUnavailable,
    ServiceRefused,
    SessionEnded,
    UnknownEndpoint,
)
from client_sdk.session import ServiceSession, UsageSource
from client_sdk.types import (
    AccountEvent,
    ActiveService,
    BandPrice,
    BillingUpdate,
    Rate,
    ServiceRecord,
    ServiceType,
    TerminationReason,
    TimeBand,
    Unit,
    VolumeTier,
)
from client_sdk.updates import (
    PackageTampered,
    SignatureInvalid,
    UntrustedSigningKey,
    UpdateAvailable,
    UpdateConfig,
    UpdateError,
    VerifiedPackage,
)

__all__ = [
    "AccountEvent",
    "AccountSuspended",
    "ActiveService",
    "AuthenticationError",
    "AuthenticationFailed",
    "Balance",
    "BandPrice",
    "BillingUpdate",
    "ClientConfig",
    "FailoverConfig",
    "InsufficientFunds",
    "InvalidRequest",
    "KeepAliveConfig",
    "LimitExceeded",
    "MeterlineClient",
    "MeterlineClientError",
    "NoGateway",
    "NotFound",
    "PackageTampered",
    "PermissionDenied",
    "Rate",
    "RetryConfig",
    "ServerError",
    "ServersUnavailable",
    "ServiceRecord",
    "ServiceRefused",
    "ServiceSession",
    "ServiceType",
    "SessionEnded",
    "SignatureInvalid",
    "TerminationReason",
    "TimeBand",
    "TlsConfig",
    "Unit",
    "UnknownEndpoint",
    "UntrustedSigningKey",
    "UpdateAvailable",
    "UpdateConfig",
    "UpdateError",
    "UsageSource",
    "VerifiedPackage",
    "VolumeTier",
]
