"""A PostgreSQL restart and an outage, on a private server: the billing manager and the
rating service answer UNAVAILABLE (never INTERNAL, never a hang) while it is down, say
NOT_SERVING, and after it is back the very first calls succeed — including those that
find every pooled connection dead — and a keyed FundAccount repeated then funds once."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sqlalchemy.engine import make_url

import billing_manager.server
import rating_service.catalog
import rating_service.server
from meterline.auth.v1 import auth_pb2, auth_pb2_grpc
from meterline.billing.v1 import billing_pb2, billing_pb2_grpc
from meterline.kernel import embedded
from meterline.kernel.config import Settings, Stores
from meterline.kernel.db import ensure_database
from meterline.kernel.grpc_errors import error_reason
from meterline.kernel.runtime import ServiceHandle
from meterline.rating.v1 import rating_pb2, rating_pb2_grpc, types_pb2
from tests.support import tls
from tests.support.clients import OPERATOR, device_credential, ensure_tariff, new_account
from tests.support.stack import TOKEN_SECRET

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]

T = TypeVar("T")
CALL_TIMEOUT = 10.0  # a call that hangs fails the test instead of hanging it
UNAVAILABLE_WITHIN = 5.0  # seconds: how fast a call to a stopped store must fail


@dataclass
class Running:
    pg_dir: Path
    billing_stub: billing_pb2_grpc.BillingManagerAsyncStub
    auth: auth_pb2_grpc.AuthServiceAsyncStub
    rating_stub: rating_pb2_grpc.RatingServiceAsyncStub
    rating_b_stub: rating_pb2_grpc.RatingServiceAsyncStub
    """A second rating instance: it learns of the first one's writes only by LISTEN."""
    health: dict[str, health_pb2_grpc.HealthAsyncStub]


@pytest.fixture
async def running(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Running]:
    pg_dir = tmp_path / "pg"
    server_url, _ = await asyncio.to_thread(embedded.start_embedded_postgres, pg_dir)
    # The embedded server takes a new free port on every start; a restart must come back
    # where the services' URLs point.
    port = make_url(server_url).port
    monkeypatch.setattr(embedded, "_free_port", lambda: port)
    # The rating listener reloads through the pool when it reconnects after a restart;
    # give the test's first calls a clear head start, so they are the ones that meet the
    # dead pooled connections.
    monkeypatch.setattr(rating_service.catalog, "LISTEN_RETRY_FIRST_SECONDS", 2.0)
    async with AsyncExitStack() as stack:
        stack.callback(embedded.stop_embedded_postgres, pg_dir)
        settings = Settings(
            stores=Stores(
                billing_database_url=ensure_database(server_url, "billing"),
                rating_database_url=ensure_database(server_url, "rating"),
            ),
            tls=tls.server_settings(),
            token_secret=TOKEN_SECRET,
        )
        handles: dict[str, ServiceHandle] = {}
        for name, start in (
            ("billing", billing_manager.server.start),
            ("rating", rating_service.server.start),
            ("rating_b", rating_service.server.start),
        ):
            handle = await start(settings, "127.0.0.1:0")
            stack.push_async_callback(handle.close, 0.5)
            handles[name] = handle
        channels = {}
        for name, handle in handles.items():
            channel = tls.channel(f"127.0.0.1:{handle.port}")
            stack.push_async_callback(channel.close, None)
            channels[name] = channel
        yield Running(
            pg_dir=pg_dir,
            billing_stub=billing_pb2_grpc.BillingManagerStub(channels["billing"]),
            auth=auth_pb2_grpc.AuthServiceStub(channels["billing"]),
            rating_stub=rating_pb2_grpc.RatingServiceStub(channels["rating"]),
            rating_b_stub=rating_pb2_grpc.RatingServiceStub(channels["rating_b"]),
            health={
                name: health_pb2_grpc.HealthStub(channel) for name, channel in channels.items()
            },
        )


async def _unavailable(call: Callable[[], Awaitable[Any]], database: str) -> None:
    started = time.monotonic()
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call()
    elapsed = time.monotonic() - started
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE, raised.value.details()
    assert error_reason(raised.value) == "UNAVAILABLE"
    assert raised.value.details() == f"The {database} cannot be reached; try again shortly."
    assert elapsed < UNAVAILABLE_WITHIN, f"took {elapsed:.1f} s to fail"


async def _eventually(check: Callable[[], Awaitable[T]], seconds: float, what: str) -> T:
    deadline = time.monotonic() + seconds
    while True:
        try:
            return await check()
        except (AssertionError, grpc.aio.AioRpcError):
            if time.monotonic() > deadline:
                raise AssertionError(f"not within {seconds} s: {what}") from None
            await asyncio.sleep(0.1)


async def _all_health_is(
    running: Running, status: health_pb2.HealthCheckResponse.ServingStatus.ValueType
) -> None:
    """Each server's overall health ('') says `status` within a few probe intervals."""
    for name, stub in running.health.items():

        async def check(stub: health_pb2_grpc.HealthAsyncStub = stub) -> None:
            response = await stub.Check(health_pb2.HealthCheckRequest(), timeout=CALL_TIMEOUT)
            assert response.status == status

        name_of = health_pb2.HealthCheckResponse.ServingStatus.Name(status)
        await _eventually(check, 8.0, f"{name} says {name_of}")


def _voice_rate_request(prefix: str) -> rating_pb2.GetRateRequest:
    return rating_pb2.GetRateRequest(service_type=types_pb2.VOICE, endpoint=prefix + "123")


async def test_database_down_and_restarted(
    running: Running, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    billing, auth, rating = running.billing_stub, running.auth, running.rating_stub
    account_id = await new_account(billing)
    client_id, secret = await device_credential(auth, account_id)
    await ensure_tariff(rating, "+4420", 10_000)

    def issue_token() -> Awaitable[auth_pb2.IssueTokenResponse]:
        request = auth_pb2.IssueTokenRequest(client_id=client_id, client_secret=secret)
        return auth.IssueToken(request, timeout=CALL_TIMEOUT)

    def get_account() -> Awaitable[billing_pb2.Account]:
        request = billing_pb2.GetAccountRequest(account_id=account_id)
        return billing.GetAccount(request, metadata=OPERATOR, timeout=CALL_TIMEOUT)

    def fund(key: str, amount: int) -> Awaitable[billing_pb2.FundAccountResponse]:
        request = billing_pb2.FundAccountRequest(
            account_id=account_id, amount_micros=amount, idempotency_key=key
        )
        return billing.FundAccount(request, metadata=OPERATOR, timeout=CALL_TIMEOUT)

    def list_tariffs() -> Awaitable[rating_pb2.ListTariffsResponse]:
        request = rating_pb2.ListTariffsRequest()
        return rating.ListTariffs(request, metadata=OPERATOR, timeout=CALL_TIMEOUT)

    def get_rate(
        stub: rating_pb2_grpc.RatingServiceAsyncStub, prefix: str
    ) -> Awaitable[rating_pb2.Rate]:
        return stub.GetRate(_voice_rate_request(prefix), metadata=OPERATOR, timeout=CALL_TIMEOUT)

    async def sees_tariff_written_after(prefix: str) -> None:
        await ensure_tariff(rating, prefix, 20_000)
        rate = await _eventually(
            lambda: get_rate(running.rating_b_stub, prefix),
            12.0,
            f"the second rating instance reloads {prefix} (its LISTEN came back)",
        )
        assert rate.prefix == prefix

    first_key, second_key = f"restart-{uuid.uuid4().hex}", f"outage-{uuid.uuid4().hex}"
    first = await fund(first_key, 1_000_000)
    # Several idle connections in each pool: all of them die with the server.
    await asyncio.gather(*(get_account() for _ in range(5)), issue_token(), list_tariffs())

    # 1. A restart nobody noticed: the loop is blocked on purpose, so nothing in this
    # process touches the database between the stop and the start.
    embedded.stop_embedded_postgres(running.pg_dir)
    embedded.start_embedded_postgres(running.pg_dir)
    token, accounts, repeated, tariffs = await asyncio.gather(
        issue_token(),
        asyncio.gather(*(get_account() for _ in range(4))),
        fund(first_key, 1_000_000),
        list_tariffs(),
    )
    assert token.access_token and token.account_id == account_id
    assert [account.balance_micros for account in accounts] == [1_000_000] * 4
    assert repeated.transaction.transaction_id == first.transaction.transaction_id
    assert repeated.account.balance_micros == 1_000_000  # funded once
    assert [tariff.prefix for tariff in tariffs.tariffs] == ["+4420"]
    await sees_tariff_written_after("+4421")

    # 2. The database is down: UNAVAILABLE with a sentence, quickly; rating from memory.
    await asyncio.to_thread(embedded.stop_embedded_postgres, running.pg_dir)
    await _unavailable(issue_token, "account database")
    await _unavailable(get_account, "account database")
    await _unavailable(lambda: fund(second_key, 500_000), "account database")
    await _unavailable(list_tariffs, "tariff database")
    assert (await get_rate(rating, "+4420")).price_per_unit_micros == 10_000
    await _all_health_is(running, health_pb2.HealthCheckResponse.NOT_SERVING)

    # 3. It is back: the first calls succeed, the retried movement funds once.
    await asyncio.to_thread(embedded.start_embedded_postgres, running.pg_dir)
    assert (await issue_token()).account_id == account_id
    funded = await fund(second_key, 500_000)
    again = await fund(second_key, 500_000)
    assert again.transaction.transaction_id == funded.transaction.transaction_id
    assert (await get_account()).balance_micros == 1_500_000
    await _all_health_is(running, health_pb2.HealthCheckResponse.SERVING)
    await sees_tariff_written_after("+4422")

    # Expected outages are one WARNING line each, never an incident with a traceback.
    catalogue = [r for r in caplog.records if r.name == "meterline.kernel.grpc_errors"]
    assert not [r for r in catalogue if r.levelno >= logging.ERROR]
    warnings = [r for r in catalogue if r.levelno == logging.WARNING]
    assert len(warnings) == 4
    assert all(r.exc_info is None and "\n" not in r.getMessage() for r in warnings)
