"""ServiceManager over gRPC: translate, authenticate, delegate, translate back."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable
from datetime import UTC, datetime
from typing import Any

import grpc
from google.protobuf import duration_pb2

from meterline.kernel.errors import InvalidArgument, Unavailable, required
from meterline.kernel.grpc_errors import streaming, unary, writing
from meterline.kernel.grpc_server import Authenticator
from meterline.kernel.media import ServiceType
from meterline.kernel.principals import PrincipalKind
from meterline.kernel.tickets import ALGORITHM, ISSUER
from meterline.kernel.wire import duration, service_type_from_wire, service_type_to_wire, timestamp
from meterline.service.v1 import service_pb2, service_pb2_grpc
from service_manager.app.components import ComponentCatalog
from service_manager.app.gateways import GatewayStatus
from service_manager.app.metering import Metered, MeterStream
from service_manager.app.parts import ServiceManagerParts
from service_manager.app.start import StartRequest
from service_manager.domain.components import ComponentKey, Manifest, PublishedComponent
from service_manager.domain.gateways import GatewayChange, GatewayState, new_gateway
from service_manager.domain.identities import AccountIdentity, IdentityKind
from service_manager.domain.notices import FINAL_UNITS_MESSAGE, GatewayNotice, NoticeKind
from service_manager.domain.records import ServiceRecord
from service_manager.domain.sessions import TERMINATION_MESSAGES, TerminationReason
from service_manager.rates import session_rate_to_wire
from service_manager.storage.record_queries import RecordCursor, ServiceRecordQueries
from service_manager.storage.record_queries import page_size as record_page_size

EOF: Any = grpc.aio.EOF  # type: ignore[attr-defined]  # what context.read() gives at the end

Context = grpc.aio.ServicerContext[Any, Any]

_REASONS = {
    reason: service_pb2.TerminationReason.Value(f"TERMINATION_REASON_{reason}")
    for reason in TerminationReason
}


_NOTICE_KINDS = {kind: service_pb2.NoticeKind.Value(f"NOTICE_KIND_{kind}") for kind in NoticeKind}
_IDENTITY_KINDS = {
    kind: service_pb2.IdentityKind.Value(f"IDENTITY_KIND_{kind}") for kind in IdentityKind
}
_IDENTITY_KINDS_BACK = {value: kind for kind, value in _IDENTITY_KINDS.items()}
_GATEWAY_STATES = {
    state: service_pb2.GatewayState.Value(f"GATEWAY_STATE_{state}") for state in GatewayState
}
_GATEWAY_STATES_BACK = {value: state for state, value in _GATEWAY_STATES.items()}


def reason_to_wire(reason: TerminationReason) -> service_pb2.TerminationReason.ValueType:
    return _REASONS[reason]


def identity_from_wire(identity: service_pb2.SubscriberIdentity) -> tuple[IdentityKind, str]:
    kind = _IDENTITY_KINDS_BACK.get(identity.kind)
    if kind is None:
        raise InvalidArgument(
            "identity.kind is missing or unknown: give MSISDN, IMSI, SIP_URI or USER_NAME."
        )
    return kind, identity.value


def account_identity_to_wire(found: AccountIdentity) -> service_pb2.AccountIdentity:
    return service_pb2.AccountIdentity(
        account_id=found.account_id,
        identity=service_pb2.SubscriberIdentity(
            kind=_IDENTITY_KINDS[found.identity.kind], value=found.identity.value
        ),
        create_time=timestamp(found.created_at),
    )


def service_types_from_wire(kinds: Iterable[int]) -> frozenset[ServiceType] | None:
    """Wire service types; none given means every one."""
    found = frozenset(service_type_from_wire(kind) for kind in kinds)
    return found or None


def gateway_to_wire(status: GatewayStatus) -> service_pb2.RegisteredGateway:
    gateway = status.gateway
    wire = service_pb2.RegisteredGateway(
        gateway_id=gateway.gateway_id,
        address=gateway.address,
        service_types=sorted(service_type_to_wire(kind) for kind in gateway.service_types or ()),
        enabled=gateway.enabled,
        active_sessions=gateway.active_sessions,
        state=_GATEWAY_STATES[gateway.state],
        region=gateway.region,
        capacity=gateway.capacity,
        healthy=status.healthy,
        skip_liveness_check=gateway.skip_liveness_check,
        unhealthy_reason=status.reason,
    )
    if gateway.last_seen_at is not None:
        wire.last_seen_time.CopyFrom(timestamp(gateway.last_seen_at))
    return wire


def notice_to_wire(notice: GatewayNotice) -> service_pb2.Termination:
    wire = service_pb2.Termination(
        session_id=notice.session_id,
        reason=(
            _REASONS[notice.reason] if notice.reason else service_pb2.TERMINATION_REASON_UNSPECIFIED
        ),
        message=notice.message,
        final_unit_indication=notice.kind is NoticeKind.FINAL_UNITS,
        gateway_id=notice.gateway_id,
        ended=notice.kind is NoticeKind.ENDED,
        cursor=notice.cursor,
        kind=_NOTICE_KINDS[notice.kind],
        balance_micros=notice.balance_micros,
        granted_units=notice.granted_units,
        account_id=notice.account_id,
        cursor_expired=notice.cursor_expired,
    )
    if notice.seconds_left is not None:
        wire.estimated_time_left.CopyFrom(duration_pb2.Duration(seconds=notice.seconds_left))
    wire.event_time.CopyFrom(timestamp(notice.created_at or datetime.now(UTC)))
    return wire


def record_to_wire(record: ServiceRecord) -> service_pb2.ServiceRecord:
    return service_pb2.ServiceRecord(
        session_id=record.session_id,
        account_id=record.account_id,
        service_type=service_type_to_wire(record.service_type),
        endpoint=record.endpoint,
        rate=session_rate_to_wire(record.rate, record.service_type),
        started_at=timestamp(record.started_at),
        ended_at=timestamp(record.ended_at),
        duration=duration(record.ended_at - record.started_at),
        used_units=record.used_units,
        billed_units=record.billed_units,
        charged_micros=record.charged_micros,
        termination_reason=reason_to_wire(record.termination_reason),
        gateway_id=record.gateway_id,
        application_id=record.application_id,
        unbilled_units=record.unbilled_units,
        unbilled_reason=record.unbilled_reason,
        usage_discrepancy=record.usage_discrepancy,
        client_used_units=record.client_used_units,
        gateway_used_units=record.gateway_used_units,
        settlement_difference_micros=record.settlement_difference_micros,
        settlement_note=record.settlement_note,
    )


def metered_to_wire(metered: Metered) -> service_pb2.MeterResponse:
    session = metered.session
    # Field by field: on the usage path about half the cost of keyword arguments and a
    # Duration copied in.
    response = service_pb2.MeterResponse()
    response.acknowledged_sequence = session.last_sequence
    response.charged_micros = session.charged_micros
    response.balance_micros = metered.balance_micros
    response.granted_units = session.granted_units
    response.used_units = session.used_units
    if metered.low_balance:
        response.low_balance = True
    if metered.pushed:
        response.pushed = True
    if metered.seconds_left is not None:
        response.estimated_time_left.seconds = metered.seconds_left
    termination = metered.termination
    if termination is not None:
        response.termination.CopyFrom(
            service_pb2.Termination(
                session_id=session.session_id,
                reason=_REASONS[termination.reason],
                message=termination.message,
                final_unit_indication=termination.final_unit_indication,
                gateway_id=session.gateway_id,
                ended=termination.ended,
            )
        )
    return response


def _session_id(update: service_pb2.ResourceUtilizationUpdate) -> str:
    session_id = update.session_id
    if not session_id:
        raise InvalidArgument("session_id is missing from the usage update.")
    return session_id


def component_to_wire(
    component: PublishedComponent, *, update_available: bool = False
) -> service_pb2.Component:
    return service_pb2.Component(
        name=component.key.name,
        platform=component.key.platform,
        version=component.version.text,
        size_bytes=component.size_bytes,
        sha256=component.sha256,
        signature=component.signature,
        signing_key_id=component.signing_key_id,
        publish_time=timestamp(component.published_at),
        update_available=update_available,
    )


class ServiceManagerServicer(service_pb2_grpc.ServiceManagerServicer):
    def __init__(
        self,
        parts: ServiceManagerParts,
        auth: Authenticator,
        components: ComponentCatalog,
        records: ServiceRecordQueries | None = None,
    ) -> None:
        self._parts = parts
        self._auth = auth
        self._components = components
        self._records = records

    @unary
    async def StartService(
        self, request: service_pb2.StartServiceRequest, context: Context
    ) -> service_pb2.StartServiceResponse:
        principal = self._auth.principal(context)
        started = await self._parts.start(
            principal,
            StartRequest(
                account_id=request.account_id,
                service_type=service_type_from_wire(request.service_type),
                endpoint=request.endpoint,
                application_id=request.application_id,
                request_id=request.request_id,
                region=request.region,
                identity=(
                    identity_from_wire(request.identity) if request.HasField("identity") else None
                ),
            ),
        )
        session = started.session
        return service_pb2.StartServiceResponse(
            session_id=session.session_id,
            gateway=service_pb2.Gateway(
                gateway_id=session.gateway_id,
                address=started.gateway_address,
                token=started.gateway_ticket,
            ),
            rate=session_rate_to_wire(session.rate, session.service_type),
            granted_units=session.granted_units,
            quota_valid_until=timestamp(started.quota_valid_until),
            balance_micros=started.available_micros,
            account_id=session.account_id,
        )

    @writing
    async def Meter(  # type: ignore[override]  # the reader-writer style returns nothing
        self,
        request_iterator: AsyncIterator[service_pb2.ResourceUtilizationUpdate],
        context: Context,
    ) -> None:
        # Reader-writer style: context.read() and context.write() directly, the dearest
        # part of an update being gRPC's own per-message work (request_iterator is unused).
        principal = self._auth.principal(context)
        metering = self._parts.metering
        read, write = context.read, context.write
        with self._parts.meter_streams.hold(principal):
            stream = MeterStream(principal)
            try:
                update = await read()
                if update is EOF:
                    return
                if update.accept_pushes:
                    await self._meter_with_pushes(stream, update, context)
                    return
                meter = metering.update  # called directly: no coroutine of ours between
                while True:
                    metered = await meter(
                        stream, _session_id(update), update.sequence, update.used_units
                    )
                    await write(metered_to_wire(metered))
                    if metered.termination is not None and metered.termination.ended:
                        return
                    update = await read()
                    if update is EOF:
                        return
            finally:
                await metering.detach(stream)

    async def _update(
        self, stream: MeterStream, update: service_pb2.ResourceUtilizationUpdate
    ) -> Metered:
        return await self._parts.metering.update(
            stream, _session_id(update), update.sequence, update.used_units
        )

    async def _meter_with_pushes(
        self,
        stream: MeterStream,
        first: service_pb2.ResourceUtilizationUpdate,
        context: Context,
    ) -> None:
        """A stream that accepts pushes: its updates are read by a task of their own, so a
        push (a new grant after a top-up) goes out while no update is waiting. Answers and
        pushes share one queue, in the order they were made."""
        outbox: asyncio.Queue[Metered | BaseException | None] = asyncio.Queue()
        stream.outbox = outbox

        async def read() -> None:
            update: Any = first
            try:
                while update is not EOF:
                    metered = await self._update(stream, update)
                    outbox.put_nowait(metered)
                    if metered.termination is not None and metered.termination.ended:
                        break
                    update = await context.read()
            except Exception as error:
                outbox.put_nowait(error)
            outbox.put_nowait(None)  # no more answers

        reader = asyncio.create_task(read())
        try:
            while (item := await outbox.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                await context.write(metered_to_wire(item))
                if item.termination is not None and item.termination.ended:
                    return  # answered, or pushed (an account suspended): the session ended
        finally:
            stream.outbox = None
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader

    @unary
    async def StopService(
        self, request: service_pb2.StopServiceRequest, context: Context
    ) -> service_pb2.ServiceRecord:
        principal = self._auth.principal(context)
        if not request.session_id:
            raise InvalidArgument("session_id is missing.")
        record = await self._parts.stop(principal, request.session_id, request.used_units)
        return record_to_wire(record)

    @unary
    async def ListServiceRecords(
        self, request: service_pb2.ListServiceRecordsRequest, context: Context
    ) -> service_pb2.ListServiceRecordsResponse:
        principal = self._auth.principal(context)
        if not request.account_id:
            raise InvalidArgument("account_id is missing: name the account whose records to list.")
        principal.require_account(request.account_id)
        if self._records is None:
            raise Unavailable("Service records cannot be read on this instance.")
        page = await self._records.page(
            request.account_id,
            record_page_size(request.page_size),
            RecordCursor.parse(request.page_token),
        )
        return service_pb2.ListServiceRecordsResponse(
            records=[record_to_wire(record) for record in page.records],
            next_page_token=page.next_cursor.token() if page.next_cursor else "",
        )

    @unary
    async def ListActiveSessions(
        self, request: service_pb2.ListActiveSessionsRequest, context: Context
    ) -> service_pb2.ListActiveSessionsResponse:
        principal = self._auth.principal(context)
        now = datetime.now(UTC)
        users = await self._parts.active(principal, request.account_id)
        return service_pb2.ListActiveSessionsResponse(
            sessions=[
                service_pb2.ActiveSession(
                    session_id=user.session_id,
                    account_id=user.account_id,
                    service_type=service_type_to_wire(user.service_type),
                    rate=session_rate_to_wire(user.rate, user.service_type),
                    endpoint=user.endpoint,
                    started_at=timestamp(user.started_at),
                    duration=duration(now - user.started_at),
                    gateway_id=user.gateway_id,
                    used_units=user.used_units,
                )
                for user in users
            ]
        )

    @streaming
    async def WatchAccount(
        self, request: service_pb2.WatchAccountRequest, context: Context
    ) -> AsyncIterator[service_pb2.AccountEvent]:
        principal = self._auth.principal(context)
        principal.require_account(required(request.account_id, "account_id", "account to watch"))
        with self._parts.watches.hold(principal):
            events = self._parts.subscriptions.account_events(request.account_id)
            async for event in events:
                wire = service_pb2.AccountEvent(
                    account_id=event.account_id,
                    session_id=event.session_id,
                    balance_micros=event.balance_micros,
                    charged_micros=event.charged_micros,
                    used_units=event.used_units,
                    event_time=timestamp(datetime.now(UTC)),
                    low_balance=event.low_balance,
                )
                if event.seconds_left is not None:
                    wire.estimated_time_left.CopyFrom(
                        duration_pb2.Duration(seconds=event.seconds_left)
                    )
                if event.ended or event.final_units:
                    reason = event.reason or TerminationReason.CLIENT_STOP
                    wire.termination.CopyFrom(
                        service_pb2.Termination(
                            session_id=event.session_id,
                            reason=_REASONS[reason],
                            message=(
                                TERMINATION_MESSAGES[reason] if event.ended else FINAL_UNITS_MESSAGE
                            ),
                            ended=event.ended,
                            final_unit_indication=event.final_units,
                        )
                    )
                yield wire

    @streaming
    async def WatchTerminations(
        self, request: service_pb2.WatchTerminationsRequest, context: Context
    ) -> AsyncIterator[service_pb2.Termination]:
        principal, expires_at = self._auth.principal_until(context)
        with self._parts.watches.hold(principal):
            notices = self._parts.gateway_watch.notices(
                principal, request.gateway_id, request.resume_after, request.only_new, expires_at
            )
            first = await anext(notices)  # SUBSCRIBED, once the request is found good
            # The headers at once, the SUBSCRIBED message right behind them.
            await context.send_initial_metadata(())
            yield notice_to_wire(first)
            async for notice in notices:
                yield notice_to_wire(notice)

    @unary
    async def ReportGatewayUsage(
        self, request: service_pb2.ReportGatewayUsageRequest, context: Context
    ) -> service_pb2.ReportGatewayUsageResponse:
        principal = self._auth.principal(context)
        if not request.session_id:
            raise InvalidArgument("session_id is missing.")
        report = await self._parts.gateway_usage(
            principal, request.session_id, request.used_units, request.ended
        )
        response = service_pb2.ReportGatewayUsageResponse(charged_micros=report.charged_micros)
        if report.record is not None:
            response.record.CopyFrom(record_to_wire(report.record))
        return response

    @unary
    async def GetLatestComponent(
        self, request: service_pb2.GetLatestComponentRequest, context: Context
    ) -> service_pb2.Component:
        self._auth.principal(context)
        key = ComponentKey.of(request.name, request.platform)
        found = await self._components.latest(key, request.current_version)
        return component_to_wire(found.component, update_available=found.update_available)

    @streaming
    async def DownloadComponent(
        self, request: service_pb2.DownloadComponentRequest, context: Context
    ) -> AsyncIterator[service_pb2.ComponentChunk]:
        self._auth.principal(context)
        key = ComponentKey.of(request.name, request.platform)
        pieces = await self._components.download(key, request.version, request.offset)
        async for offset, data in pieces:
            yield service_pb2.ComponentChunk(offset=offset, data=data)

    @unary
    async def PublishComponent(
        self,
        request_iterator: AsyncIterator[service_pb2.PublishComponentRequest],
        context: Context,
    ) -> service_pb2.PublishComponentResponse:
        principal = self._auth.principal(context)
        # Refuse a caller before reading what it uploads.
        principal.require_kind(PrincipalKind.OPERATOR, action="publish client components")
        first = await anext(aiter(request_iterator), None)
        if first is None or first.WhichOneof("part") != "manifest":
            raise InvalidArgument(
                "The first message of a publish must carry the manifest.",
                reason="BAD_COMPONENT",
            )
        wire = first.manifest
        manifest = Manifest.checked(
            ComponentKey.of(wire.name, wire.platform),
            wire.version,
            wire.size_bytes,
            wire.sha256,
            wire.signature,
            wire.public_key,
            self._components.max_bytes,
        )

        async def data() -> AsyncIterator[bytes]:
            async for part in request_iterator:
                if part.WhichOneof("part") != "data":
                    raise InvalidArgument(
                        "Only the first message of a publish carries a manifest.",
                        reason="BAD_COMPONENT",
                    )
                yield part.data

        published = await self._components.publish(principal, manifest, data())
        return service_pb2.PublishComponentResponse(
            component=component_to_wire(published.component), created=published.created
        )

    @unary
    async def ListComponents(
        self, request: service_pb2.ListComponentsRequest, context: Context
    ) -> service_pb2.ListComponentsResponse:
        principal = self._auth.principal(context)
        found = await self._components.listed(principal, request.name, request.platform)
        return service_pb2.ListComponentsResponse(
            components=[component_to_wire(component) for component in found]
        )

    @unary
    async def ListGateways(
        self, request: service_pb2.ListGatewaysRequest, context: Context
    ) -> service_pb2.ListGatewaysResponse:
        principal = self._auth.principal(context)
        found = await self._parts.gateways.listed(principal)
        return service_pb2.ListGatewaysResponse(gateways=[gateway_to_wire(g) for g in found])

    @unary
    async def RegisterGateway(
        self, request: service_pb2.RegisterGatewayRequest, context: Context
    ) -> service_pb2.RegisteredGateway:
        principal = self._auth.principal(context)
        principal.require_kind(PrincipalKind.OPERATOR, action="register gateways")
        gateway = new_gateway(
            request.gateway_id,
            request.address,
            service_types_from_wire(request.service_types),
            request.region,
            request.capacity,
            request.skip_liveness_check,
        )
        stored = await self._parts.gateways.register(principal, gateway)
        return gateway_to_wire(self._parts.gateways.status(stored))

    @unary
    async def UpdateGateway(
        self, request: service_pb2.UpdateGatewayRequest, context: Context
    ) -> service_pb2.RegisteredGateway:
        principal = self._auth.principal(context)
        principal.require_kind(PrincipalKind.OPERATOR, action="change gateways")
        change = GatewayChange(
            state=_GATEWAY_STATES_BACK.get(request.state),
            address=request.address if request.HasField("address") else None,
            region=request.region if request.HasField("region") else None,
            capacity=request.capacity if request.HasField("capacity") else None,
            service_types=(
                service_types_from_wire(request.service_types.service_types)
                if request.HasField("service_types")
                else None
            ),
            change_service_types=request.HasField("service_types"),
            skip_liveness_check=(
                request.skip_liveness_check if request.HasField("skip_liveness_check") else None
            ),
        )
        updated = await self._parts.gateways.update(principal, request.gateway_id, change)
        return gateway_to_wire(self._parts.gateways.status(updated))

    @unary
    async def GatewayHeartbeat(
        self, request: service_pb2.GatewayHeartbeatRequest, context: Context
    ) -> service_pb2.GatewayHeartbeatResponse:
        principal = self._auth.principal(context)
        status = await self._parts.gateways.heartbeat(principal, request.gateway_id)
        return service_pb2.GatewayHeartbeatResponse(
            gateway=gateway_to_wire(status),
            heartbeat_interval=duration(self._parts.gateways.heartbeat_interval),
        )

    @unary
    async def GetSessionTicketKey(
        self, request: service_pb2.GetSessionTicketKeyRequest, context: Context
    ) -> service_pb2.SessionTicketKey:
        self._auth.principal(context)
        key = self._parts.ticket_key
        return service_pb2.SessionTicketKey(
            algorithm=ALGORITHM,
            key_id=key.key_id,
            public_key=key.raw_base64,
            public_key_pem=key.pem,
            jwk=key.jwk,
            issuer=ISSUER,
        )

    @unary
    async def AddAccountIdentity(
        self, request: service_pb2.AddAccountIdentityRequest, context: Context
    ) -> service_pb2.AccountIdentity:
        principal = self._auth.principal(context)
        principal.require_kind(PrincipalKind.OPERATOR, action="add subscriber identities")
        kind, value = identity_from_wire(request.identity)
        added = await self._parts.identities.add(principal, request.account_id, kind, value)
        return account_identity_to_wire(added)

    @unary
    async def RemoveAccountIdentity(
        self, request: service_pb2.RemoveAccountIdentityRequest, context: Context
    ) -> service_pb2.RemoveAccountIdentityResponse:
        principal = self._auth.principal(context)
        principal.require_kind(PrincipalKind.OPERATOR, action="remove subscriber identities")
        kind, value = identity_from_wire(request.identity)
        removed = await self._parts.identities.remove(principal, request.account_id, kind, value)
        return service_pb2.RemoveAccountIdentityResponse(removed=removed)

    @unary
    async def ListAccountIdentities(
        self, request: service_pb2.ListAccountIdentitiesRequest, context: Context
    ) -> service_pb2.ListAccountIdentitiesResponse:
        principal = self._auth.principal(context)
        found = await self._parts.identities.listed(principal, request.account_id)
        return service_pb2.ListAccountIdentitiesResponse(
            identities=[account_identity_to_wire(item) for item in found]
        )
