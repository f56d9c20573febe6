"""The service manager's parts, as the servicer uses them (built in server.py)."""

from __future__ import annotations

from dataclasses import dataclass

from meterline.kernel.errors import PermissionDenied
from meterline.kernel.principals import Principal, PrincipalKind
from meterline.kernel.tickets import PublicTicketKey
from service_manager.app.gateway_reports import ReportGatewayUsage
from service_manager.app.gateways import GatewayAdmin
from service_manager.app.identities import IdentityAdmin
from service_manager.app.limits import StreamLimits
from service_manager.app.metering import Metering
from service_manager.app.notices import GatewayWatch
from service_manager.app.ports import ActiveUser, Presence, Subscriptions
from service_manager.app.start import StartSession
from service_manager.app.stop import StopSession


@dataclass(frozen=True)
class ServiceManagerParts:
    start: StartSession
    metering: Metering
    stop: StopSession
    gateway_usage: ReportGatewayUsage
    presence: Presence
    subscriptions: Subscriptions
    meter_streams: StreamLimits
    watches: StreamLimits
    gateways: GatewayAdmin
    identities: IdentityAdmin
    gateway_watch: GatewayWatch
    ticket_key: PublicTicketKey

    async def active(self, principal: Principal, account_id: str) -> list[ActiveUser]:
        """The collection of active end users a caller may see."""
        if principal.kind is PrincipalKind.DEVICE:
            if account_id and account_id != principal.account_id:
                raise PermissionDenied("A device may list only its own account's sessions.")
            account_id = principal.account_id
        users = await self.presence.active(account_id)
        if principal.kind is PrincipalKind.GATEWAY:
            users = [user for user in users if user.gateway_id == principal.gateway_id]
        return users
