"""Metering: the usage update path. A stream that names a session takes the session over
(a new fencing epoch in its row) and keeps it in memory; each update is then decided in
memory and answered at once. Usage goes to the database in batches (UsageBatcher), the
next slice is reserved ahead in the background (Quota), displays hear of it through
Presence, which sends in the background too. Only an update that has used the whole
grant waits, for the slice that pays for it, or is cut off.

The answers also carry the low-balance and final-unit indications; the gateway hears of
each once (GatewayNotices), and of its lifting. A top-up (`on_funded`) reserves the next
slice at once and pushes the new grant to the streams that accept pushes."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

from meterline.kernel import metrics
from meterline.kernel.batching import Batched
from meterline.kernel.errors import NotFound, Unavailable
from meterline.kernel.media import Unit
from meterline.kernel.principals import Principal
from service_manager.app.live import LiveSession, LiveSessions
from service_manager.app.notices import GatewayNotices
from service_manager.app.ports import Fence, Funds, Presence, SessionStore, UsageWrite
from service_manager.app.quota import Quota
from service_manager.domain import quota as quota_rules
from service_manager.domain.notices import (
    FINAL_UNITS_MESSAGE,
    LIFTED_MESSAGE,
    LOW_BALANCE_MESSAGE,
    GatewayNotice,
    NoticeKind,
)
from service_manager.domain.records import UsageEvent
from service_manager.domain.sessions import (
    TERMINATION_MESSAGES,
    Session,
    SessionStatus,
    TerminationReason,
    UpdateKind,
    apply_client_usage,
    classify_update,
)

log = logging.getLogger(__name__)


class SessionMoved(Unavailable):
    reason = "SESSION_MOVED"


def session_moved() -> SessionMoved:
    return SessionMoved(
        "This session's usage is now handled by another server; open the stream again."
    )


@dataclass(frozen=True, slots=True)
class Termination:
    reason: TerminationReason
    message: str
    final_unit_indication: bool
    ended: bool


@dataclass(frozen=True, slots=True)
class Metered:
    """The answer to one usage update."""

    session: Session
    balance_micros: int
    """What the account would have left if the session ended now."""
    termination: Termination | None
    seconds_left: int | None
    low_balance: bool = False
    """The balance left is below the low-balance threshold."""
    pushed: bool = False
    """No update asked for it: pushed (a new grant after a top-up)."""


@dataclass(slots=True, eq=False)
class MeterStream:
    """One open Meter stream (or one unary call that meters): who calls, and the
    sessions it has attached here."""

    principal: Principal
    attached: dict[str, LiveSession] = field(default_factory=dict)
    outbox: asyncio.Queue[Metered | BaseException | None] | None = None
    """Set when the stream accepts pushed responses: where its answers and pushes go (the
    servicer also puts the reader's failure, or None once the updates ended)."""

    def push(self, metered: Metered) -> None:
        if self.outbox is not None:
            self.outbox.put_nowait(metered)


class Metering:
    def __init__(
        self,
        store: SessionStore,
        funds: Funds,
        quota: Quota,
        presence: Presence,
        live: LiveSessions,
        owner_id: str,
        max_sequence_gap: int,
        notices: GatewayNotices | None = None,
        low_balance_micros: int = 0,
    ) -> None:
        self._store = store
        self._funds = funds
        self._quota = quota
        self._presence = presence
        self._live = live
        self.owner_id = owner_id
        self._max_gap = max_sequence_gap
        self._notices = notices
        self.low_balance_micros = low_balance_micros
        self._attaching: dict[str, asyncio.Future[LiveSession | None]] = {}
        # Streams opening together (a failover brings thousands at once) read and take
        # over their sessions in a few statements, not two each.
        self._found: Batched[str, Session] = Batched(store.get_many)
        self._taken: Batched[str, Session] = Batched(self._take_over_many)
        self.cut_off: Callable[[LiveSession], Awaitable[None]] | None = None
        """Set by the wiring: ends a session whose grant is used up (settlement)."""

    async def update(
        self, stream: MeterStream, session_id: str, sequence: int, used_units: int
    ) -> Metered:
        live = stream.attached.get(session_id)
        if live is None:
            live = await self.attach(stream, session_id)
            if live is None:
                return await self.ended_answer(session_id)
        if live.lost:
            return await self._lost_answer(session_id)
        session = live.session
        if session.status is not SessionStatus.ACTIVE:
            return await self.ended_answer(session_id, live)
        if classify_update(session, sequence, used_units, self._max_gap) is UpdateKind.APPLY:
            apply_client_usage(session, sequence, used_units, datetime.now(UTC))
            metrics.USAGE_UPDATES.inc()
            self._live.mark_dirty(live)
            # after_usage, with no coroutine for the usual update (it neither waits nor
            # ends the session).
            if session.used_units >= session.granted_units:
                await self.after_usage(live)
                if live.lost:
                    return await self._lost_answer(session_id)
            elif self._quota.near_end(live):
                self._quota.reserve_ahead(live)
        return self.answer(live)

    async def _lost_answer(self, session_id: str) -> Metered:
        """This instance lost the session: it ended elsewhere, or moved."""
        stored = await self._store.get(session_id)
        if stored is not None and not stored.is_active:
            return await self.ended_answer(session_id)
        raise session_moved()

    def note_usage(self, live: LiveSession) -> None:
        """Usage changed outside a stream's update (a gateway's report)."""
        self._live.mark_dirty(live)

    async def after_usage(self, live: LiveSession) -> None:
        """Keep the grant ahead of the usage; cut the session off when it has used the
        whole grant and no slice can be had."""
        session = live.session
        if session.used_units >= session.granted_units:
            await self._quota.cover(live)
            if session.is_active and session.used_units >= session.granted_units and not live.lost:
                assert self.cut_off is not None
                await self.cut_off(live)
        elif self._quota.near_end(live):
            self._quota.reserve_ahead(live)

    def answer(self, live: LiveSession) -> Metered:
        session = live.session
        balance = quota_rules.display_balance(session, live.account)
        seconds_left = self._seconds_left(live)
        termination = None
        low = False
        if session.status is not SessionStatus.ACTIVE:
            reason = session.termination_reason or TerminationReason.CLIENT_STOP
            termination = Termination(reason, TERMINATION_MESSAGES[reason], False, True)
        else:
            if live.final_units and self._quota.near_end(live):
                termination = Termination(
                    TerminationReason.BALANCE_EXHAUSTED, FINAL_UNITS_MESSAGE, True, False
                )
            low = quota_rules.low_balance(session, balance, self.low_balance_micros)
            if low is not live.low_noticed or live.final_noticed is not (termination is not None):
                self._tell_gateway(live, termination is not None, low, balance, seconds_left)
        ended = final = False
        why: TerminationReason | None = None
        if termination is not None:
            ended, why = termination.ended, termination.reason
            final = termination.final_unit_indication
        # By position: on the usage path a quarter cheaper than by keyword. Fields:
        # account, session, balance, charged, used, ended, reason, final units, low
        # balance, seconds left.
        event = UsageEvent(
            session.account_id,
            session.session_id,
            balance,
            session.charged_micros,
            session.used_units,
            ended,
            why,
            final,
            low,
            seconds_left,
        )
        self._presence.usage(session, event)
        return Metered(session, balance, termination, seconds_left, low)

    def _tell_gateway(
        self, live: LiveSession, final: bool, low: bool, balance: int, seconds_left: int | None
    ) -> None:
        """The answer's indications changed: the gateway hears of a new low balance, of the
        final units, and of their lifting (each once)."""
        kinds = []
        if live.final_noticed and not final and not live.final_units:
            kinds.append((NoticeKind.FINAL_UNITS_LIFTED, LIFTED_MESSAGE))
        if low and not live.low_noticed:
            kinds.append((NoticeKind.LOW_BALANCE, LOW_BALANCE_MESSAGE))
        if final and not live.final_noticed:
            kinds.append((NoticeKind.FINAL_UNITS, FINAL_UNITS_MESSAGE))
        live.low_noticed = low
        if final:
            live.final_noticed = True
        elif not live.final_units:
            live.final_noticed = False
        if self._notices is None:
            return
        session = live.session
        for kind, message in kinds:
            self._notices.send(
                GatewayNotice(
                    gateway_id=session.gateway_id,
                    session_id=session.session_id,
                    account_id=session.account_id,
                    kind=kind,
                    message=message,
                    reason=(
                        TerminationReason.BALANCE_EXHAUSTED
                        if kind is NoticeKind.FINAL_UNITS
                        else None
                    ),
                    balance_micros=balance,
                    seconds_left=seconds_left,
                    granted_units=session.granted_units,
                )
            )

    async def on_funded(self, account_id: str) -> int:
        """The account was topped up: its sessions here that are on their final units (or
        near the end of their grant) get the next slice now, and the streams that accept
        pushes hear of the new grant without waiting for their next update. Returns how
        many sessions got a new grant."""
        lives = [
            live
            for live in self._live.of_account(account_id)
            if live.session.is_active and not live.lost
        ]
        if not lives:
            return 0
        try:
            snapshot = await self._funds.account(account_id)
        except Unavailable as error:
            log.info("account %s funded, but not read again: %s", account_id, error)
            return 0
        self._live.update_account(snapshot)
        granted = 0
        for live in lives:
            live.account = snapshot
            before = live.session.granted_units
            if live.final_units or self._quota.near_end(live):
                await self._quota.grant_now(live)
            if live.lost or not live.session.is_active:
                continue
            metered = self.answer(live)
            if live.session.granted_units > before:
                granted += 1
                pushed = replace(metered, pushed=True)
                for stream in list(live.pushers):
                    stream.push(pushed)
        return granted

    def _seconds_left(self, live: LiveSession) -> int | None:
        session = live.session
        if session.rate.unit is not Unit.SECOND:
            return None
        granted, used = session.granted_units, session.used_units
        base = granted if used <= granted else used
        available = live.account.available_micros
        reach = live.reach_cache(granted, base, available)
        if reach is None:
            reach = -1 if session.rate.is_free else quota_rules.reachable_units(session, available)
            live.remember_reach(granted, base, available, reach)
        if reach < 0:
            return None
        return max(reach - used, 0)

    async def ended_answer(self, session_id: str, live: LiveSession | None = None) -> Metered:
        """The answer for a session that is no longer active: how it ended."""
        session = live.session if live is not None else None
        if session is None or session.termination_reason is None:
            # Ended elsewhere: the database has how.
            session = await self._store.get(session_id) or session
        if session is None:
            raise NotFound(f"There is no session {session_id!r}.", reason="SESSION_NOT_FOUND")
        account = await self._funds.account(session.account_id)
        reason = session.termination_reason or TerminationReason.CLIENT_STOP
        return Metered(
            session,
            account.available_micros,
            Termination(reason, TERMINATION_MESSAGES[reason], False, True),
            None,
        )

    # -- owning sessions -----------------------------------------------------------------

    async def attach(self, stream: MeterStream, session_id: str) -> LiveSession | None:
        """Use a session on this stream: the live one of this instance if another stream
        here has it, else take it over from the database. None if it is not active."""
        while True:
            live = self._live.get(session_id)
            if live is not None and not live.lost:
                stream.principal.require_session(live.session.account_id, live.session.gateway_id)
                live.streams += 1
                stream.attached[session_id] = live
                if stream.outbox is not None:
                    live.pushers.add(stream)
                return live
            pending = self._attaching.get(session_id)
            if pending is None:
                break
            await asyncio.shield(pending)
        future: asyncio.Future[LiveSession | None] = asyncio.get_running_loop().create_future()
        self._attaching[session_id] = future
        try:
            live = await self._take_over(stream.principal, session_id)
            future.set_result(live)
        except BaseException as error:
            future.set_result(None)
            raise error
        finally:
            del self._attaching[session_id]
        if live is not None:
            live.streams += 1
            stream.attached[session_id] = live
            if stream.outbox is not None:
                live.pushers.add(stream)
        return live

    async def _take_over_many(self, session_ids: list[str]) -> dict[str, Session]:
        return await self._store.take_over_many(session_ids, self.owner_id)

    async def _take_over(self, principal: Principal, session_id: str) -> LiveSession | None:
        found = await self._found(session_id)
        if found is None:
            raise NotFound(f"There is no session {session_id!r}.", reason="SESSION_NOT_FOUND")
        principal.require_session(found.account_id, found.gateway_id)
        if not found.is_active:
            return None
        old = self._live.remove(session_id)
        if old is not None:
            old.lost = True
        session = await self._taken(session_id)
        if session is None:
            return None
        account = self._live.account(session.account_id) or await self._funds.account(
            session.account_id
        )
        live = self._live.add(LiveSession(session, account))
        pending = session.pending_hold_number
        if pending and await self._quota.resolve_pending(session, Fence.of(session)) is None:
            live.lost = True
        return live

    async def detach(self, stream: MeterStream) -> None:
        """The stream ended: let the session go when no other stream here uses it, once
        what it reported is written."""
        for live in stream.attached.values():
            live.streams -= 1
            live.pushers.discard(stream)
            # A session with usage still to write stays until the next batch has it (the
            # batcher lets it go then): many streams closing at once make one statement.
            if live.streams == 0 and not live.dirty:
                release_if_idle(self._live, live)
        stream.attached.clear()


def release_if_idle(registry: LiveSessions, live: LiveSession) -> None:
    """Forget a live session no stream, reservation or settlement here uses any more."""
    busy = live.streams > 0 or live.reserving is not None
    if not busy and registry.get(live.session.session_id) is live:
        registry.remove(live.session.session_id)


class UsageBatcher:
    """Writes the usage of the live sessions to the database: every interval, for all
    that changed, in one statement fenced by each session's epoch."""

    def __init__(self, store: SessionStore, live: LiveSessions, interval: float) -> None:
        self._store = store
        self._live = live
        self.interval = interval

    async def run(self) -> None:
        failing = False
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.flush()
                if failing:
                    log.info("usage batches are written again")
                failing = False
            except Unavailable as error:
                if not failing:
                    log.warning("usage batch not written; trying again: %s", error)
                failing = True

    async def flush(self, only: list[LiveSession] | None = None) -> None:
        if only is None:
            ids = self._live.dirty
            if not ids:
                return
            self._live.dirty = set()
            batch = [live for live in (self._live.get(i) for i in ids) if live is not None]
        else:
            batch = [live for live in only if live.dirty]
            for live in batch:
                self._live.dirty.discard(live.session.session_id)
        if not batch:
            return
        writes = []
        for live in batch:
            live.dirty = False
            session = live.session
            # By position (a quarter cheaper, one per session and batch): session, epoch,
            # last sequence, client's, gateway's and session's usage, last update.
            writes.append(
                UsageWrite(
                    session.session_id,
                    session.owner_epoch,
                    session.last_sequence,
                    session.client_used_units,
                    session.gateway_used_units,
                    session.used_units,
                    session.last_update_at,
                )
            )
        try:
            accepted = await self._store.save_usage(writes)
        except BaseException:
            for live in batch:
                if not live.lost:
                    self._live.mark_dirty(live)
            raise
        for live in batch:
            if live.session.session_id in accepted or not live.session.is_active:
                if live.streams == 0 and not live.dirty:
                    release_if_idle(self._live, live)
                continue
            if live.session.session_id not in accepted and live.session.is_active:
                log.info(
                    "session %s was taken over elsewhere; this instance lets it go",
                    live.session.session_id,
                )
                live.lost = True
                if self._live.get(live.session.session_id) is live:
                    self._live.remove(live.session.session_id)

    async def verify(self) -> None:
        """Let go of live sessions another instance took over or ended, even when they
        had nothing to write."""
        lives = self._live.all()
        if not lives:
            return
        owners = await self._store.ownership([live.session.session_id for live in lives])
        for live in lives:
            session = live.session
            owner = owners.get(session.session_id)
            if owner is not None and owner.epoch == session.owner_epoch:
                continue
            if session.is_active and not live.lost:
                live.lost = True
                if live.streams == 0:
                    self._live.remove(session.session_id)
