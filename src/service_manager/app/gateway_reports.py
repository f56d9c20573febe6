"""ReportGatewayUsage: authoritative usage from the session's gateway. The gateway's
counter is kept apart from the device's; the session's usage is the larger."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from meterline.kernel.errors import NotFound
from meterline.kernel.principals import Principal, PrincipalKind
from service_manager.app.metering import Metering, MeterStream
from service_manager.app.ports import SessionStore
from service_manager.app.settlement import Settlement
from service_manager.domain.records import ServiceRecord
from service_manager.domain.sessions import (
    TerminationReason,
    apply_gateway_usage,
    ensure_not_backwards,
    validate_used_units,
)


@dataclass(frozen=True, slots=True)
class GatewayReport:
    charged_micros: int
    record: ServiceRecord | None


class ReportGatewayUsage:
    def __init__(
        self,
        store: SessionStore,
        metering: Metering,
        settlement: Settlement,
    ) -> None:
        self._store = store
        self._metering = metering
        self._settlement = settlement

    async def __call__(
        self, principal: Principal, session_id: str, used_units: int, ended: bool
    ) -> GatewayReport:
        principal.require_kind(
            PrincipalKind.GATEWAY, PrincipalKind.OPERATOR, action="report gateway usage"
        )
        validate_used_units(used_units)
        if ended:
            session = await self._store.get(session_id)
            if session is None:
                raise NotFound(f"There is no session {session_id!r}.", reason="SESSION_NOT_FOUND")
            principal.require_session(session.account_id, session.gateway_id)
            record = await self._settlement.settle(
                session_id, used_units, TerminationReason.GATEWAY, "gateway"
            )
            return GatewayReport(record.charged_micros, record)
        # Metered like a stream of one update: the session is used here (taken over if
        # another instance had it) and its quota kept ahead of the usage.
        stream = MeterStream(principal)
        try:
            live = await self._metering.attach(stream, session_id)
            if live is None or not live.session.is_active:
                stored = await self._store.get(session_id)
                assert stored is not None
                return GatewayReport(stored.charged_micros, await self._store.record(session_id))
            ensure_not_backwards(live.session.gateway_used_units, used_units)
            apply_gateway_usage(live.session, used_units, datetime.now(UTC))
            self._metering.note_usage(live)
            await self._metering.after_usage(live)
            if not live.session.is_active:  # cut off: the report went past the balance
                record = await self._settlement.settle(
                    session_id, None, TerminationReason.BALANCE_EXHAUSTED
                )
                return GatewayReport(record.charged_micros, record)
            # Low-balance and final-unit indications, as for a device's update.
            self._metering.answer(live)
            return GatewayReport(live.session.charged_micros, None)
        finally:
            await self._metering.detach(stream)
