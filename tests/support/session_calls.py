"""Raw ServiceManager calls the session tests share, each with a deadline so a hanging
server fails the test instead of stalling the run."""

from __future__ import annotations

import asyncio
import time
import uuid

import grpc

from meterline.billing.v1 import billing_pb2
from meterline.kernel.principals import Principal, PrincipalKind
from meterline.rating.v1 import rating_pb2, types_pb2
from meterline.service.v1 import service_pb2
from tests.support.clients import OPERATOR, Stubs
from tests.support.stack import metadata, token_for

Metadata = tuple[tuple[str, str], ...]
DEADLINE = 10.0


def own_device(account_id: str) -> Metadata:
    """A device credential of its own (per-caller limits count per credential; the
    `clients.device` helper gives every account the same subject)."""
    principal = Principal(
        kind=PrincipalKind.DEVICE, subject=f"dev_{uuid.uuid4().hex[:12]}", account_id=account_id
    )
    return metadata(token_for(principal))


async def voice_tariff(api: Stubs, prefix: str, price_micros: int, unit_size: int = 1) -> None:
    """A VOICE tariff billed per second: `price_micros` for every `unit_size` seconds."""
    await api.rating.UpsertTariff(
        rating_pb2.UpsertTariffRequest(
            tariff=rating_pb2.Tariff(
                service_type=types_pb2.VOICE,
                prefix=prefix,
                unit=types_pb2.SECOND,
                price_per_unit_micros=price_micros,
                unit_size=unit_size,
                increment_units=1,
                currency="EUR",
            )
        ),
        metadata=OPERATOR,
        timeout=DEADLINE,
    )


def start_request(
    account_id: str, endpoint: str, request_id: str = ""
) -> service_pb2.StartServiceRequest:
    return service_pb2.StartServiceRequest(
        account_id=account_id,
        service_type=types_pb2.VOICE,
        endpoint=endpoint,
        request_id=request_id,
    )


async def start(api: Stubs, account_id: str, endpoint: str, who: Metadata) -> str:
    started = await api.service.StartService(
        start_request(account_id, endpoint), metadata=who, timeout=DEADLINE
    )
    return str(started.session_id)


async def meter(
    api: Stubs, session_id: str, who: Metadata, *updates: tuple[int, int]
) -> list[service_pb2.MeterResponse]:
    """One Meter stream carrying `(sequence, used_units)` updates; all its responses."""
    requests = [
        service_pb2.ResourceUtilizationUpdate(session_id=session_id, sequence=seq, used_units=used)
        for seq, used in updates
    ]
    call = api.service.Meter(iter(requests), metadata=who, timeout=DEADLINE)
    return [response async for response in call]


async def stop(api: Stubs, session_id: str, used_units: int, who: Metadata = OPERATOR) -> int:
    """Stop a session; the charge of its service record."""
    record = await api.service.StopService(
        service_pb2.StopServiceRequest(session_id=session_id, used_units=used_units),
        metadata=who,
        timeout=DEADLINE,
    )
    return int(record.charged_micros)


async def get_account(api: Stubs, account_id: str) -> billing_pb2.Account:
    return await api.billing.GetAccount(
        billing_pb2.GetAccountRequest(account_id=account_id), metadata=OPERATOR, timeout=DEADLINE
    )


async def active_ids(api: Stubs, account_id: str) -> list[str]:
    """The account's sessions ListActiveSessions shows, oldest first."""
    active = await api.service.ListActiveSessions(
        service_pb2.ListActiveSessionsRequest(account_id=account_id),
        metadata=OPERATOR,
        timeout=DEADLINE,
    )
    return [session.session_id for session in active.sessions]


async def listed_within(
    api: Stubs, account_id: str, expected: list[str], seconds: float
) -> tuple[list[str], list[str]]:
    """Poll ListActiveSessions until it shows the `expected` sessions (in any order) or
    `seconds` pass (presence may be written just after a start returns): what it showed
    last, and the errors it gave meanwhile."""
    listed: list[str] = []
    errors: list[str] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            listed = await active_ids(api, account_id)
        except grpc.aio.AioRpcError as error:
            errors.append(f"{error.code().name}: {error.details()}")
        else:
            if sorted(listed) == sorted(expected):
                break
        await asyncio.sleep(0.25)
    return listed, errors
