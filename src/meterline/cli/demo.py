"""The demo session `meterline up --demo` runs: a funded account, a device, a 42-second
voice call whose charge ticks up live, and its service record."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from client_sdk import ClientConfig, MeterlineClient, ServiceRecord, ServiceType, TlsConfig
from meterline.auth.v1 import auth_pb2
from meterline.cli.operator import OperatorClient
from meterline.cli.prices import price_text, quantity
from meterline.kernel.config import Endpoints, TlsSettings
from meterline.kernel.money import format_money
from meterline.rating.v1 import types_pb2

DEMO_ENDPOINT = "+442071234567"
DEMO_SECONDS = 42
DEMO_FUNDING_MICROS = 1_000_000
SPEED = 10  # simulated call seconds per real second


@dataclass(frozen=True)
class DemoResult:
    account_id: str
    record: ServiceRecord
    balance_micros: int
    updates: int


def sdk_tls(tls: TlsSettings) -> TlsConfig:
    """The SDK's form of the CLI's TLS settings."""
    if tls.plaintext:
        return TlsConfig(plaintext=True)
    return TlsConfig(ca_file=tls.ca_file, cert_file=tls.cert_file, key_file=tls.key_file)


async def run_demo(
    endpoints: Endpoints,
    secret: str,
    say: Callable[[str], None],
    tls: TlsSettings,
    speed: float = SPEED,
) -> DemoResult:
    """The demo against the stack at `endpoints`; `tls`: what its clients use."""
    operator = OperatorClient(endpoints, secret, tls)
    try:
        account = await operator.create_account("Demo user", "EUR", 0)
        account_id = account.account_id
        await operator.fund(account_id, DEMO_FUNDING_MICROS, key=f"demo-{uuid.uuid4().hex}")
        say(f"account {account_id} funded with {format_money(DEMO_FUNDING_MICROS, 'EUR')}")
        credential = await operator.create_credential(
            auth_pb2.PRINCIPAL_KIND_DEVICE, account_id=account_id
        )
    finally:
        await operator.close()

    config = ClientConfig(
        service_addresses=[endpoints.service],
        auth_addresses=[endpoints.billing],
        client_id=credential.client_id,
        client_secret=credential.client_secret,
        report_interval=0.5,
        tls=sdk_tls(tls),
    )
    started = time.monotonic()

    def call_seconds() -> int:
        # A simulated call clock: `speed` call seconds per real second, up to the demo length.
        return min(DEMO_SECONDS, int((time.monotonic() - started) * speed))

    updates = 0
    async with MeterlineClient(config) as client:
        session = await client.start_service(
            ServiceType.VOICE, DEMO_ENDPOINT, usage_source=call_seconds
        )
        rate = session.rate
        unit = types_pb2.Unit.Value(rate.unit.value)
        price = price_text(rate.price_per_unit_micros, rate.currency, unit, rate.unit_size)
        # As the price tables write increments: "per 1 s", "first 30 s, then per 6 s".
        billed = f"per {quantity(unit, rate.increment_units or 1)}"
        if rate.first_increment != rate.increment_units:
            billed = f"first {quantity(unit, rate.first_increment)}, then {billed}"
        say(f"calling {DEMO_ENDPOINT} at {price}, billed {billed} (session {session.session_id})")
        async for update in session.updates():
            updates += 1
            say(
                f"  {update.used_units:3d} s   charged "
                f"{format_money(update.charged_micros, update.currency)}   "
                f"balance {format_money(update.balance_micros, update.currency)}"
            )
            if update.used_units >= DEMO_SECONDS:
                break
        record = await session.stop(DEMO_SECONDS)
        balance = await client.balance()
        await asyncio.sleep(0)
    say(
        f"service record: {record.service_type} to {record.endpoint}, {record.used_units} s, "
        f"charged {format_money(record.charged_micros, record.rate.currency)}, ended by "
        f"{record.termination_reason}; balance now "
        f"{format_money(balance.balance_micros, balance.currency)}"
    )
    return DemoResult(account_id, record, balance.balance_micros, updates)
