"""Settlement: end a session, capture exactly the charge of its final usage from its holds
(oldest first), release the rest, write the service record with the gateway's ENDED
notice, and tell presence. Safe to repeat and to resume after a crash: the final usage is
fixed (ACTIVE -> SETTLING) before any money moves, and every movement is keyed by the
session and the hold. Usage beyond what the holds pay for is recorded on the record
(unbilled, with why) and ends the session as BALANCE_EXHAUSTED; the gateway's and the
device's counts are both kept, with their difference. Each capture carries the session's
usage summary for the bill. A hold someone else captured or released first is read back,
and the record charges what the ledger captured, with the difference flagged
(domain/holds.py), instead of the settlement failing forever. An account suspended or
closed ends its sessions here with OPERATOR (`account_stopped`, or `cut_off` when the
next slice was refused for it)."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta

from meterline.kernel import metrics
from meterline.kernel.errors import FailedPrecondition, MeterlineError, NotFound, Unavailable
from service_manager.app.live import LiveSession, LiveSessions
from service_manager.app.metering import Metered, Termination, UsageBatcher
from service_manager.app.notices import GatewayNotices
from service_manager.app.ports import Fence, Funds, Presence, SessionStore
from service_manager.app.quota import Quota
from service_manager.domain import quota as rules
from service_manager.domain.holds import (
    HOLD_CLOSED,
    HoldStatus,
    SettledHold,
    settled_charge,
    settled_elsewhere,
    settled_here,
)
from service_manager.domain.notices import GatewayNotice, NoticeKind
from service_manager.domain.ownership import held_elsewhere
from service_manager.domain.records import (
    ServiceRecord,
    UsageEvent,
    UsageSummary,
    unbilled,
    usage_discrepancy,
    usage_summary,
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
        # When the session ended: fixed when the settlement was claimed (the database's
        # clock), so a repeat sends the same summary and writes the same record.
        ended_at = max(session.last_update_at, session.started_at)
        usage = usage_summary(session, charge, ended_at)
        settled = [
            await self._settle_hold(session_id, hold_id, take, usage)
            for hold_id, take in rules.split_capture(charge, holds)
        ]
        outcome = settled_charge(charge, settled)
        if outcome.note:
            log.warning(
                "session %s of account %s: %s",
                session_id,
                session.account_id,
                outcome.note,
            )
        reason = session.termination_reason or TerminationReason.CLIENT_STOP
        unbilled_units, unbilled_reason = unbilled(session.used_units, session.billable_units)
        if unbilled_units and reason is not TerminationReason.OPERATOR:
            # Usage the holds could not pay for: the session ended at the grant (unless an
            # operator ended it, directly or by suspending its account).
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
                ended_at=ended_at,
                used_units=session.used_units,
                billed_units=session.billable_units,
                charged_micros=outcome.captured_micros,
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
                settlement_difference_micros=outcome.difference_micros,
                settlement_note=outcome.note,
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

    async def _settle_hold(
        self, session_id: str, hold_id: str, take: int, usage: UsageSummary
    ) -> SettledHold:
        """Capture `take` from the hold (releasing the rest), or release it when `take` is
        0. A hold someone else closed first is read back, so the record says what
        actually happened instead of the settlement failing on it forever. Our own
        earlier attempt is not someone else: its key replays its first result."""
        key = f"{session_id}:settle:{hold_id}"
        try:
            if take:
                await self._funds.capture(hold_id, take, key, usage)
            else:
                await self._funds.release(hold_id, key)
        except FailedPrecondition as error:
            if error.reason != HOLD_CLOSED:
                raise
            state = await self._funds.hold(hold_id)
            if state.status is HoldStatus.OPEN:  # not closed after all: try again later
                raise Unavailable(
                    "The billing manager refused to settle an open hold; try again shortly."
                ) from error
            return settled_elsewhere(take, state)
        return settled_here(hold_id, take)

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
        """End a session whose grant is used up and cannot be extended: for want of money,
        or (OPERATOR) because its account was suspended or closed, which the snapshot
        read again after the refused slice says (the status event may have been lost)."""
        reason = (
            TerminationReason.BALANCE_EXHAUSTED
            if live.account.active
            else TerminationReason.OPERATOR
        )
        metrics.CUT_OFFS.labels(reason.value).inc()
        await self.settle(live.session.session_id, None, reason)

    async def account_stopped(self, account_id: str) -> int:
        """The account was suspended or closed (the billing manager's event): end each of
        its sessions this instance holds with OPERATOR, and tell the streams that accept
        pushes at once (the others hear it at their next update); and end its sessions
        that no stream holds right now (between two streams: no owner, ours but not
        here, or an owner quiet past its lease, domain/ownership.py), which nobody else
        would end before the liveness sweep. Sessions another instance holds are left to
        it: it hears the same event. An account active again by now is left alone.
        Returns how many sessions were ended."""
        lives = [
            live
            for live in self._live.of_account(account_id)
            if live.session.is_active and not live.lost
        ]
        unheld = await self._between_streams(
            account_id, {live.session.session_id for live in lives}
        )
        if not lives and not unheld:
            return 0
        try:
            if (await self._funds.account(account_id)).active:
                return 0  # reactivated since
        except Unavailable:
            pass  # the event says it is not active: that is enough to end them
        ended = 0
        for live in lives:
            session_id = live.session.session_id
            try:
                record = await self.settle(session_id, None, TerminationReason.OPERATOR)
            except MeterlineError as error:
                # Its next update (or the liveness sweep) ends it: the holds are refused.
                log.warning(
                    "session %s not ended on its account's suspension: %s", session_id, error
                )
                continue
            ended += 1
            reason = record.termination_reason
            pushed = Metered(
                live.session,
                rules.display_balance(live.session, live.account),
                Termination(reason, TERMINATION_MESSAGES[reason], False, True),
                None,
                pushed=True,
            )
            for stream in list(live.pushers):
                stream.push(pushed)
        for session_id in unheld:
            try:
                await self.settle(session_id, None, TerminationReason.OPERATOR)
            except MeterlineError as error:
                log.warning(
                    "session %s (between streams) not ended on its account's suspension: %s",
                    session_id,
                    error,
                )
                continue
            ended += 1
        log.info("account %s is not active: %d sessions here ended", account_id, ended)
        return ended

    async def _between_streams(self, account_id: str, held_here: set[str]) -> list[str]:
        """The account's ACTIVE sessions that no stream holds: not `held_here`, and not
        held by another live instance."""
        try:
            found = await self._store.active_of_account(account_id)
        except Unavailable as error:
            # The liveness sweep, or the next slice's refusal, ends them later.
            log.warning("sessions of account %s between streams not read: %s", account_id, error)
            return []
        now = datetime.now(UTC)
        return [
            session.session_id
            for session in found
            if session.session_id not in held_here
            and not held_elsewhere(session, self._owner_id, now)
        ]
