"""ServiceManager over gRPC: translate, authenticate, delegate, translate back."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import grpc
from google.protobuf import duration_pb2

from meterline.kernel.errors import InvalidArgument, NotFound, PermissionDenied
from meterline.kernel.grpc_errors import streaming, unary
from meterline.kernel.grpc_server import Authenticator
from meterline.kernel.principals import PrincipalKind
from meterline.kernel.wire import duration, service_type_from_wire, service_type_to_wire, timestamp
from meterline.service.v1 import service_pb2, service_pb2_grpc
from service_manager.app.metering import Metered, MeterStream
from service_manager.app.parts import ServiceManagerParts
from service_manager.app.start import StartRequest
from service_manager.domain.records import ServiceRecord
from service_manager.domain.sessions import TerminationReason
from service_manager.rates import session_rate_to_wire

Context = grpc.aio.ServicerContext[Any, Any]

_REASONS = {
    reason: service_pb2.TerminationReason.Value(f"TERMINATION_REASON_{reason}")
    for reason in TerminationReason
}


def reason_to_wire(reason: TerminationReason) -> service_pb2.TerminationReason.ValueType:
    return _REASONS[reason]


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
    )


def metered_to_wire(metered: Metered) -> service_pb2.MeterResponse:
    session = metered.session
    response = service_pb2.MeterResponse(
        acknowledged_sequence=session.last_sequence,
        charged_micros=session.charged_micros,
        balance_micros=metered.balance_micros,
        granted_units=session.granted_units,
        used_units=session.used_units,
    )
    if metered.seconds_left is not None:
        response.estimated_time_left.CopyFrom(duration_pb2.Duration(seconds=metered.seconds_left))
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


class ServiceManagerServicer(service_pb2_grpc.ServiceManagerServicer):
    def __init__(self, parts: ServiceManagerParts, auth: Authenticator) -> None:
        self._parts = parts
        self._auth = auth

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
        )

    @streaming
    async def Meter(
        self,
        request_iterator: AsyncIterator[service_pb2.ResourceUtilizationUpdate],
        context: Context,
    ) -> AsyncIterator[service_pb2.MeterResponse]:
        principal = self._auth.principal(context)
        metering = self._parts.metering
        with self._parts.meter_streams.hold(principal):
            stream = MeterStream(principal)
            try:
                async for update in request_iterator:
                    if not update.session_id:
                        raise InvalidArgument("session_id is missing from the usage update.")
                    metered = await metering.update(
                        stream, update.session_id, update.sequence, update.used_units
                    )
                    yield metered_to_wire(metered)
                    if metered.termination is not None and metered.termination.ended:
                        return
            finally:
                await metering.detach(stream)

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
        principal.require_account(request.account_id)
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
                )
                if event.ended or event.final_units:
                    reason = event.reason or TerminationReason.CLIENT_STOP
                    wire.termination.CopyFrom(
                        service_pb2.Termination(
                            session_id=event.session_id,
                            reason=_REASONS[reason],
                            ended=event.ended,
                            final_unit_indication=event.final_units,
                        )
                    )
                yield wire

    @streaming
    async def WatchTerminations(
        self, request: service_pb2.WatchTerminationsRequest, context: Context
    ) -> AsyncIterator[service_pb2.Termination]:
        principal = self._auth.principal(context)
        if not request.gateway_id:
            raise InvalidArgument("gateway_id is missing.")
        if not principal.is_trusted and not (
            principal.kind is PrincipalKind.GATEWAY and principal.gateway_id == request.gateway_id
        ):
            raise PermissionDenied("A gateway may watch only its own terminations.")
        with self._parts.watches.hold(principal):
            async for notice in self._parts.subscriptions.gateway_notices(request.gateway_id):
                yield service_pb2.Termination(
                    session_id=notice.session_id,
                    reason=_REASONS[notice.reason],
                    message=notice.message,
                    gateway_id=notice.gateway_id,
                    ended=True,
                )

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
        raise NotFound(
            "No client component has been published on this server yet.",
            reason="NO_COMPONENT",
        )
