"""A session's holds as settlement finds them, and what it makes of a hold someone else
(an operator's direct Capture or Release, the billing manager's expiry sweep) closed
first: the record charges what the ledger actually captured, and says by how much and
why that differs from the charge of the usage. Pure values and rules; no I/O."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

from meterline.kernel import money

HOLD_CLOSED = "HOLD_CLOSED"
"""The billing manager's reason for a capture or release of a hold already closed."""

ACCOUNT_NOT_ACTIVE = frozenset({"ACCOUNT_SUSPENDED", "ACCOUNT_CLOSED"})
"""The billing manager's reasons for refusing a hold on a suspended or closed account."""


class HoldStatus(enum.StrEnum):
    OPEN = "OPEN"
    CAPTURED = "CAPTURED"
    RELEASED = "RELEASED"


@dataclass(frozen=True, slots=True)
class HoldState:
    """A hold as the billing manager has it now."""

    hold_id: str
    status: HoldStatus
    amount_micros: int
    captured_micros: int
    released_micros: int


@dataclass(frozen=True, slots=True)
class SettledHold:
    """One hold after settlement: what settlement meant to capture from it and what was
    captured (by settlement itself, or by whoever closed it first)."""

    hold_id: str
    meant_micros: int
    captured_micros: int
    closed_by: HoldStatus | None = None
    """How someone else closed it (CAPTURED or RELEASED); None: settlement closed it."""


@dataclass(frozen=True, slots=True)
class SettledCharge:
    captured_micros: int
    """What the session's holds captured in the ledger: the record's charge."""
    difference_micros: int
    """The usage's charge less what was captured (negative: more was captured)."""
    note: str
    """Why they differ, a sentence; empty when settlement closed every hold itself."""


def settled_here(hold_id: str, take: int) -> SettledHold:
    return SettledHold(hold_id, take, take)


def settled_elsewhere(take: int, state: HoldState) -> SettledHold:
    return SettledHold(state.hold_id, take, state.captured_micros, state.status)


def settled_charge(due_micros: int, holds: Sequence[SettledHold]) -> SettledCharge:
    """The charge a record states, given what happened to each hold."""
    captured = money.add(*(hold.captured_micros for hold in holds))
    difference = money.add(due_micros, -captured)
    elsewhere = [hold for hold in holds if hold.closed_by is not None]
    if not elsewhere:
        return SettledCharge(captured, difference, "")
    parts = [_closed_elsewhere(hold) for hold in elsewhere]
    if difference > 0:
        outcome = f"{money.format_amount(difference)} less than"
    elif difference < 0:
        outcome = f"{money.format_amount(-difference)} more than"
    else:
        outcome = "the same as"
    note = (
        f"{'; '.join(parts)}. The record charges what the ledger captured, "
        f"{money.format_amount(captured)}: {outcome} the usage's charge of "
        f"{money.format_amount(due_micros)}."
    )
    return SettledCharge(captured, difference, note)


def _closed_elsewhere(hold: SettledHold) -> str:
    if hold.closed_by is HoldStatus.CAPTURED:
        how = f"captured for {money.format_amount(hold.captured_micros)}"
    else:
        how = "released"
    return (
        f"Hold {hold.hold_id} was {how} by another caller before settlement "
        f"(settlement meant to capture {money.format_amount(hold.meant_micros)})"
    )
