"""Quota: slices of usage paid for by credit holds. The next slice is reserved ahead of
need, in the background; a hold is noted as pending before it is asked for and recorded
after, each step fenced by the session's epoch, so a crash or a takeover in between is
resolved by whoever holds the session next (the hold's key finds it again)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

from meterline.kernel import metrics
from meterline.kernel.config import QuotaPolicy
from meterline.kernel.errors import AlreadyExists, FailedPrecondition, Unavailable
from meterline.kernel.media import Unit
from service_manager.app.live import LiveSession, LiveSessions, monotonic
from service_manager.app.ports import Fence, Funds, SessionStore
from service_manager.domain import quota as rules
from service_manager.domain.quota import Grant
from service_manager.domain.sessions import Session

log = logging.getLogger(__name__)

RETRY_REFUSED_AFTER = 1.0
"""Seconds before a refused reservation is tried again (a top-up may have come)."""


def hold_key(session_id: str, number: int) -> str:
    return f"{session_id}:hold:{number}"


class Quota:
    def __init__(
        self,
        store: SessionStore,
        funds: Funds,
        live: LiveSessions,
        policy: QuotaPolicy,
        reserve_ahead_at: float,
    ) -> None:
        self._store = store
        self._funds = funds
        self._live = live
        self._policy = policy
        self._slices = {
            Unit.SECOND: policy.slice_seconds,
            Unit.BYTE: policy.slice_bytes,
            Unit.MESSAGE: policy.slice_messages,
            Unit.EVENT: policy.slice_events,
        }
        self.reserve_ahead_at = reserve_ahead_at
        self._background: set[asyncio.Task[None]] = set()

    def slice_units(self, unit: Unit) -> int:
        return self._slices[unit]

    def first_grant(self, session: Session, budget: int) -> Grant | None:
        return rules.next_grant(
            session.rate, 0, 0, self.slice_units(session.rate.unit), budget, session.start_epoch
        )

    def affordable_next(self, live: LiveSession) -> Grant | None:
        """The next slice the account snapshot can pay for (remembered until the grant
        or the snapshot changes)."""
        session = live.session
        budget = live.account.budget_micros
        known, grant = live.next_cache(session.granted_units, budget)
        if known and session.used_units <= session.granted_units:
            return grant
        grant = rules.next_grant(
            session.rate,
            session.granted_units,
            session.used_units,
            self.slice_units(session.rate.unit),
            budget,
            session.start_epoch,
        )
        live.remember_next(session.granted_units, budget, grant)
        return grant

    def near_end(self, live: LiveSession) -> bool:
        session = live.session
        return rules.needs_next_slice(
            session,
            session.used_units,
            self.slice_units(session.rate.unit),
            self.reserve_ahead_at,
        )

    def reserve_ahead(self, live: LiveSession) -> None:
        """Start reserving the next slice in the background, unless one is under way or
        was just refused; note the final units when the snapshot cannot pay for one."""
        if live.reserving is not None or live.lost or not live.session.is_active:
            return
        if monotonic() < live.next_try_at:
            return
        if self.affordable_next(live) is None:
            live.final_units = True
            live.next_try_at = monotonic() + RETRY_REFUSED_AFTER
            # The snapshot may be old: read the account again, off the answer's path.
            self._spawn(self._refresh(live))
            return
        live.reserving = asyncio.create_task(self._reserve_next(live))

    async def cover(self, live: LiveSession) -> None:
        """The usage reached the grant: wait for the slice under way, or reserve one now.
        The only place an update waits for the billing manager."""
        if live.reserving is not None:
            await asyncio.shield(live.reserving)
        session = live.session
        if session.used_units < session.granted_units or live.lost or not session.is_active:
            return
        live.reserving = asyncio.create_task(self._reserve_next(live, refresh=True))
        await asyncio.shield(live.reserving)

    async def grant_now(self, live: LiveSession) -> bool:
        """The account was funded: reserve the next slice now, whatever the retry pause
        after a refusal (the account snapshot is fresh). True if a slice was granted."""
        before = live.session.granted_units
        if live.reserving is not None:
            await asyncio.shield(live.reserving)
        if live.lost or not live.session.is_active:
            return False
        if live.session.granted_units > before or not (live.final_units or self.near_end(live)):
            return live.session.granted_units > before  # the one under way did it
        live.next_try_at = 0.0
        live.reserving = asyncio.create_task(self._reserve_next(live))
        return await asyncio.shield(live.reserving)

    async def _reserve_next(self, live: LiveSession, refresh: bool = False) -> bool:
        try:
            if refresh:
                await self._refresh(live)
            grant = self.affordable_next(live)
            if grant is None:
                live.final_units = True
                live.next_try_at = monotonic() + RETRY_REFUSED_AFTER
                return False
            made = await self.reserve(live.session, Fence.of(live.session), grant)
            if made is None:
                live.lost = True
                return False
            if not made:
                live.final_units = True
                live.next_try_at = monotonic() + RETRY_REFUSED_AFTER
                await self._refresh(live)
                return False
            live.final_units = False
            live.account = live.account.after_hold(grant.amount_micros)
            self._live.update_account(live.account)
            self._spawn(self._refresh(live))
            return True
        except Unavailable as error:
            log.warning("session %s: next slice not reserved: %s", live.session.session_id, error)
            live.next_try_at = monotonic() + RETRY_REFUSED_AFTER
            return False
        finally:
            live.reserving = None
            if (
                live.streams == 0
                and not live.dirty
                and self._live.get(live.session.session_id) is live
            ):
                self._live.remove(live.session.session_id)  # its last stream closed meanwhile

    async def reserve(self, session: Session, fence: Fence, grant: Grant) -> bool | None:
        """Reserve and record one grant for `session` (changed in place). True: granted;
        False: the billing manager refused it (no money); None: fenced out (the session
        moved or ended)."""
        if session.pending_hold_number and await self.resolve_pending(session, fence) is None:
            return None
        number = session.hold_count + 1
        hold_id = ""
        if grant.amount_micros:
            if not await self._store.mark_pending_hold(
                session.session_id, fence, number, grant.amount_micros, grant.granted_units
            ):
                return None
            session.pending_hold_number = number
            session.pending_hold_micros = grant.amount_micros
            session.pending_granted_units = grant.granted_units
            try:
                hold_id = await self._funds.reserve(
                    session.account_id,
                    grant.amount_micros,
                    hold_key(session.session_id, number),
                    session.session_id,
                )
            except (FailedPrecondition, AlreadyExists) as error:
                # No money (InsufficientFunds), a suspended account, or a retried slice that
                # asked for another amount: no hold was made.
                log.info("session %s: slice %d not granted: %s", session.session_id, number, error)
                if not await self._store.clear_pending_hold(session.session_id, fence):
                    return None
                _forget_pending(session)
                return False
        stored = await self._store.record_hold(
            session.session_id, fence, number, hold_id, grant.amount_micros, grant.granted_units
        )
        if stored is None:
            return None
        adopt_holds(session, stored)
        metrics.SLICES_RESERVED.inc()
        return True

    async def resolve_pending(self, session: Session, fence: Fence) -> bool | None:
        """A hold noted as pending by a start or a slice that did not finish: ask for it
        again with its key (which returns it if it was made) and record it. True if the
        hold is recorded, False if it could not be made, None if fenced out."""
        number = session.pending_hold_number
        amount = session.pending_hold_micros
        granted = session.pending_granted_units
        try:
            hold_id = await self._funds.reserve(
                session.account_id, amount, hold_key(session.session_id, number), session.session_id
            )
        except (FailedPrecondition, AlreadyExists) as error:
            log.info("session %s: pending hold %d not made: %s", session.session_id, number, error)
            if not await self._store.clear_pending_hold(session.session_id, fence):
                return None
            _forget_pending(session)
            return False
        stored = await self._store.record_hold(
            session.session_id, fence, number, hold_id, amount, granted
        )
        if stored is None:
            return None
        adopt_holds(session, stored)
        metrics.SLICES_RESERVED.inc()
        return True

    async def _refresh(self, live: LiveSession) -> None:
        try:
            snapshot = await self._funds.account(live.session.account_id)
        except Unavailable as error:
            log.info("account %s not read again: %s", live.session.account_id, error)
            return
        self._live.update_account(snapshot)
        live.account = snapshot

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def close(self) -> None:
        for task in list(self._background):
            task.cancel()


def _forget_pending(session: Session) -> None:
    session.pending_hold_number = 0
    session.pending_hold_micros = 0
    session.pending_granted_units = 0


def adopt_holds(session: Session, stored: Session) -> None:
    """Take the grant and holds as the database recorded them."""
    session.granted_units = stored.granted_units
    session.held_micros = stored.held_micros
    session.hold_count = stored.hold_count
    session.pending_hold_number = stored.pending_hold_number
    session.pending_hold_micros = stored.pending_hold_micros
    session.pending_granted_units = stored.pending_granted_units
