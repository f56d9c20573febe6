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
from service_manager.domain.components import ComponentKey, PublishedComponent
from service_manager.domain.gateways import Gateway, GatewayChange
from service_manager.domain.holds import HoldState
from service_manager.domain.identities import AccountIdentity, Identity
from service_manager.domain.notices import GatewayNotice
from service_manager.domain.records import ServiceRecord, UsageEvent, UsageSummary
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
    """The service database: sessions, their holds and service records."""

    async def insert_new(self, session: Session, request_id: str | None) -> bool:
        """Write a new session; False (and nothing written) if request_id is taken."""

    async def by_request_id(self, request_id: str) -> Session | None: ...

    async def get(self, session_id: str) -> Session | None: ...

    async def get_many(self, session_ids: Sequence[str]) -> dict[str, Session]:
        """The sessions of those ids that exist, in one statement."""

    async def delete_unstarted(self, session_id: str) -> None:
        """Remove a session whose first hold was refused (it has no recorded hold)."""

    async def take_over(self, session_id: str, owner: str) -> Session | None:
        """Make `owner` the owner of an ACTIVE session with a new epoch; None if the
        session is not active (or does not exist)."""

    async def take_over_many(self, session_ids: Sequence[str], owner: str) -> dict[str, Session]:
        """take_over for many sessions in one statement: the ones taken over, by id."""

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
        self,
        session_id: str,
        final_used: int,
        reason: TerminationReason,
        client_final: int = 0,
        gateway_final: int = 0,
    ) -> Session | None:
        """ACTIVE -> SETTLING with the final usage and the reporters' final counts (none
        below what is stored) and the reason, under a new epoch; None if the session was
        not active."""

    async def claim_stale_settlement(self, session_id: str, before: datetime) -> Session | None:
        """Take over a settlement whose settler has not been heard of since `before`."""

    async def finish(
        self, record: ServiceRecord, fence: Fence, notice: GatewayNotice
    ) -> ServiceRecord:
        """Write the service record, mark the session ENDED and append the gateway's ENDED
        notice, together (a termination is never lost between them); returns the stored
        record (the first one, if it was written before, and then no second notice)."""

    async def record(self, session_id: str) -> ServiceRecord | None: ...

    async def claim_idle(
        self, silent_before: datetime, settling_before: datetime, limit: int
    ) -> list[str]:
        """Claim for settlement the sessions silent since `silent_before` and the
        settlements not heard of since `settling_before`, so no other instance does."""

    async def active_sessions(self) -> list[Session]: ...

    async def active_of_account(self, account_id: str) -> list[Session]:
        """The account's ACTIVE sessions, held by a stream or not, oldest first."""


class GatewayRegistry(Protocol):
    """The registered gateways (service database)."""

    async def gateways(self) -> list[Gateway]:
        """Every gateway, by id, each with its active sessions counted."""

    async def gateway(self, gateway_id: str) -> Gateway | None:
        """One gateway (its active sessions not counted)."""

    async def register(self, gateway: Gateway) -> tuple[Gateway, bool]:
        """Add a gateway; (the stored one, True). A gateway of that id already there is
        returned with False (the caller compares)."""

    async def update(self, gateway_id: str, change: GatewayChange) -> Gateway | None:
        """Apply a change under the gateway's row lock; None if there is no such gateway."""

    async def seen(self, gateway_ids: Sequence[str], at: datetime) -> None:
        """The gateways were heard of at `at` (never moves a time back)."""


class Identities(Protocol):
    """Subscriber identities of accounts (service database); one account per identity."""

    async def add(self, account_id: str, identity: Identity) -> AccountIdentity:
        """Map the identity to the account; the existing mapping if it is there already
        (of this account or another: the caller compares)."""

    async def remove(self, account_id: str, identity: Identity) -> bool: ...

    async def of_account(self, account_id: str) -> list[AccountIdentity]:
        """By kind, then value."""

    async def resolve(self, identity: Identity) -> str | None:
        """The account the identity names."""


class NoticeLog(Protocol):
    """Each gateway's durable stream of notices (service database): cursors 1, 2, 3...
    per gateway, in the order they were written, kept for the retention period."""

    async def append(self, notice: GatewayNotice) -> int:
        """Store a notice; its cursor."""

    async def after(self, gateway_id: str, cursor: int, limit: int) -> list[GatewayNotice]:
        """The notices after `cursor`, oldest first."""

    async def bounds(self, gateway_id: str) -> tuple[int, int]:
        """(the oldest cursor kept, the newest written); (newest + 1, newest) when none
        is kept, (1, 0) for a gateway without notices."""

    async def prune(self, before: datetime) -> int:
        """Delete the notices written before `before`; how many."""

    def mark(self, gateway_id: str) -> int:
        """A mark for `wait`, taken before reading with `after`."""

    async def wait(self, gateway_id: str, mark: int, within: float) -> None:
        """Return once a notice for the gateway may have been written (by any instance)
        since `mark` was taken, or after `within` seconds."""


class Funds(Protocol):
    """The billing manager: accounts and credit holds. Every movement carries a key."""

    async def account(self, account_id: str) -> AccountSnapshot: ...

    async def reserve(self, account_id: str, amount: int, key: str, reference: str) -> str:
        """Put a hold on the account; returns its id."""

    async def capture(
        self, hold_id: str, amount: int, key: str, usage: UsageSummary | None = None
    ) -> None:
        """Capture `amount` of the hold and release the rest; `usage` tells the bill what
        the charge was for."""

    async def release(self, hold_id: str, key: str) -> None: ...

    async def hold(self, hold_id: str) -> HoldState:
        """The hold as it stands now (how it was closed, and what it captured)."""


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

    def ended(self, session_id: str, event: UsageEvent) -> None: ...

    async def active(self, account_id: str = "") -> list[ActiveUser]: ...

    async def rebuild_if_lost(self, sessions: Sequence[Session]) -> bool:
        """Write the collection again from `sessions` if Redis lost it; True if it did."""

    async def needs_rebuild(self) -> bool: ...


class Subscriptions(Protocol):
    """Live events for watchers, over one shared subscription per instance."""

    def account_events(self, account_id: str) -> AsyncIterator[UsageEvent]: ...


class ComponentStore(Protocol):
    """Published client components and their bytes. A component and all its chunks are
    written in one transaction, so none is ever seen half stored."""

    async def versions(self, key: ComponentKey) -> list[PublishedComponent]:
        """Every published version of one component, in no order."""

    async def listed(self, name: str = "", platform: str = "") -> list[PublishedComponent]:
        """Every published component ('' matches any name or platform), in no order."""

    async def insert(self, component: PublishedComponent, chunks: AsyncIterator[bytes]) -> bool:
        """Store the component and its chunks (chunk n is the n-th item; each but the last
        has `component.chunk_bytes` bytes). False, and nothing stored, when its version is
        already published for its name and platform. An error raised by `chunks` stores
        nothing and propagates."""

    async def chunk(self, component_id: str, index: int) -> bytes | None:
        """One chunk of a stored component (None past the last)."""
