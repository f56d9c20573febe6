"""Meterline's client SDK: the billing component a device embeds.

async with MeterlineClient(config) as client:
    session = await client.start_service(ServiceType.VOICE, "+442071234567")
    await session.report(42)
    record = await session.stop()
"""

from client_sdk.client import Balance, MeterlineClient
from client_sdk.config import ClientConfig, TlsConfig
from client_sdk.errors import (
    AuthenticationError,
    MeterlineClientError,
    ServersUnavailable,
    ServiceRefused,
)
from client_sdk.session import ServiceSession, UsageSource
from client_sdk.types import (
    BillingUpdate,
    Rate,
    ServiceRecord,
    ServiceType,
    TerminationReason,
    Unit,
)

__all__ = [
    "AuthenticationError",
    "Balance",
    "BillingUpdate",
    "ClientConfig",
    "MeterlineClient",
    "MeterlineClientError",
    "Rate",
    "ServersUnavailable",
    "ServiceRecord",
    "ServiceRefused",
    "ServiceSession",
    "ServiceType",
    "TerminationReason",
    "TlsConfig",
    "Unit",
    "UsageSource",
]
