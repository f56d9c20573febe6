"""The gateway registry's use cases: choosing a gateway for a new session, and what
operators and gateways do with the registry (register, update, list, heartbeat).

The chooser reads the registry and the loads from the database at most every few
seconds and counts its own starts in between, so a start does not wait on a count over
all sessions. Capacity is therefore exact per instance and within one refresh across
instances; liveness is what the database says (any instance's heartbeat or watch)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

from meterline.kernel.errors import AlreadyExists, InvalidArgument, NotFound, PermissionDenied
from meterline.kernel.media import ServiceType
from meterline.kernel.principals import Principal, PrincipalKind
from service_manager.app.ports import GatewayRegistry
from service_manager.domain import gateways as rules
from service_manager.domain.gateways import Gateway, GatewayChange

REFRESH_SECONDS = 2.0


def _now() -> datetime:
    return datetime.now(UTC)


class GatewayChooser:
    def __init__(
        self,
        registry: GatewayRegistry,
        liveness: timedelta = timedelta(seconds=30),
        clock: Callable[[], datetime] = _now,
    ) -> None:
        self._registry = registry
        self.liveness = liveness
        self._clock = clock
        self._gateways: list[Gateway] = []
        self._loads: dict[str, int] = {}
        self._read_at = -REFRESH_SECONDS
        self._lock = asyncio.Lock()

    def forget(self) -> None:
        """The registry changed here: read it again at the next start."""
        self._read_at = -REFRESH_SECONDS

    async def fresh(self) -> list[Gateway]:
        if time.monotonic() - self._read_at >= REFRESH_SECONDS:
            async with self._lock:
                if time.monotonic() - self._read_at >= REFRESH_SECONDS:
                    self._gateways = await self._registry.gateways()
                    self._loads = {g.gateway_id: g.active_sessions for g in self._gateways}
                    self._read_at = time.monotonic()
        return self._gateways

    def load(self, gateway_id: str) -> int:
        return self._loads.get(gateway_id, 0)

    def counted(self, gateway_id: str) -> None:
        """A session was started on the gateway here."""
        self._loads[gateway_id] = self._loads.get(gateway_id, 0) + 1

    async def choose(self, service_type: ServiceType, region: str = "") -> Gateway:
        gateways = await self.fresh()
        chosen = rules.choose(
            gateways, service_type, region, self._loads, self._clock(), self.liveness
        )
        self.counted(chosen.gateway_id)
        return chosen

    async def gateway(self, gateway_id: str) -> Gateway | None:
        for gateway in await self.fresh():
            if gateway.gateway_id == gateway_id:
                return gateway
        return await self._registry.gateway(gateway_id)

    async def address(self, gateway_id: str) -> str:
        found = await self.gateway(gateway_id)
        return found.address if found is not None else ""


@dataclass(frozen=True, slots=True)
class GatewayStatus:
    """A gateway as an operator sees it: does it take new sessions now, and if not why."""

    gateway: Gateway
    healthy: bool
    reason: str


class GatewayAdmin:
    """Register, change and list gateways (operators); heartbeats (gateways)."""

    def __init__(
        self,
        registry: GatewayRegistry,
        chooser: GatewayChooser,
        clock: Callable[[], datetime] = _now,
    ) -> None:
        self._registry = registry
        self._chooser = chooser
        self._clock = clock

    @property
    def heartbeat_interval(self) -> timedelta:
        return self._chooser.liveness / 3

    def status(self, gateway: Gateway) -> GatewayStatus:
        reason = gateway.busy_reason(gateway.active_sessions, self._clock(), self._chooser.liveness)
        return GatewayStatus(gateway, reason is None, reason or "")

    async def register(self, principal: Principal, gateway: Gateway) -> Gateway:
        principal.require_kind(PrincipalKind.OPERATOR, action="register gateways")
        stored, created = await self._registry.register(gateway)
        if not created and not stored.same_registration(gateway):
            raise AlreadyExists(
                f"A gateway {gateway.gateway_id!r} is registered already, with other "
                "settings; change it with UpdateGateway (`meterline gateway update`).",
                reason="GATEWAY_EXISTS",
            )
        self._chooser.forget()
        return stored

    async def update(self, principal: Principal, gateway_id: str, change: GatewayChange) -> Gateway:
        principal.require_kind(PrincipalKind.OPERATOR, action="change gateways")
        rules.validate_gateway_id(gateway_id)
        updated = await self._registry.update(gateway_id, change)
        if updated is None:
            raise _not_registered(gateway_id)
        self._chooser.forget()
        return updated

    async def listed(self, principal: Principal) -> list[GatewayStatus]:
        principal.require_kind(PrincipalKind.OPERATOR, action="list gateways")
        return [self.status(gateway) for gateway in await self._registry.gateways()]

    async def heartbeat(self, principal: Principal, gateway_id: str) -> GatewayStatus:
        require_own_gateway(principal, gateway_id, "send heartbeats")
        gateway = await self._registry.gateway(gateway_id)
        if gateway is None:
            raise _not_registered(gateway_id)
        now = self._clock()
        await self._registry.seen([gateway_id], now)
        return self.status(replace(gateway, last_seen_at=max(now, gateway.last_seen_at or now)))

    async def registered(self, gateway_id: str) -> Gateway:
        """The gateway as registered, or NOT_FOUND."""
        gateway = await self._registry.gateway(gateway_id)
        if gateway is None:
            raise _not_registered(gateway_id)
        return gateway


def require_own_gateway(principal: Principal, gateway_id: str, action: str) -> None:
    """A gateway acts only for itself; operators and services for any."""
    if not gateway_id:
        raise InvalidArgument("gateway_id is missing.")
    if principal.is_trusted:
        return
    if principal.kind is PrincipalKind.GATEWAY and principal.gateway_id == gateway_id:
        return
    raise PermissionDenied(f"Only the gateway {gateway_id} itself (or an operator) may {action}.")


def _not_registered(gateway_id: str) -> NotFound:
    return NotFound(
        f"There is no gateway {gateway_id!r} in the registry; `meterline gateway list` lists them.",
        reason="GATEWAY_NOT_FOUND",
    )
