"""What a gateway hears about the sessions routed through it, on its durable stream:
terminations, final-unit indications (and their lifting by a top-up), low-balance
notices. Each notice has a cursor, its place in that gateway's stream. Pure values."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime

from service_manager.domain.sessions import TerminationReason

FINAL_UNITS_MESSAGE = "These are the last units the balance pays for; fund the account to go on."
LIFTED_MESSAGE = "The account was funded: the service goes on."
LOW_BALANCE_MESSAGE = "The balance is running low; fund the account to go on."


class NoticeKind(enum.StrEnum):
    SUBSCRIBED = "SUBSCRIBED"
    """The first message of a watch (never stored)."""
    ENDED = "ENDED"
    FINAL_UNITS = "FINAL_UNITS"
    FINAL_UNITS_LIFTED = "FINAL_UNITS_LIFTED"
    LOW_BALANCE = "LOW_BALANCE"


@dataclass(frozen=True, slots=True)
class GatewayNotice:
    gateway_id: str
    session_id: str
    account_id: str
    kind: NoticeKind
    message: str
    reason: TerminationReason | None = None
    """Why the session ended (ENDED), or BALANCE_EXHAUSTED for FINAL_UNITS."""
    balance_micros: int = 0
    """The balance the session would leave (low balance, final units)."""
    seconds_left: int | None = None
    """How long the grant and the balance last at the session's rate (SECOND services)."""
    granted_units: int = 0
    cursor: int = 0
    """Its place in the gateway's stream (0 until stored)."""
    created_at: datetime | None = None
    cursor_expired: bool = False
    """SUBSCRIBED only: notices after the resume cursor were deleted (retention)."""


def subscribed(gateway_id: str, cursor: int, expired: bool) -> GatewayNotice:
    return GatewayNotice(
        gateway_id=gateway_id,
        session_id="",
        account_id="",
        kind=NoticeKind.SUBSCRIBED,
        message="Listening.",
        cursor=cursor,
        cursor_expired=expired,
    )
