"""What the use cases need from the outside world, as protocols. The service manager's
adapters implement them (PostgreSQL and Redis in `storage/`, the peers in `peers.py`);
the unit tests use in-memory fakes."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from meterline.kernel.media import ServiceType
from service_manager.domain.accounts import AccountSnapshot
from service_manager.domain.records import ServiceRecord, TerminationNotice, UsageEvent
from service_manager.domain.sessions import Session, SessionRate, SessionStatus, TerminationReason


@dataclass(frozen=True, slots=True)
class Fence:
    """A write is applied only while the session still has this status and epoch: an
    instance that lost the session (another took it over, or it ended) is refused."""

    status: SessionStatus
    epoch: int

    @staticmethod
    def of(session: Session) -> Fence:
        return Fence(session.status, session.owner_epoch)


@dataclass(frozen=True, slots=True)
class UsageWrite:
    """One session's counters in a batch."""

    session_id: str
    epoch: int
    last_sequence: int
    client_used_units: int
    gateway_used_units: int
    used_units: int
    last_update_at: datetime


@dataclass(frozen=True, slots=True)
class Ownership:
    """A session's owner as the database has it."""

    epoch: int
    status: SessionStatus
    gateway_used_units: int


@dataclass(frozen=True, slots=True)
class GatewayInfo:
    gateway_id: str
    address: str
    service_types: frozenset[ServiceType] | None
    """None: every service type."""
    enabled: bool
    active_sessions: int


@dataclass(frozen=True, slots=True)
class ActiveUser:
    """One entry of the collection of active end users."""

    session_id: str
    account_id: str
    service_type: ServiceType
    endpoint: str
    gateway_id: str
    started_at: datetime
    used_units: int
    rate: SessionRate


class SessionStore(Protocol):
    """The service database: sessions, their holds, gateways and service records."""

    async def insert_new(self, session: Session, request_id: str | None) -> bool:
        """Write a new session; False (and nothing written) if request_id is taken."""

    async def by_request_id(self, request_id: str) -> Session | None: ...

    async def get(self, session_id: str) -> Session | None: ...

    async def delete_unstarted(self, session_id: str) -> None:
        """Remove a session whose first hold was refused (it has no recorded hold)."""

    async def take_over(self, session_id: str, owner: str) -> Session | None:
        """Make `owner` the owner of an ACTIVE session with a new epoch; None if the
        session is not active (or does not exist)."""

    async def save_usage(self, writes: Sequence[UsageWrite]) -> set[str]:
        """Store many sessions' counters in one statement (never lowering any); returns
        the ids it was applied to: the others were fenced out."""

    async def ownership(self, session_ids: Sequence[str]) -> dict[str, Ownership]: ...

    async def mark_pending_hold(
        self, session_id: str, fence: Fence, number: int, amount: int, granted_after: int
    ) -> bool:
        """Note the hold about to be asked for, before asking, so a crash in between
        leaves a trace that recovery resolves."""

    async def record_hold(
        self,
        session_id: str,
        fence: Fence,
        number: int,
        hold_id: str,
        amount: int,
        granted_after: int,
    ) -> Session | None:
        """Record a hold that was made (or, with hold_id '', a free extension of the
        grant) and clear the pending one; the session as stored after, or None if
        fenced out. Recording the same hold twice changes nothing."""

    async def clear_pending_hold(self, session_id: str, fence: Fence) -> bool: ...

    async def holds(self, session_id: str) -> list[tuple[str, int]]:
        """(hold_id, amount) of the recorded holds, oldest first."""

    async def claim_settlement(
        self, session_id: str, final_used: int, reason: TerminationReason
    ) -> Session | None:
        """ACTIVE -> SETTLING with the final usage (never below what is stored) and the
        reason, under a new epoch; None if the session was not active."""

    async def claim_stale_settlement(self, session_id: str, before: datetime) -> Session | None:
        """Take over a settlement whose settler has not been heard of since `before`."""

    async def finish(self, record: ServiceRecord, fence: Fence) -> ServiceRecord:
        """Write the service record and mark the session ENDED, together; returns the
        stored record (the first one, if it was written before)."""

    async def record(self, session_id: str) -> ServiceRecord | None: ...

    async def claim_idle(
        self, silent_before: datetime, settling_before: datetime, limit: int
    ) -> list[str]:
        """Claim for settlement the sessions silent since `silent_before` and the
        settlements not heard of since `settling_before`, so no other instance does."""

    async def active_sessions(self) -> list[Session]: ...

    async def gateways(self) -> list[GatewayInfo]: ...

    async def gateway_address(self, gateway_id: str) -> str: ...


class Funds(Protocol):
    """The billing manager: accounts and credit holds. Every movement carries a key."""

    async def account(self, account_id: str) -> AccountSnapshot: ...

    async def reserve(self, account_id: str, amount: int, key: str, reference: str) -> str:
        """Put a hold on the account; returns its id."""

    async def capture(self, hold_id: str, amount: int, key: str) -> None: ...

    async def release(self, hold_id: str, key: str) -> None: ...


class Rates(Protocol):
    """The rating service."""

    async def rate(
        self, service_type: ServiceType, endpoint: str, account_id: str
    ) -> SessionRate: ...


class Presence(Protocol):
    """The collection of active end users and the events displays and gateways hear.
    Writes are queued and sent in the background: nothing waits for them."""

    def started(self, session: Session) -> None: ...

    def usage(self, session: Session, event: UsageEvent) -> None:
        """The newest usage of a session; older unsent ones may be dropped."""

    def ended(self, session_id: str, event: UsageEvent, notice: TerminationNotice) -> None: ...

    async def active(self, account_id: str = "") -> list[ActiveUser]: ...

    async def rebuild_if_lost(self, sessions: Sequence[Session]) -> bool:
        """Write the collection again from `sessions` if Redis lost it; True if it did."""

    async def needs_rebuild(self) -> bool: ...


class Subscriptions(Protocol):
    """Live events for watchers, over one shared subscription per instance."""

    def account_events(self, account_id: str) -> AsyncIterator[UsageEvent]: ...

    def gateway_notices(self, gateway_id: str) -> AsyncIterator[TerminationNotice]: ...
