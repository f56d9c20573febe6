"""Choosing a gateway for a new session: an enabled one that carries the service type,
with the fewest active sessions. The registry and the loads are read from the database
at most every few seconds, and counted on here in between, so a start does not wait on
a count over all sessions."""

from __future__ import annotations

import asyncio
import time

from meterline.kernel.errors import FailedPrecondition
from meterline.kernel.media import ServiceType
from service_manager.app.ports import GatewayInfo, SessionStore

REFRESH_SECONDS = 2.0


class GatewayChooser:
    def __init__(self, store: SessionStore) -> None:
        self._store = store
        self._gateways: list[GatewayInfo] = []
        self._loads: dict[str, int] = {}
        self._read_at = -REFRESH_SECONDS
        self._lock = asyncio.Lock()

    async def _fresh(self) -> list[GatewayInfo]:
        if time.monotonic() - self._read_at >= REFRESH_SECONDS:
            async with self._lock:
                if time.monotonic() - self._read_at >= REFRESH_SECONDS:
                    self._gateways = await self._store.gateways()
                    self._loads = {g.gateway_id: g.active_sessions for g in self._gateways}
                    self._read_at = time.monotonic()
        return self._gateways

    async def choose(self, service_type: ServiceType) -> GatewayInfo:
        candidates = [
            gateway
            for gateway in await self._fresh()
            if gateway.enabled
            and (gateway.service_types is None or service_type in gateway.service_types)
        ]
        if not candidates:
            raise FailedPrecondition(
                f"No gateway carries {service_type} services right now; try again later.",
                reason="NO_GATEWAY",
            )
        chosen = min(candidates, key=lambda g: (self._loads.get(g.gateway_id, 0), g.gateway_id))
        self._loads[chosen.gateway_id] = self._loads.get(chosen.gateway_id, 0) + 1
        return chosen

    async def address(self, gateway_id: str) -> str:
        for gateway in await self._fresh():
            if gateway.gateway_id == gateway_id:
                return gateway.address
        return await self._store.gateway_address(gateway_id)
