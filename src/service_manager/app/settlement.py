"""Settlement: end a session, capture exactly the charge of its final usage from its holds
(oldest first), release the rest, write the service record with the gateway's ENDED
notice, and tell presence. Safe to repeat and to resume after a crash: the final usage is
fixed (ACTIVE -> SETTLING) before any money moves, and every movement is keyed by the
session and the hold. Usage beyond what the holds pay for is recorded on the record
(unbilled, with why) and ends the session as BALANCE_EXHAUSTED; the gateway's and the
device's counts are both kept, with their difference."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta

from meterline.kernel import metrics
from meterline.kernel.errors import NotFound, Unavailable
from service_manager.app.live import LiveSession, LiveSessions
from service_manager.app.metering import UsageBatcher
from service_manager.app.notices import GatewayNotices
from service_manager.app.ports import Fence, Funds, Presence, SessionStore
from service_manager.app.quota import Quota
from service_manager.domain import quota as rules
from service_manager.domain.notices import GatewayNotice, NoticeKind
from service_manager.domain.records import (
    ServiceRecord,
    UsageEvent,
    unbilled,
    usage_discrepancy,
)
from service_manager.domain.sessions import (
    TERMINATION_MESSAGES,
    Session,
    SessionStatus,
    TerminationReason,
    ensure_not_backwards,
    validate_used_units,
)

log = logging.getLogger(__name__)

SETTLEMENT_LEASE = timedelta(seconds=10)
"""A settlement not heard of for this long is taken over by whoever asks next."""


class Settlement:
    def __init__(
        self,
        store: SessionStore,
        funds: Funds,
        quota: Quota,
        presence: Presence,
        live: LiveSessions,
        batcher: UsageBatcher,
        owner_id: str,
        notices: GatewayNotices | None = None,
    ) -> None:
        self._store = store
        self._funds = funds
        self._quota = quota
        self._presence = presence
        self._live = live
        self._batcher = batcher
        self._owner_id = owner_id
        self._notices = notices

    async def settle(
        self,
        session_id: str,
        final_used: int | None,
        reason: TerminationReason,
        reporter: str = "",
    ) -> ServiceRecord:
        """End a session with `reason`. `final_used` (if given) may not be below the
        reporter's own last count ("client" or "gateway"; "" for none); the usage
        settled is never below what was reported."""
        if final_used is not None:
            validate_used_units(final_used)
        record = await self._store.record(session_id)
        if record is not None:
            return record
        live = self._live.get(session_id)
        if live is not None and not live.lost and live.session.is_active:
            # This instance holds the stream: its newest usage goes in first.
            if live.reserving is not None:
                await asyncio.shield(live.reserving)
            if live.dirty:
                await self._batcher.flush([live])
            current = live.session
        else:
            found = await self._store.get(session_id)
            if found is None:
                raise NotFound(f"There is no session {session_id!r}.", reason="SESSION_NOT_FOUND")
            if found.is_active and found.owner_id not in ("", self._owner_id):
                # Another instance holds the stream: let its last batch land.
                await asyncio.sleep(2 * self._batcher.interval)
                found = await self._store.get(session_id) or found
            current = found
        if final_used is not None:
            floor = {
                "client": current.client_used_units,
                "gateway": current.gateway_used_units,
            }.get(reporter, 0)
            ensure_not_backwards(floor, final_used)
        claimed = await self._store.claim_settlement(
            session_id,
            final_used or 0,
            reason,
            client_final=(final_used or 0) if reporter == "client" else 0,
            gateway_final=(final_used or 0) if reporter == "gateway" else 0,
        )
        if claimed is None:
            return await self._join(session_id)
        if live is not None:
            live.session.status = SessionStatus.SETTLING
            live.session.termination_reason = claimed.termination_reason
        return await self.complete(claimed)

    async def _join(self, session_id: str) -> ServiceRecord:
        """Another call is settling the session: wait for its record, or take over a
        settlement that stopped (its settler died)."""
        deadline = asyncio.get_running_loop().time() + SETTLEMENT_LEASE.total_seconds() + 1
        while True:
            record = await self._store.record(session_id)
            if record is not None:
                return record
            stale = await self._store.claim_stale_settlement(
                session_id, datetime.now(UTC) - SETTLEMENT_LEASE
            )
            if stale is not None:
                return await self.complete(stale)
            if asyncio.get_running_loop().time() > deadline:
                raise Unavailable("The session is being settled; try again in a moment.")
            await asyncio.sleep(0.05)

    async def complete(self, session: Session) -> ServiceRecord:
        """Finish a claimed (SETTLING) settlement."""
        assert session.status is SessionStatus.SETTLING
        session_id = session.session_id
        live = self._live.get(session_id)
        fence = Fence.of(session)
        pending = session.pending_hold_number
        if pending and await self._quota.resolve_pending(session, fence) is None:
            return await self._join(session_id)
        if session.used_units > session.granted_units:
            await self._cover_final_usage(session, fence)
        holds = await self._store.holds(session_id)
        charge = session.charged_micros
        for hold_id, take in rules.split_capture(charge, holds):
            key = f"{session_id}:settle:{hold_id}"
            if take:
                await self._funds.capture(hold_id, take, key)
            else:
                await self._funds.release(hold_id, key)
        reason = session.termination_reason or TerminationReason.CLIENT_STOP
        unbilled_units, unbilled_reason = unbilled(session.used_units, session.billable_units)
        if unbilled_units:
            # Usage the holds could not pay for: the session ended at the grant.
            reason = TerminationReason.BALANCE_EXHAUSTED
        if self._notices is not None:
            await self._notices.drain(session_id)  # its earlier notices come first
        record = await self._store.finish(
            ServiceRecord(
                session_id=session_id,
                account_id=session.account_id,
                service_type=session.service_type,
                endpoint=session.endpoint,
                application_id=session.application_id,
                gateway_id=session.gateway_id,
                rate=session.rate,
                started_at=session.started_at,
                ended_at=datetime.now(UTC),
                used_units=session.used_units,
                billed_units=session.billable_units,
                charged_micros=charge,
                termination_reason=reason,
                unbilled_units=unbilled_units,
                unbilled_reason=unbilled_reason,
                usage_discrepancy=usage_discrepancy(
                    session.last_sequence > 0 or session.client_used_units > 0,
                    session.client_used_units,
                    session.gateway_used_units,
                ),
                client_used_units=session.client_used_units,
                gateway_used_units=session.gateway_used_units,
            ),
            fence,
            GatewayNotice(
                gateway_id=session.gateway_id,
                session_id=session_id,
                account_id=session.account_id,
                kind=NoticeKind.ENDED,
                message=TERMINATION_MESSAGES[reason],
                reason=reason,
                granted_units=session.granted_units,
            ),
        )
        session.status = SessionStatus.ENDED
        balance = await self._announce(session, live, record)
        log.info(
            "session %s ended (%s): %d units, %d micros; balance now %d",
            session_id,
            record.termination_reason,
            record.used_units,
            record.charged_micros,
            balance,
        )
        return record

    async def _cover_final_usage(self, session: Session, fence: Fence) -> None:
        """The final usage is beyond the grant: one more try at a slice that pays for it."""
        try:
            account = await self._funds.account(session.account_id)
        except Unavailable:
            return
        grant = rules.next_grant(
            session.rate,
            session.granted_units,
            session.used_units,
            self._quota.slice_units(session.rate.unit),
            account.budget_micros,
            session.start_epoch,
        )
        if grant is not None and await self._quota.reserve(session, fence, grant) is None:
            raise Unavailable("The session is being settled elsewhere; try again in a moment.")

    async def _announce(
        self, session: Session, live: LiveSession | None, record: ServiceRecord
    ) -> int:
        """Tell presence, displays and the gateway; return the balance shown."""
        reason = record.termination_reason
        if live is not None:
            live.session.status = SessionStatus.ENDED
            live.session.termination_reason = reason
            live.session.used_units = record.used_units
            live.session.granted_units = session.granted_units
            live.session.held_micros = session.held_micros
            balance = rules.display_balance(live.session, live.account)
            if live.streams == 0:
                self._live.remove(session.session_id)
        else:
            try:
                balance = (await self._funds.account(session.account_id)).available_micros
            except Unavailable:
                balance = 0
        self._presence.ended(
            session.session_id,
            UsageEvent(
                account_id=session.account_id,
                session_id=session.session_id,
                balance_micros=balance,
                charged_micros=record.charged_micros,
                used_units=record.used_units,
                ended=True,
                reason=reason,
            ),
        )
        return balance

    async def cut_off(self, live: LiveSession) -> None:
        """End a session whose grant is used up and cannot be extended."""
        metrics.CUT_OFFS.labels(TerminationReason.BALANCE_EXHAUSTED.value).inc()
        await self.settle(live.session.session_id, None, TerminationReason.BALANCE_EXHAUSTED)
