"""The sessions whose streams this instance holds, kept in memory: the usual usage update
reads and changes them here and touches no store. Each is written to the database in
batches (see metering.UsageBatcher) under its fencing epoch."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from service_manager.domain.accounts import AccountSnapshot
from service_manager.domain.quota import Grant
from service_manager.domain.sessions import Session

if TYPE_CHECKING:
    from service_manager.app.metering import MeterStream


@dataclass(slots=True, eq=False)
class LiveSession:
    session: Session
    account: AccountSnapshot
    """The account as last read (or as it stands after this instance's own holds)."""
    streams: int = 0
    """Open streams (and unary calls) of this instance using the session."""
    dirty: bool = False
    """Usage not yet written to the database."""
    lost: bool = False
    """Another instance took the session over (or it ended there): answer no more."""
    reserving: asyncio.Task[bool] | None = None
    """The reservation of the next slice, while it runs."""
    next_try_at: float = 0.0
    """After a refused reservation: not before this monotonic time again."""
    final_units: bool = False
    """The last reservation found no money for another slice."""
    final_noticed: bool = False
    """The gateway was sent a FINAL_UNITS notice that no FINAL_UNITS_LIFTED followed."""
    low_noticed: bool = False
    """The gateway was sent a LOW_BALANCE notice (again once the balance recovered)."""
    pushers: set[MeterStream] = field(default_factory=set, repr=False)
    """The streams here that accept pushed responses for this session."""
    _reach: tuple[int, int, int, int] = field(default=(-1, -1, -1, 0), repr=False)
    _next: tuple[int, int, Grant | None] = field(default=(-1, -1, None), repr=False)

    def reach_cache(self, granted: int, base: int, available: int) -> int | None:
        key = self._reach
        if key[0] == granted and key[1] == base and key[2] == available:
            return key[3]
        return None

    def remember_reach(self, granted: int, base: int, available: int, units: int) -> None:
        self._reach = (granted, base, available, units)

    def next_cache(self, granted: int, budget: int) -> tuple[bool, Grant | None]:
        key = self._next
        if key[0] == granted and key[1] == budget:
            return True, key[2]
        return False, None

    def remember_next(self, granted: int, budget: int, grant: Grant | None) -> None:
        self._next = (granted, budget, grant)


class LiveSessions:
    """session_id -> LiveSession for this instance, and one account snapshot per account
    shared by its sessions here."""

    def __init__(self) -> None:
        self._sessions: dict[str, LiveSession] = {}
        self._by_account: dict[str, set[str]] = {}
        self.dirty: set[str] = set()

    def __len__(self) -> int:
        return len(self._sessions)

    def get(self, session_id: str) -> LiveSession | None:
        return self._sessions.get(session_id)

    def add(self, live: LiveSession) -> LiveSession:
        session = live.session
        self._sessions[session.session_id] = live
        self._by_account.setdefault(session.account_id, set()).add(session.session_id)
        return live

    def remove(self, session_id: str) -> LiveSession | None:
        self.dirty.discard(session_id)
        live = self._sessions.pop(session_id, None)
        if live is not None:
            siblings = self._by_account.get(live.session.account_id)
            if siblings is not None:
                siblings.discard(session_id)
                if not siblings:
                    del self._by_account[live.session.account_id]
        return live

    def mark_dirty(self, live: LiveSession) -> None:
        live.dirty = True
        self.dirty.add(live.session.session_id)

    def ids(self) -> list[str]:
        return list(self._sessions)

    def all(self) -> list[LiveSession]:
        return list(self._sessions.values())

    def update_account(self, snapshot: AccountSnapshot) -> None:
        """A fresher read of an account: every session of it here uses it."""
        for session_id in self._by_account.get(snapshot.account_id, ()):
            self._sessions[session_id].account = snapshot

    def of_account(self, account_id: str) -> list[LiveSession]:
        return [self._sessions[i] for i in self._by_account.get(account_id, ())]

    def account(self, account_id: str) -> AccountSnapshot | None:
        """The snapshot a session of this account here already has, if any."""
        for session_id in self._by_account.get(account_id, ()):
            return self._sessions[session_id].account
        return None


def monotonic() -> float:
    return time.monotonic()
