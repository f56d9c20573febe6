"""StopService: a device, gateway or operator ends a session and gets its record."""

from __future__ import annotations

from meterline.kernel.errors import NotFound
from meterline.kernel.principals import Principal, PrincipalKind
from service_manager.app.ports import SessionStore
from service_manager.app.settlement import Settlement
from service_manager.domain.records import ServiceRecord
from service_manager.domain.sessions import TerminationReason


def reason_for(principal: Principal) -> TerminationReason:
    if principal.kind is PrincipalKind.GATEWAY:
        return TerminationReason.GATEWAY
    if principal.kind is PrincipalKind.OPERATOR:
        return TerminationReason.OPERATOR
    return TerminationReason.CLIENT_STOP


class StopSession:
    def __init__(self, store: SessionStore, settlement: Settlement) -> None:
        self._store = store
        self._settlement = settlement

    async def __call__(
        self, principal: Principal, session_id: str, used_units: int
    ) -> ServiceRecord:
        session = await self._store.get(session_id)
        if session is None:
            raise NotFound(f"There is no session {session_id!r}.", reason="SESSION_NOT_FOUND")
        principal.require_session(session.account_id, session.gateway_id)
        # A device's or a gateway's final count may not be below its own last report; an
        # operator's is a floor only (0 settles what was reported).
        reporter = {PrincipalKind.DEVICE: "client", PrincipalKind.GATEWAY: "gateway"}.get(
            principal.kind, ""
        )
        return await self._settlement.settle(
            session_id, used_units, reason_for(principal), reporter
        )
