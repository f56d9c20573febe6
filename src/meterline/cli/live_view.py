"""What `meterline client watch` shows, without a terminal: the state of one account's
display, built from the SDK's values only (`Balance`, `ActiveService`, `AccountEvent`),
and that state drawn as a rich renderable or written as JSON lines. The clock is always
passed in, so the same state draws the same screen (tests/unit/test_live_view.py).

Amounts are formatted by `kernel.money.format_money` (babel), units by `cli.prices`."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from rich import box
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from client_sdk import AccountEvent, ActiveService, Balance, TerminationReason, Unit
from meterline.cli.prices import quantity
from meterline.kernel.money import format_amount, format_money
from meterline.rating.v1 import types_pb2

NOTICES_SHOWN = 5
ENDED_SHOWN = 3
"""Ended sessions stay on the screen (with their reason) until this many newer ones ended."""
VOUCHER_MAX = 64
ENDED_UNHEARD = "ended while disconnected"
"""What a session shows that ended while the watch was reconnecting (reason unknown)."""

REASON_WORDS = {
    TerminationReason.CLIENT_STOP: "stopped by the device",
    TerminationReason.BALANCE_EXHAUSTED: "balance used up",
    TerminationReason.LIVENESS_TIMEOUT: "no usage reported in time",
    TerminationReason.OPERATOR: "ended by an operator",
    TerminationReason.GATEWAY: "ended by the gateway",
    TerminationReason.START_FAILED: "could not start",
}


def clock(span: timedelta | None) -> str:
    """A duration as H:MM:SS ("0:01:05"); "-" for none."""
    if span is None:
        return "-"
    seconds = max(0, int(span.total_seconds()))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}"


def reason_words(reason: TerminationReason | None) -> str:
    return REASON_WORDS.get(reason, "ended") if reason else "ended"


@dataclass
class SessionLine:
    """One session's row."""

    session_id: str
    service: str = ""
    endpoint: str = ""
    unit: Unit | None = None
    started_at: datetime | None = None
    used_units: int = 0
    charged_micros: int = 0
    time_left: timedelta | None = None
    time_left_at: datetime | None = None
    """When the server estimated `time_left` (it counts down from then)."""
    final_units: bool = False
    ended: bool = False
    reason: TerminationReason | None = None
    ended_at: datetime | None = None
    known: bool = False
    """Its service, endpoint and start are known (from `active_services`)."""

    def duration(self, now: datetime) -> timedelta | None:
        if self.started_at is None:
            return None
        return (self.ended_at or now) - self.started_at

    def left(self, now: datetime) -> timedelta | None:
        if self.ended or self.time_left is None or self.time_left_at is None:
            return None
        return max(timedelta(0), self.time_left - (now - self.time_left_at))

    def units(self) -> str:
        if self.unit is None:
            return f"{self.used_units:,}"
        return quantity(types_pb2.Unit.Value(self.unit.value), self.used_units)

    def status(self) -> str:
        if self.ended and self.reason is None:
            return ENDED_UNHEARD
        if self.ended:
            return f"ended: {reason_words(self.reason)}"
        return "final units" if self.final_units else "running"


@dataclass(frozen=True)
class Notice:
    time: datetime
    text: str


@dataclass
class LiveView:
    """The display state of one account."""

    account_id: str
    currency: str
    balance_micros: int
    available_micros: int
    sessions: dict[str, SessionLine] = field(default_factory=dict)
    notices: deque[Notice] = field(default_factory=lambda: deque(maxlen=NOTICES_SHOWN))
    low_balance: bool = False
    voucher: str | None = None
    """The code being typed, while the voucher prompt is open."""
    events: int = 0

    @classmethod
    def of(cls, balance: Balance) -> LiveView:
        return cls(
            balance.account_id, balance.currency, balance.balance_micros, balance.available_micros
        )

    # -- what comes in ---------------------------------------------------------------------

    def set_balance(self, balance: Balance) -> None:
        self.balance_micros = balance.balance_micros
        self.available_micros = balance.available_micros

    def add_services(self, services: list[ActiveService]) -> None:
        """What the server says of the running services (their service, endpoint, start)."""
        for service in services:
            line = self.sessions.setdefault(service.session_id, SessionLine(service.session_id))
            line.service = service.service_type.value
            line.endpoint = service.endpoint
            line.unit = service.rate.unit
            line.started_at = service.started_at
            line.used_units = max(line.used_units, service.used_units)
            line.known = True

    def unknown_sessions(self) -> set[str]:
        """Sessions seen in events whose details are not known yet."""
        return {sid for sid, line in self.sessions.items() if not line.known and not line.ended}

    def apply(self, event: AccountEvent) -> None:
        self.events += 1
        self.available_micros = event.available_micros
        line = self.sessions.get(event.session_id)
        if line is None:
            line = self.sessions[event.session_id] = SessionLine(
                event.session_id, started_at=event.time
            )
        if line.ended:
            return  # a late repeat of an ended session's events changes nothing
        line.used_units = max(line.used_units, event.used_units)
        line.charged_micros = max(line.charged_micros, event.charged_micros)
        if event.time_left is not None:
            line.time_left, line.time_left_at = event.time_left, event.time
        if event.low_balance and not self.low_balance:
            left = f", about {clock(event.time_left)} left" if event.time_left else ""
            self.note(
                event.time, f"low balance: {self.money(event.available_micros)} available{left}"
            )
        self.low_balance = event.low_balance
        if event.ended and event.termination_reason is None:
            # The SDK's watch found it ended while it was reconnecting: reason and final
            # charge unknown here.
            line.ended, line.reason, line.ended_at = True, None, event.time
            self.note(
                event.time,
                f"{self.name(line)} {ENDED_UNHEARD} (last charge seen "
                f"{self.money(line.charged_micros)}).",
            )
            self._forget_old_ended()
        elif event.ended:
            line.ended, line.reason, line.ended_at = True, event.termination_reason, event.time
            message = f" {event.message}" if event.message else ""
            self.note(
                event.time,
                f"{self.name(line)} ended ({reason_words(event.termination_reason)}), "
                f"charged {self.money(line.charged_micros)}.{message}",
            )
            self._forget_old_ended()
        elif event.final_units and not line.final_units:
            line.final_units = True
            self.note(
                event.time,
                f"final units for {self.name(line)}: "
                + (event.message or "the balance pays for no more than what is granted."),
            )
        elif not event.final_units:
            line.final_units = False

    def note(self, now: datetime, text: str) -> None:
        self.notices.append(Notice(now, text))

    # -- the voucher prompt ----------------------------------------------------------------

    def key(self, key: str) -> str | None:
        """A key pressed while the prompt is open; returns the code on Enter."""
        assert self.voucher is not None
        if key in ("\r", "\n"):
            code, self.voucher = self.voucher.strip(), None
            return code or None
        if key == "\x1b":
            self.voucher = None
        elif key in ("\x7f", "\b"):
            self.voucher = self.voucher[:-1]
        elif key.isprintable() and len(self.voucher) < VOUCHER_MAX:
            self.voucher += key
        return None

    # -- what goes out ---------------------------------------------------------------------

    def money(self, micros: int) -> str:
        return format_money(micros, self.currency)

    def name(self, line: SessionLine) -> str:
        return line.endpoint or line.session_id

    def render(self, now: datetime) -> RenderableType:
        header = Text.assemble(
            ("Meterline", "bold"),
            f"  account {self.account_id}  ",
            ("balance ", "dim"),
            (self.money(self.balance_micros), "bold"),
            ("  available ", "dim"),
            (self.money(self.available_micros), "bold red" if self.low_balance else "bold"),
        )
        table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False, expand=False)
        for column in ("service", "endpoint", "duration", "used", "charge", "time left"):
            table.add_column(column, justify="right" if column != "service" else "left")
        table.add_column("status")
        for line in self.sessions.values():
            table.add_row(
                line.service or "?",
                self.name(line),
                clock(line.duration(now)),
                line.units(),
                self.money(line.charged_micros),
                clock(line.left(now)),
                line.status(),
                style="dim" if line.ended else None,
            )
        parts: list[RenderableType] = [header, Text("")]
        parts.append(table if self.sessions else Text("no running services", style="dim"))
        parts.append(Text("notices", style="bold"))
        if self.notices:
            for notice in self.notices:
                parts.append(Text(f"  {notice.time.astimezone():%H:%M:%S}  {notice.text}"))
        else:
            parts.append(Text("  none", style="dim"))
        if self.voucher is None:
            parts.append(Text("r redeem a voucher   q quit", style="dim"))
        else:
            parts.append(
                Text.assemble(
                    ("voucher code: ", "bold"),
                    self.voucher,
                    ("_", "blink"),
                    ("   Enter redeems, Esc cancels", "dim"),
                )
            )
        return Group(*parts)

    def snapshot_json(self, now: datetime) -> dict[str, Any]:
        """The first JSON line: the account and its running services."""
        return {
            "type": "snapshot",
            "time": now.isoformat(),
            "account_id": self.account_id,
            "currency": self.currency,
            "balance_micros": self.balance_micros,
            "balance": format_amount(self.balance_micros),
            "available_micros": self.available_micros,
            "available": format_amount(self.available_micros),
            "sessions": [
                {
                    "session_id": line.session_id,
                    "service_type": line.service,
                    "endpoint": line.endpoint,
                    "started_at": line.started_at.isoformat() if line.started_at else None,
                    "used_units": line.used_units,
                }
                for line in self.sessions.values()
            ],
        }

    def _forget_old_ended(self) -> None:
        ended = [line for line in self.sessions.values() if line.ended]
        for line in ended[:-ENDED_SHOWN]:
            del self.sessions[line.session_id]


def event_json(event: AccountEvent) -> dict[str, Any]:
    """One account event as a JSON line (keys documented in docs/live-view.md)."""
    return {
        "type": "event",
        "time": event.time.isoformat(),
        "account_id": event.account_id,
        "session_id": event.session_id,
        "currency": event.currency,
        "charged_micros": event.charged_micros,
        "charged": event.charged,
        "available_micros": event.available_micros,
        "available": event.available,
        "used_units": event.used_units,
        "time_left_seconds": (
            int(event.time_left.total_seconds()) if event.time_left is not None else None
        ),
        "low_balance": event.low_balance,
        "final_units": event.final_units,
        "ended": event.ended,
        "reason": event.termination_reason.value if event.termination_reason else None,
        "message": event.message,
    }
