"""Store outages: the services keep their word while PostgreSQL or Redis is down or has
just restarted. Each test stops a PostgreSQL or a Redis of its own (never the shared ones)
under real services: callers get UNAVAILABLE (retry later), never INTERNAL, and no money
is left held for a service that did not start."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Awaitable
from dataclasses import replace
from pathlib import Path

import grpc
import psycopg
import pytest
import redis

from meterline.auth.v1 import auth_pb2
from meterline.kernel.db import ensure_database, libpq_dsn
from tests.support.clients import Stubs, device_credential, new_account, stubs
from tests.support.private_stores import PrivatePostgres, PrivateRedis
from tests.support.session_calls import (
    get_account,
    listed_within,
    meter,
    own_device,
    start,
    start_request,
    stop,
    voice_tariff,
)
from tests.support.stack import InProcessStack, start_in_process
from tests.support.stores import StoreUrls

pytestmark = pytest.mark.e2e

OK = grpc.StatusCode.OK
UNAVAILABLE = grpc.StatusCode.UNAVAILABLE
SLICE_MICROS = 60 * 10_000  # the first hold: a 60-second slice at 0.01 a second


async def _outcome(call: Awaitable[object]) -> tuple[grpc.StatusCode, str]:
    try:
        await call
    except grpc.aio.AioRpcError as error:
        return error.code(), error.details() or ""
    return OK, ""


def _back_to_normal(outcomes: list[tuple[grpc.StatusCode, str]]) -> bool:
    """Every call succeeded, except perhaps the first with UNAVAILABLE."""
    first, *rest = outcomes
    return first[0] in (OK, UNAVAILABLE) and all(code is OK for code, _ in rest)


def _drop_keys(url: str, prefix: str) -> None:
    with redis.Redis.from_url(url) as client:
        for key in client.scan_iter(match=f"{prefix}:*"):
            client.delete(key)


# -- PostgreSQL ----------------------------------------------------------------------------


@pytest.fixture
async def postgres_outage(
    tmp_path: Path, stores: StoreUrls
) -> AsyncIterator[tuple[PrivatePostgres, InProcessStack]]:
    """The three services on a PostgreSQL of their own (Redis: the shared one, under a
    prefix of its own)."""
    postgres = await asyncio.to_thread(PrivatePostgres, tmp_path / "postgres")
    prefix = f"{stores.redis_prefix}-pg-{secrets.token_hex(3)}"
    try:
        urls = {
            role: await asyncio.to_thread(ensure_database, postgres.url, f"meterline_{role}")
            for role in ("rating", "billing", "service")
        }
        private = StoreUrls(
            server_url=postgres.url,
            rating_url=urls["rating"],
            billing_url=urls["billing"],
            service_url=urls["service"],
            redis_url=stores.redis_url,
            redis_prefix=prefix,
        )
        stack = await start_in_process(private)
        try:
            yield postgres, stack
        finally:
            await stack.close()
    finally:
        await asyncio.to_thread(postgres.close)
        _drop_keys(stores.redis_url, prefix)


async def _customer(api: Stubs) -> tuple[str, auth_pb2.IssueTokenRequest]:
    """A funded account with a VOICE tariff to call and a device credential."""
    await voice_tariff(api, "+358931", 10_000)
    account_id = await new_account(api.billing, 100_000_000)
    client_id, secret = await device_credential(api.auth, account_id)
    return account_id, auth_pb2.IssueTokenRequest(client_id=client_id, client_secret=secret)


async def test_while_postgres_is_down_calls_are_unavailable_and_work_again_after(
    postgres_outage: tuple[PrivatePostgres, InProcessStack],
) -> None:
    """A database restart is routine (an upgrade, a failover): while it is down, callers
    get UNAVAILABLE, which they retry; once it is back, calls work again."""
    postgres, stack = postgres_outage
    api = stubs(stack.endpoints)
    try:
        account_id, credentials = await _customer(api)
        who = own_device(account_id)
        request = start_request(account_id, "+3589314567")

        def start_service() -> Awaitable[object]:
            return api.service.StartService(request, metadata=who, timeout=30)

        def issue_token() -> Awaitable[object]:
            return api.auth.IssueToken(credentials, timeout=30)

        assert await _outcome(start_service()) == (OK, "")
        assert await _outcome(issue_token()) == (OK, "")

        await postgres.stop()
        try:
            down = [await _outcome(start_service()), await _outcome(issue_token())]
        finally:
            await postgres.start()
        starts = [await _outcome(start_service()) for _ in range(4)]
        tokens = [await _outcome(issue_token()) for _ in range(4)]
    finally:
        await api.close()

    assert [code for code, _ in down] == [UNAVAILABLE, UNAVAILABLE], (
        f"with PostgreSQL down, StartService and IssueToken gave {down}"
    )
    assert _back_to_normal(starts) and _back_to_normal(tokens), (
        f"after the restart, StartService gave {starts} and IssueToken {tokens}"
    )


async def test_calls_right_after_a_postgres_restart_succeed(
    postgres_outage: tuple[PrivatePostgres, InProcessStack],
) -> None:
    """The pooled connections all died with the restart; the next calls must get fresh
    ones instead of failing with an internal error (the first may say UNAVAILABLE)."""
    postgres, stack = postgres_outage
    api = stubs(stack.endpoints)
    try:
        account_id, credentials = await _customer(api)
        who = own_device(account_id)
        request = start_request(account_id, "+3589314568")
        assert (await _outcome(api.auth.IssueToken(credentials, timeout=30)))[0] is OK
        assert (await _outcome(api.service.StartService(request, metadata=who, timeout=30)))[
            0
        ] is OK

        await postgres.stop()
        await postgres.start()
        tokens = [await _outcome(api.auth.IssueToken(credentials, timeout=30)) for _ in range(4)]
        starts = [
            await _outcome(api.service.StartService(request, metadata=who, timeout=30))
            for _ in range(4)
        ]
    finally:
        await api.close()

    assert _back_to_normal(tokens) and _back_to_normal(starts), (
        f"after the restart, IssueToken gave {tokens} and StartService {starts}"
    )


# -- Redis ---------------------------------------------------------------------------------


@pytest.fixture
async def redis_outage(
    tmp_path: Path, stores: StoreUrls
) -> AsyncIterator[tuple[PrivateRedis, InProcessStack]]:
    """The three services on the test run's databases and a Redis of their own."""
    private_redis = await asyncio.to_thread(PrivateRedis, tmp_path / "redis")
    try:
        stack = await start_in_process(
            replace(
                stores,
                redis_url=private_redis.url,
                redis_prefix=f"{stores.redis_prefix}-redis-{secrets.token_hex(3)}",
            )
        )
        try:
            yield private_redis, stack
        finally:
            await stack.close()
    finally:
        await asyncio.to_thread(private_redis.close)


def _active_rows(service_url: str, account_id: str) -> int:
    with psycopg.connect(libpq_dsn(service_url), connect_timeout=5) as conn:
        row = conn.execute(
            "SELECT count(*) FROM sessions WHERE account_id = %s AND status = 'ACTIVE'",
            (account_id,),
        ).fetchone()
    assert row is not None
    return int(row[0])


async def test_a_start_during_a_redis_outage_leaves_no_hold_open(
    redis_outage: tuple[PrivateRedis, InProcessStack], stores: StoreUrls
) -> None:
    """Redis (presence) is down while a device starts a service: either the service
    starts and is metered and charged exactly, or the start fails with UNAVAILABLE and
    gives the money back at once, leaving no active session behind."""
    private_redis, stack = redis_outage
    api = stubs(stack.endpoints)
    try:
        await voice_tariff(api, "+358932", 10_000)
        account_id = await new_account(api.billing, 1_000_000)
        who = own_device(account_id)
        await private_redis.stop()
        try:
            session_id = await start(api, account_id, "+3589324567", who)
        except grpc.aio.AioRpcError as error:
            account = await get_account(api, account_id)
            left_active = await asyncio.to_thread(_active_rows, stores.service_url, account_id)
            assert (error.code(), account.held_micros, left_active) == (UNAVAILABLE, 0, 0), (
                f"the start failed with {error.code().name} ({error.details()}) and left "
                f"{account.held_micros} micros held and {left_active} ACTIVE session(s)"
            )
            assert account.available_micros == 1_000_000
        else:
            (metered,) = await meter(api, session_id, who, (1, 5))
            assert metered.charged_micros == 50_000
            assert await stop(api, session_id, 5, who) == 50_000
            account = await get_account(api, account_id)
            assert (account.balance_micros, account.held_micros) == (950_000, 0)
    finally:
        await api.close()


@pytest.mark.parametrize("loss", ["restart", "flushall"])
async def test_active_sessions_are_listed_again_after_redis_lost_them(
    redis_outage: tuple[PrivateRedis, InProcessStack], loss: str
) -> None:
    """Redis keeps nothing across a restart (and may be flushed), but the sessions are
    still running and billed: the list of active users must show them again soon, not
    stay empty until each one ends."""
    private_redis, stack = redis_outage
    api = stubs(stack.endpoints)
    session_ids: list[str] = []
    try:
        await voice_tariff(api, "+358933", 10_000)
        account_id = await new_account(api.billing, 20 * SLICE_MICROS + 1_000_000)
        who = own_device(account_id)
        for number in range(20):
            session_ids.append(await start(api, account_id, f"+358933{number:04d}", who))
        listed, _ = await listed_within(api, account_id, session_ids, 5)
        assert sorted(listed) == sorted(session_ids), "listed before Redis lost anything"

        if loss == "restart":
            await private_redis.stop()
            await private_redis.start()
        else:
            await asyncio.to_thread(private_redis.flushall)

        listed, errors = await listed_within(api, account_id, session_ids, 10)
        assert sorted(listed) == sorted(session_ids), (
            f"10 s after the Redis {loss}, ListActiveSessions shows {len(listed)} of the 20 "
            f"active sessions; errors meanwhile: {errors[:3]}"
        )
        # Retrying while presence is rebuilt is fine; an internal error is not.
        assert all(error.startswith("UNAVAILABLE") for error in errors), errors
    finally:
        await asyncio.gather(
            *(stop(api, session_id, 0) for session_id in session_ids),
            return_exceptions=True,
        )
        await api.close()
