"""Quota: how big the next slice is, when to reserve it, how a charge is taken from the
holds, and how long the money lasts. Pure functions; the money arithmetic is the kernel's
(money, pricing)."""

from __future__ import annotations

from dataclasses import dataclass

from meterline.kernel import money
from meterline.kernel.media import Unit
from meterline.kernel.pricing import affordable_units
from service_manager.domain.accounts import AccountSnapshot
from service_manager.domain.sessions import MAX_UNITS, Session, SessionRate

TIME_LEFT_HORIZON = 31 * 24 * 3600
"""Estimates of time left stop at a month: beyond it the figure says nothing more."""

DEFAULT_RESERVE_AHEAD_AT = 0.8
"""The share of a slice used at which the next one is asked for (the engine's setting
replaces it; 0.8 keeps the rule's old meaning for callers that give none)."""


@dataclass(frozen=True, slots=True)
class Grant:
    granted_units: int
    """Cumulative units granted after this grant."""
    amount_micros: int
    """What the hold for this grant must be."""


def needs_next_slice(
    session: Session,
    used_units: int,
    slice_units: int,
    reserve_ahead_at: float = DEFAULT_RESERVE_AHEAD_AT,
) -> bool:
    """True once the units left in the grant are no more than the unused share of a
    slice: then the next slice is reserved, ahead of need."""
    remaining = session.granted_units - used_units
    return remaining <= slice_units * (1 - reserve_ahead_at) + 1e-9


def next_grant(
    rate: SessionRate,
    granted_units: int,
    used_units: int,
    slice_units: int,
    budget_micros: int,
    start: int = 0,
) -> Grant | None:
    """The next slice the budget can fund: enough to cover `used_units` plus a slice,
    less if the budget is short; None if not one more increment fits."""
    target = max(granted_units, used_units) + slice_units
    new_granted = affordable_units(
        rate.terms,
        granted_units,
        max(budget_micros, 0),
        target,
        start,
        rate.schedule,
        over_time=rate.unit is Unit.SECOND,
    )
    if new_granted <= granted_units:
        return None
    amount = money.add(rate.price(new_granted, start), -rate.price(granted_units, start))
    # A free slice needs no hold, but still extends the grant.
    return Grant(new_granted, amount)


def split_capture(charge_micros: int, holds: list[tuple[str, int]]) -> list[tuple[str, int]]:
    """How much to capture from each hold, oldest first, to take exactly the charge."""
    remaining = charge_micros
    plan = []
    for hold_id, amount in holds:
        take = min(remaining, amount)
        plan.append((hold_id, take))
        remaining = money.add(remaining, -take)
    if remaining:
        raise AssertionError(f"holds fall {remaining} micro-units short of the charge")
    return plan


def display_balance(session: Session, account: AccountSnapshot) -> int:
    """What the account would have left if the session ended now: its available
    balance, plus this session's holds, less the session's charge so far."""
    return money.add(account.available_micros, session.held_micros, -session.charged_micros)


def reachable_units(session: Session, available_micros: int) -> int:
    """The cumulative usage the session's grant plus the account's available balance can
    pay for, from the larger of the grant and the usage (usage beyond the grant is not
    charged, so the money buys units from there)."""
    rate = session.rate
    base = max(session.granted_units, session.used_units)
    return affordable_units(
        rate.terms,
        base,
        max(available_micros, 0),
        min(base + TIME_LEFT_HORIZON, MAX_UNITS) if rate.unit is Unit.SECOND else MAX_UNITS,
        session.start_epoch,
        rate.schedule,
        over_time=rate.unit is Unit.SECOND,
    )


def estimated_seconds_left(session: Session, available_micros: int) -> int | None:
    """For time-metered sessions: how long the grant and the available balance last at
    the session's rate (prices per minute or per hour included); None when not timed or
    free."""
    if session.rate.unit is not Unit.SECOND or session.rate.is_free:
        return None
    return max(reachable_units(session, available_micros) - session.used_units, 0)


def low_balance(session: Session, balance_micros: int, threshold_micros: int) -> bool:
    """Whether the balance a session would leave is below the threshold (never for a
    free session, which cannot run it down; never with a threshold of 0)."""
    return threshold_micros > 0 and balance_micros < threshold_micros and not session.rate.is_free
