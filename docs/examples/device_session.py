"""A device's metered voice call with the Meterline SDK, from login to the service record.

Against the stack `meterline up` runs (its CA is .meterline/tls/ca.pem):

    meterline account create --name Ada --currency EUR      # prints ACCOUNT_ID
    meterline account fund ACCOUNT_ID 1.00
    meterline credential issue --account ACCOUNT_ID         # prints the id and secret
    python docs/examples/device_session.py --client-id ID --client-secret SECRET

List more servers with --service / --billing, primary first, and the SDK fails over
between them. The call clock here runs at --speed call seconds per real second.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path

from client_sdk import (
    ClientConfig,
    FailoverConfig,
    InsufficientFunds,
    MeterlineClient,
    MeterlineClientError,
    ServiceType,
    TlsConfig,
)


def options() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--client-id", required=True)
    parser.add_argument("--client-secret", required=True)
    parser.add_argument("--ca", type=Path, default=Path(".meterline/tls/ca.pem"))
    parser.add_argument("--service", action="append", help="service manager host:port")
    parser.add_argument("--billing", action="append", help="billing manager host:port")
    parser.add_argument("--endpoint", default="+442071234567", help="the number called")
    parser.add_argument("--seconds", type=int, default=12, help="length of the call")
    parser.add_argument("--speed", type=float, default=10.0)
    return parser.parse_args()


async def call(settings: argparse.Namespace) -> None:
    config = ClientConfig(
        service_addresses=settings.service or ["127.0.0.1:50053"],
        auth_addresses=settings.billing or ["127.0.0.1:50052"],
        client_id=settings.client_id,
        client_secret=settings.client_secret,
        report_interval=0.2,
        tls=TlsConfig(ca_file=settings.ca),
        failover=FailoverConfig(call_timeout=5.0),
    )
    async with MeterlineClient(config) as client:
        balance = await client.balance()
        print(f"available {balance.available} {balance.currency}")
        started = time.monotonic()

        def call_seconds() -> int:  # the usage source: cumulative units used so far
            elapsed = int((time.monotonic() - started) * settings.speed)
            return min(settings.seconds, elapsed)

        try:
            session = await client.start_service(
                ServiceType.VOICE, settings.endpoint, usage_source=call_seconds
            )
        except InsufficientFunds as refused:
            print(f"cannot call: {refused.message}")
            return
        print(f"calling {settings.endpoint}: {session.rate.describe()}")
        async for update in session.updates():
            print(
                f"  {update.used_units:3d} s   charged {update.charged} {update.currency}"
                f"   balance {update.balance}"
            )
            if update.final_units:
                print("  (the balance pays for no more than this)")
            if update.ended or update.used_units >= settings.seconds:
                break
        record = await session.stop()
        print(
            f"ended ({record.termination_reason}): {record.used_units} s, "
            f"charged {record.charged} {record.rate.currency}"
        )


def main() -> int:
    try:
        asyncio.run(call(options()))
    except MeterlineClientError as error:
        print(f"{type(error).__name__} ({error.reason}): {error.message}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
