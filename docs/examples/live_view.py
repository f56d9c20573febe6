"""A device's own live screen of its account, with the Meterline SDK alone: the balance,
each running service's charge, usage, duration and time left, and the last notices,
redrawn on every event. It is what `meterline client watch` shows, without rich.

Against the stack `meterline up` runs (its CA is .meterline/tls/ca.pem), with the
credential of an account (`meterline credential issue --account ACCOUNT_ID`):

    python docs/examples/live_view.py --client-id ID --client-secret SECRET

Start a service for that account (docs/examples/device_session.py) and watch it tick.
--seconds ends the view after that long; --plain prints each screen instead of drawing
it in place (for logs and tests).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from collections import deque
from datetime import UTC, datetime, timedelta
from pathlib import Path

from client_sdk import (
    AccountEvent,
    ClientConfig,
    MeterlineClient,
    MeterlineClientError,
    TlsConfig,
)


def options() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--client-id", required=True)
    parser.add_argument("--client-secret", required=True)
    parser.add_argument("--ca", type=Path, default=Path(".meterline/tls/ca.pem"))
    parser.add_argument("--service", action="append", help="service manager host:port")
    parser.add_argument("--billing", action="append", help="billing manager host:port")
    parser.add_argument("--seconds", type=float, default=None, help="stop after this long")
    parser.add_argument("--plain", action="store_true", help="print screens one after another")
    return parser.parse_args()


def clock(span: timedelta | None) -> str:
    if span is None:
        return "-"
    minutes, seconds = divmod(max(0, int(span.total_seconds())), 60)
    return f"{minutes}:{seconds:02d}"


class Screen:
    """What the device shows: built from `balance()`, `active_services()` and the events."""

    def __init__(self, currency: str, balance: str, available: str) -> None:
        self.currency = currency
        self.balance = balance
        self.available = available
        self.rows: dict[str, dict[str, str]] = {}
        self.started: dict[str, datetime] = {}
        self.notices: deque[str] = deque(maxlen=5)

    def apply(self, event: AccountEvent) -> None:
        self.available = event.available  # a decimal string, e.g. "0.58": never a float
        row = self.rows.setdefault(event.session_id, {"what": event.session_id})
        self.started.setdefault(event.session_id, event.time)
        row["used"] = str(event.used_units)
        row["charge"] = f"{event.charged} {event.currency}"
        row["left"] = clock(event.time_left)
        if event.low_balance and "low" not in row:
            row["low"] = "yes"
            self.notices.append(f"low balance: {event.available} {event.currency} left")
        if event.final_units and not event.ended:
            self.notices.append(f"final units: {event.message}")
        if event.ended:
            row["status"] = f"ended ({event.termination_reason})"
            self.notices.append(f"{row['what']} ended: {event.message}")

    def draw(self) -> str:
        now = datetime.now(UTC)
        lines = [
            f"balance {self.balance} {self.currency}   available {self.available} {self.currency}",
            "",
        ]
        for session_id, row in self.rows.items():
            running = clock(now - self.started[session_id])
            lines.append(
                f"{row['what']:<16} {running:>6} {row.get('used', '0'):>6} units "
                f"{row.get('charge', '-'):>12}  left {row.get('left', '-'):>6}  "
                f"{row.get('status', 'running')}"
            )
        lines += ["", "notices:", *(f"  {notice}" for notice in self.notices)]
        return "\n".join(lines)


async def watch(settings: argparse.Namespace) -> None:
    config = ClientConfig(
        service_addresses=settings.service or ["127.0.0.1:50053"],
        auth_addresses=settings.billing or ["127.0.0.1:50052"],
        client_id=settings.client_id,
        client_secret=settings.client_secret,
        tls=TlsConfig(ca_file=settings.ca),
    )
    async with MeterlineClient(config) as client:
        balance = await client.balance()
        screen = Screen(balance.currency, balance.balance, balance.available)
        for service in await client.active_services():  # what already runs
            screen.rows[service.session_id] = {"what": service.endpoint}
            screen.started[service.session_id] = service.started_at

        def show() -> None:
            text = screen.draw()
            print(text + "\n" if settings.plain else "\x1b[H\x1b[J" + text, flush=True)

        show()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(settings.seconds):
                async for event in client.watch_account():  # one per usage update or end
                    if event.session_id not in screen.rows:  # a service started since
                        for service in await client.active_services():
                            if service.session_id == event.session_id:
                                screen.rows[service.session_id] = {"what": service.endpoint}
                                screen.started[service.session_id] = service.started_at
                    screen.apply(event)
                    if event.ended:
                        screen.balance = (await client.balance()).balance
                    show()


def main() -> int:
    try:
        asyncio.run(watch(options()))
    except MeterlineClientError as error:
        print(f"{type(error).__name__} ({error.reason}): {error.message}")
        return 1
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
