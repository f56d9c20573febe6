"""Liveness: settle the sessions no usage update reached within the quota validity, and
the settlements a crash left unfinished; and keep presence whole after Redis lost it."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta

from meterline.kernel import metrics
from meterline.kernel.errors import MeterlineError
from service_manager.app.ports import Presence, SessionStore
from service_manager.app.settlement import SETTLEMENT_LEASE, Settlement

log = logging.getLogger(__name__)

SWEEP_BATCH = 100


class Expiry:
    def __init__(
        self,
        store: SessionStore,
        settlement: Settlement,
        presence: Presence,
        validity: timedelta,
    ) -> None:
        self._store = store
        self._settlement = settlement
        self._presence = presence
        self._validity = validity

    async def sweep(self) -> int:
        """One round: claim silent sessions and stale settlements, settle them."""
        now = datetime.now(UTC)
        claimed = await self._store.claim_idle(
            now - self._validity, now - SETTLEMENT_LEASE, SWEEP_BATCH
        )
        await asyncio.gather(*(self._settle(session_id) for session_id in claimed))
        return len(claimed)

    async def _settle(self, session_id: str) -> None:
        try:
            session = await self._store.get(session_id)
            if session is not None and session.termination_reason is not None:
                metrics.CUT_OFFS.labels(session.termination_reason.value).inc()
                await self._settlement.complete(session)
        except MeterlineError as error:
            log.warning(
                "session %s: settlement after liveness timeout failed: %s", session_id, error
            )

    async def keep_presence(self) -> bool:
        """Write presence again from the active sessions if Redis lost it (a restart or a
        flush); True if it did."""
        if not await self._presence.needs_rebuild():
            return False
        sessions = await self._store.active_sessions()
        rebuilt = await self._presence.rebuild_if_lost(sessions)
        if rebuilt:
            log.info("presence rebuilt from %d active sessions", len(sessions))
        return rebuilt
