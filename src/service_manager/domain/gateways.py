"""The gateway registry's rules: what a registration may say, and which gateway takes a
new session (an enabled, alive, not full one of the right service type and region, the
least loaded first), with the reason in words when none can. Pure; no I/O."""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from meterline.kernel.errors import FailedPrecondition, InvalidArgument
from meterline.kernel.media import ServiceType

MAX_GATEWAY_ID_LENGTH = 100
MAX_ADDRESS_LENGTH = 255
MAX_REGION_LENGTH = 64
MAX_CAPACITY = 10_000_000
_GATEWAY_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_REGION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_HOST = re.compile(r"\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?")
SHOWN_IN_REFUSALS = 5
"""A refusal names at most this many gateways and why each one cannot take the session."""


class GatewayState(enum.StrEnum):
    ENABLED = "ENABLED"
    """Takes new sessions."""
    DRAINING = "DRAINING"
    """Takes no new sessions; its sessions go on until they end."""
    DISABLED = "DISABLED"
    """Out of service: takes no new sessions."""


@dataclass(frozen=True, slots=True)
class Gateway:
    """One gateway of the registry, with its load when it was read."""

    gateway_id: str
    address: str
    service_types: frozenset[ServiceType] | None
    """None: every service type."""
    state: GatewayState = GatewayState.ENABLED
    region: str = ""
    capacity: int = 0
    """The most sessions it takes at once; 0 for no limit."""
    skip_liveness_check: bool = False
    """True: counts as alive while enabled (it neither watches nor sends heartbeats)."""
    last_seen_at: datetime | None = None
    active_sessions: int = 0

    @property
    def enabled(self) -> bool:
        return self.state is GatewayState.ENABLED

    def carries(self, service_type: ServiceType) -> bool:
        return self.service_types is None or service_type in self.service_types

    def alive(self, now: datetime, liveness: timedelta) -> bool:
        if self.skip_liveness_check:
            return True
        return self.last_seen_at is not None and now - self.last_seen_at <= liveness

    def busy_reason(self, load: int, now: datetime, liveness: timedelta) -> str | None:
        """Why it takes no new session now (state, liveness, capacity); None if it does."""
        if self.state is GatewayState.DRAINING:
            return "is draining"
        if self.state is GatewayState.DISABLED:
            return "is disabled"
        if not self.alive(now, liveness):
            if self.last_seen_at is None:
                return "has not reported liveness yet"
            seconds = int((now - self.last_seen_at).total_seconds())
            return f"was last heard of {seconds} s ago"
        if self.capacity and load >= self.capacity:
            return f"is full ({load} of {self.capacity} sessions)"
        return None

    def same_registration(self, other: Gateway) -> bool:
        """Whether `other` registers exactly this gateway (a repeated registration)."""
        keys = ("address", "service_types", "region", "capacity", "skip_liveness_check")
        return all(getattr(self, key) == getattr(other, key) for key in keys)


def validate_gateway_id(gateway_id: str) -> str:
    if not gateway_id:
        raise InvalidArgument("gateway_id is missing.")
    if len(gateway_id) > MAX_GATEWAY_ID_LENGTH or not _GATEWAY_ID.fullmatch(gateway_id):
        raise InvalidArgument(
            f"{gateway_id!r} is not a gateway name: use letters, digits, '.', '_' and '-' "
            f"(at most {MAX_GATEWAY_ID_LENGTH} characters, starting with a letter or digit)."
        )
    return gateway_id


def validate_address(address: str) -> str:
    """host:port, with an IPv6 host in brackets."""
    address = address.strip()
    host, sep, port = address.rpartition(":")
    if (
        not sep
        or len(address) > MAX_ADDRESS_LENGTH
        or not _HOST.fullmatch(host)
        or not port.isdigit()
        or not 0 < int(port) < 65536
    ):
        raise InvalidArgument(
            f"{address!r} is not an address: give HOST:PORT, e.g. sip.example.com:5060 or "
            "[2001:db8::1]:5060."
        )
    return address


def validate_region(region: str) -> str:
    region = region.strip()
    if region and (len(region) > MAX_REGION_LENGTH or not _REGION.fullmatch(region)):
        raise InvalidArgument(
            f"{region!r} is not a region: use letters, digits, '.', '_' and '-' (at most "
            f"{MAX_REGION_LENGTH} characters)."
        )
    return region


def validate_capacity(capacity: int) -> int:
    if not 0 <= capacity <= MAX_CAPACITY:
        raise InvalidArgument(f"capacity must be from 0 (no limit) to {MAX_CAPACITY}.")
    return capacity


def new_gateway(
    gateway_id: str,
    address: str,
    service_types: frozenset[ServiceType] | None,
    region: str = "",
    capacity: int = 0,
    skip_liveness_check: bool = False,
) -> Gateway:
    """A registration, checked."""
    return Gateway(
        gateway_id=validate_gateway_id(gateway_id),
        address=validate_address(address),
        service_types=service_types or None,
        region=validate_region(region),
        capacity=validate_capacity(capacity),
        skip_liveness_check=skip_liveness_check,
    )


@dataclass(frozen=True, slots=True)
class GatewayChange:
    """What an UpdateGateway changes; None keeps a field as it is."""

    state: GatewayState | None = None
    address: str | None = None
    region: str | None = None
    capacity: int | None = None
    service_types: frozenset[ServiceType] | None = None
    change_service_types: bool = False
    """True: service_types is the new set (None: every type)."""
    skip_liveness_check: bool | None = None

    def applied_to(self, gateway: Gateway) -> Gateway:
        changed = gateway
        if self.state is not None:
            changed = replace(changed, state=self.state)
        if self.address is not None:
            changed = replace(changed, address=validate_address(self.address))
        if self.region is not None:
            changed = replace(changed, region=validate_region(self.region))
        if self.capacity is not None:
            changed = replace(changed, capacity=validate_capacity(self.capacity))
        if self.change_service_types:
            changed = replace(changed, service_types=self.service_types or None)
        if self.skip_liveness_check is not None:
            changed = replace(changed, skip_liveness_check=self.skip_liveness_check)
        return changed


def choose(
    gateways: Iterable[Gateway],
    service_type: ServiceType,
    region: str,
    loads: Mapping[str, int],
    now: datetime,
    liveness: timedelta,
) -> Gateway:
    """The gateway for a new session: of those that carry the service type (in the
    region, if one is named) and take sessions now, the least loaded. Refused with
    NO_GATEWAY and what stands in the way of each candidate."""
    candidates = [
        gateway
        for gateway in gateways
        if gateway.carries(service_type) and (not region or gateway.region == region)
    ]
    reasons: list[str] = []
    ready: list[Gateway] = []
    for gateway in candidates:
        load = loads.get(gateway.gateway_id, gateway.active_sessions)
        reason = gateway.busy_reason(load, now, liveness)
        if reason is None:
            ready.append(gateway)
        else:
            reasons.append(f"{gateway.gateway_id} {reason}")
    if ready:
        return min(
            ready,
            key=lambda g: (loads.get(g.gateway_id, g.active_sessions), g.gateway_id),
        )
    where = f" in region {region}" if region else ""
    if not candidates:
        detail = f"no gateway{where} carries {service_type} services"
    else:
        shown = reasons[:SHOWN_IN_REFUSALS]
        more = len(reasons) - len(shown)
        detail = "; ".join(shown) + (f"; and {more} more" if more else "")
    raise FailedPrecondition(
        f"No gateway can take a {service_type} session{where} now: {detail}. Try again later.",
        reason="NO_GATEWAY",
    )


def route_through(
    gateway: Gateway | None, gateway_id: str, service_type: ServiceType, region: str
) -> Gateway:
    """A start by identity runs through the gateway that asked: it must be registered,
    enabled and carry the service type (it is alive: it is calling)."""
    if gateway is None:
        raise FailedPrecondition(
            f"The gateway {gateway_id!r} is not in the registry; an operator registers it "
            "with `meterline gateway add`.",
            reason="GATEWAY_NOT_REGISTERED",
        )
    if not gateway.enabled:
        raise FailedPrecondition(
            f"The gateway {gateway_id} is {gateway.state.value.lower()}: it takes no new sessions.",
            reason="NO_GATEWAY",
        )
    if not gateway.carries(service_type):
        raise FailedPrecondition(
            f"The gateway {gateway_id} is not registered for {service_type} services.",
            reason="NO_GATEWAY",
        )
    if region and gateway.region != region:
        raise FailedPrecondition(
            f"The gateway {gateway_id} is not in region {region}.", reason="NO_GATEWAY"
        )
    return gateway
