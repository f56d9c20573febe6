"""Quota slices, cut-offs and settlement, through the SDK, on a stack with small slices
and a short liveness timeout."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import grpc
import psycopg
import pytest
from psycopg.types.json import Jsonb

from client_sdk import ClientConfig, MeterlineClient, ServiceType, TerminationReason
from meterline.billing.v1 import billing_pb2
from meterline.kernel.config import QuotaPolicy
from meterline.kernel.db import libpq_dsn
from meterline.kernel.principals import Principal, PrincipalKind
from meterline.service.v1 import service_pb2
from tests.support import tls
from tests.support.clients import (
    OPERATOR,
    Stubs,
    device,
    device_credential,
    ensure_tariff,
    new_account,
    stubs,
)
from tests.support.stack import InProcessStack, metadata, start_in_process, token_for
from tests.support.stores import StoreUrls

pytestmark = pytest.mark.integration

SLICE = 10
VALIDITY = 2


@pytest.fixture(scope="module")
async def small_slices(stores: StoreUrls) -> AsyncIterator[InProcessStack]:
    running = await start_in_process(
        stores, QuotaPolicy(slice_seconds=SLICE, validity_seconds=VALIDITY)
    )
    try:
        yield running
    finally:
        await running.close()


@pytest.fixture
async def quota_api(small_slices: InProcessStack) -> AsyncIterator[Stubs]:
    connected = stubs(small_slices.endpoints)
    await ensure_tariff(connected.rating, "+33", 10_000)
    try:
        yield connected
    finally:
        await connected.close()


async def _client(
    stack: InProcessStack, api: Stubs, funded: int, heartbeat_interval: float | None = None
) -> MeterlineClient:
    account_id = await new_account(api.billing, funded)
    client_id, secret = await device_credential(api.auth, account_id)
    client = MeterlineClient(
        ClientConfig(
            service_addresses=[stack.endpoints.service],
            auth_addresses=[stack.endpoints.billing],
            client_id=client_id,
            client_secret=secret,
            report_interval=0.05,
            heartbeat_interval=heartbeat_interval,
            tls=tls.client_tls(),
        )
    )
    await client.login()
    return client


async def _account(api: Stubs, account_id: str) -> billing_pb2.Account:
    return await api.billing.GetAccount(
        billing_pb2.GetAccountRequest(account_id=account_id), metadata=OPERATOR
    )


async def test_slices_are_reserved_as_usage_grows(
    small_slices: InProcessStack, quota_api: Stubs
) -> None:
    client = await _client(small_slices, quota_api, 1_000_000)
    try:
        session = await client.start_service(ServiceType.VOICE, "+33123")
        assert session.granted_units == SLICE
        assert (await _account(quota_api, client.account_id)).held_micros == 100_000
        nine = await session.report(9)
        # The next slice is reserved ahead, in the background: a later answer shows it.
        for _ in range(50):
            if nine.granted_units == 2 * SLICE:
                break
            await asyncio.sleep(0.02)
            nine = await session.report(9)
        assert nine.granted_units == 2 * SLICE
        later = await session.report(35)
        assert later.granted_units == 45
        assert (await _account(quota_api, client.account_id)).held_micros == 450_000
        record = await session.stop(35)
        assert record.charged_micros == 350_000
        again = await client.stop_session(session.session_id, 35)
        assert again.charged_micros == 350_000
    finally:
        await client.close()
    account = await _account(quota_api, client.account_id)
    assert (account.balance_micros, account.held_micros) == (650_000, 0)


async def test_balance_exhaustion_warns_then_cuts_off(
    small_slices: InProcessStack, quota_api: Stubs
) -> None:
    client = await _client(small_slices, quota_api, 100_000)
    try:
        session = await client.start_service(ServiceType.VOICE, "+33123")
        assert session.granted_units == SLICE
        warned = await session.report(8)
        assert warned.final_units and not warned.ended
        assert warned.termination_reason is TerminationReason.BALANCE_EXHAUSTED
        cut = await session.report(12)
        assert cut.ended
        assert cut.termination_reason is TerminationReason.BALANCE_EXHAUSTED
        assert session.ended
        record = await session.stop()
        assert record.termination_reason is TerminationReason.BALANCE_EXHAUSTED
        assert (record.used_units, record.billed_units) == (12, 10)
        assert record.charged_micros == 100_000
    finally:
        await client.close()
    account = await _account(quota_api, client.account_id)
    assert (account.balance_micros, account.available_micros) == (0, 0)


async def test_silence_ends_the_service(small_slices: InProcessStack, quota_api: Stubs) -> None:
    # A device that went silent (it crashed, or lost its network): its heartbeat, far
    # beyond the liveness timeout, never comes.
    client = await _client(small_slices, quota_api, 1_000_000, heartbeat_interval=3600)
    try:
        session = await client.start_service(ServiceType.VOICE, "+33123")
        await session.report(3)
        for _ in range(60):
            await asyncio.sleep(0.2)
            active = await quota_api.service.ListActiveSessions(
                service_pb2.ListActiveSessionsRequest(account_id=client.account_id),
                metadata=OPERATOR,
            )
            if not active.sessions:
                break
        assert not active.sessions
        record = await client.stop_session(session.session_id, 3)
        assert record.termination_reason is TerminationReason.LIVENESS_TIMEOUT
        assert record.charged_micros == 30_000
    finally:
        await client.close()
    assert (await _account(quota_api, client.account_id)).balance_micros == 970_000


async def test_usage_source_reports_on_its_own(
    small_slices: InProcessStack, quota_api: Stubs
) -> None:
    client = await _client(small_slices, quota_api, 1_000_000)
    counter = iter(range(1, 1000))
    try:
        session = await client.start_service(
            ServiceType.VOICE, "+33123", usage_source=lambda: next(counter)
        )
        seen = []
        async for update in session.updates():
            seen.append(update)
            if len(seen) == 3:
                break
        assert [update.used_units for update in seen] == [1, 2, 3]
        assert [update.charged_micros for update in seen] == [10_000, 20_000, 30_000]
        record = await session.stop(5)
        assert record.charged_micros == 50_000
    finally:
        await client.close()


async def test_gateways_hear_of_terminations_and_report_usage(
    small_slices: InProcessStack, quota_api: Stubs
) -> None:
    client = await _client(small_slices, quota_api, 1_000_000)
    gateway = metadata(
        token_for(Principal(kind=PrincipalKind.GATEWAY, subject="gw", gateway_id="local"))
    )
    other_gateway = metadata(
        token_for(Principal(kind=PrincipalKind.GATEWAY, subject="gw2", gateway_id="elsewhere"))
    )
    try:
        session = await client.start_service(ServiceType.VOICE, "+33123")
        assert session.gateway_id == "local"
        watch = quota_api.service.WatchTerminations(
            service_pb2.WatchTerminationsRequest(gateway_id="local", only_new=True),
            metadata=gateway,
        )
        subscribed = await asyncio.wait_for(watch.read(), timeout=5)
        assert subscribed.kind == service_pb2.NOTICE_KIND_SUBSCRIBED
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await quota_api.service.ReportGatewayUsage(
                service_pb2.ReportGatewayUsageRequest(session_id=session.session_id, used_units=4),
                metadata=other_gateway,
            )
        assert raised.value.code() is grpc.StatusCode.PERMISSION_DENIED
        progress = await quota_api.service.ReportGatewayUsage(
            service_pb2.ReportGatewayUsageRequest(session_id=session.session_id, used_units=4),
            metadata=gateway,
        )
        assert progress.charged_micros == 40_000
        ended = await quota_api.service.ReportGatewayUsage(
            service_pb2.ReportGatewayUsageRequest(
                session_id=session.session_id, used_units=7, ended=True
            ),
            metadata=gateway,
        )
        assert ended.record.charged_micros == 70_000
        assert ended.record.termination_reason == service_pb2.TERMINATION_REASON_GATEWAY
        termination = await asyncio.wait_for(watch.read(), timeout=5)
        # Other tests' sessions run through local too: read on to this one's end.
        while not (termination.session_id == session.session_id and termination.ended):
            termination = await asyncio.wait_for(watch.read(), timeout=5)
        assert termination.kind == service_pb2.NOTICE_KIND_ENDED
        assert termination.cursor > subscribed.cursor
        watch.cancel()
    finally:
        await client.close()


async def test_a_start_that_died_after_its_first_hold_releases_it(
    small_slices: InProcessStack, quota_api: Stubs, stores: StoreUrls
) -> None:
    """The service manager wrote the session and reserved its first hold, then died before
    recording it: settlement finds the hold by its key and gives the money back."""
    account_id = await new_account(quota_api.billing, 1_000_000)
    session_id = f"ses_crashed_{account_id[-8:]}"
    rate = {
        "tariff_id": "t",
        "prefix": "+33",
        "unit": "SECOND",
        "currency": "EUR",
        "price_per_unit_micros": 10_000,
        "increment_units": 1,
        "minimum_units": 0,
        "setup_fee_micros": 0,
    }
    with psycopg.connect(libpq_dsn(stores.service_url)) as conn:
        conn.execute(
            "INSERT INTO sessions (session_id, account_id, service_type, endpoint, gateway_id, "
            "rate, status, pending_hold_micros) VALUES (%s, %s, 'VOICE', '+33123', 'local', "
            "%s, 'ACTIVE', 100000)",
            (session_id, account_id, Jsonb(rate)),
        )
    await quota_api.billing.Reserve(
        billing_pb2.ReserveRequest(
            account_id=account_id,
            amount_micros=100_000,
            idempotency_key=f"{session_id}:hold:1",
            reference=session_id,
        ),
        metadata=OPERATOR,
    )
    assert (await _account(quota_api, account_id)).held_micros == 100_000

    record = await quota_api.service.StopService(
        service_pb2.StopServiceRequest(session_id=session_id, used_units=0), metadata=OPERATOR
    )
    assert record.charged_micros == 0
    account = await _account(quota_api, account_id)
    assert (account.balance_micros, account.available_micros, account.held_micros) == (
        1_000_000,
        1_000_000,
        0,
    )


async def test_a_refused_first_hold_leaves_no_session(
    small_slices: InProcessStack, quota_api: Stubs, stores: StoreUrls
) -> None:
    """Ten starts at once on an account that can pay one first slice: those that saw the
    balance before the winner's hold but were then refused by the billing manager's
    Reserve (its sentence: "... is needed but only ... is available") must leave no
    session row behind. Raced again on a new account until such a refusal happened."""
    refused_by_reserve = 0
    for _ in range(5):
        account_id = await new_account(quota_api.billing, SLICE * 10_000)
        starts = await asyncio.gather(
            *(
                quota_api.service.StartService(
                    service_pb2.StartServiceRequest(
                        account_id=account_id, service_type=1, endpoint="+33123"
                    ),
                    metadata=device(account_id),
                )
                for _ in range(10)
            ),
            return_exceptions=True,
        )
        started = [start for start in starts if isinstance(start, service_pb2.StartServiceResponse)]
        refusals = [start for start in starts if isinstance(start, grpc.aio.AioRpcError)]
        assert len(started) == 1 and len(refusals) == 9, starts
        assert all(refusal.code() == grpc.StatusCode.FAILED_PRECONDITION for refusal in refusals), (
            refusals
        )
        refused_by_reserve += sum("is needed but only" in (r.details() or "") for r in refusals)
        with psycopg.connect(libpq_dsn(stores.service_url)) as conn:
            rows = conn.execute(
                "SELECT session_id FROM sessions WHERE account_id = %s", (account_id,)
            ).fetchall()
        assert rows == [(started[0].session_id,)]
        if refused_by_reserve:
            break
    assert refused_by_reserve, "no start got past the balance check to be refused by Reserve"


async def test_a_session_is_priced_under_its_accounts_plan_and_bands(
    small_slices: InProcessStack, quota_api: Stubs
) -> None:
    """The service manager rates with the account's plan: here a plan whose one band
    (all week, all day) doubles the price of the default plan's +33 tariff."""
    from meterline.rating.v1 import rating_pb2, types_pb2

    plan_id = f"banded-{uuid.uuid4().hex[:8]}"
    await quota_api.rating.ImportTariffs(
        rating_pb2.ImportTariffsRequest(
            rate_plans=[
                rating_pb2.RatePlan(
                    rate_plan_id=plan_id,
                    display_name="Banded",
                    time_zone="Europe/Paris",
                    default_band="OFF_PEAK",
                    time_bands=[
                        rating_pb2.TimeBand(
                            band="PEAK", days="ALL", start_time="00:00", end_time="24:00"
                        )
                    ],
                )
            ],
            tariffs=[
                rating_pb2.Tariff(
                    rate_plan_id=plan_id,
                    service_type=types_pb2.VOICE,
                    prefix="+33",
                    unit=types_pb2.SECOND,
                    price_per_unit_micros=10_000,
                    band_prices=[rating_pb2.BandPrice(band="PEAK", price_per_unit_micros=20_000)],
                    increment_units=1,
                    currency="EUR",
                )
            ],
        ),
        metadata=OPERATOR,
    )
    client = await _client(small_slices, quota_api, 1_000_000)
    try:
        await quota_api.rating.AssignRatePlan(
            rating_pb2.AssignRatePlanRequest(account_id=client.account_id, rate_plan_id=plan_id),
            metadata=OPERATOR,
        )
        session = await client.start_service(ServiceType.VOICE, "+33123")
        assert session.rate.price_per_unit_micros == 10_000
        assert (await session.report(5)).charged_micros == 100_000
        record = await session.stop(7)
        assert record.charged_micros == 140_000
    finally:
        await client.close()
    assert (await _account(quota_api, client.account_id)).balance_micros == 860_000


async def test_device_and_gateway_counters_are_each_their_own(
    small_slices: InProcessStack, quota_api: Stubs
) -> None:
    """The gateway reports more than the device: the device's next, lower-but-own-newer
    report is accepted, the session's usage is the larger count, and an operator's stop
    with 0 settles what was reported."""
    client = await _client(small_slices, quota_api, 1_000_000)
    gateway = metadata(
        token_for(Principal(kind=PrincipalKind.GATEWAY, subject="gw", gateway_id="local"))
    )
    try:
        session = await client.start_service(ServiceType.VOICE, "+33123")
        await session.report(5)
        await quota_api.service.ReportGatewayUsage(
            service_pb2.ReportGatewayUsageRequest(session_id=session.session_id, used_units=12),
            metadata=gateway,
        )
        later = await session.report(8)  # the device's own counter goes 5 -> 8
        assert (later.used_units, later.charged_micros) == (12, 120_000)
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await quota_api.service.ReportGatewayUsage(
                service_pb2.ReportGatewayUsageRequest(session_id=session.session_id, used_units=11),
                metadata=gateway,
            )
        assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        record = await quota_api.service.StopService(
            service_pb2.StopServiceRequest(session_id=session.session_id, used_units=0),
            metadata=OPERATOR,
        )
        assert (record.used_units, record.charged_micros) == (12, 120_000)
        assert record.termination_reason == service_pb2.TERMINATION_REASON_OPERATOR
    finally:
        await client.close()
    assert (await _account(quota_api, client.account_id)).balance_micros == 880_000
