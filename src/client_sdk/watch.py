"""An account's live events for a display: the server's `WatchAccount` stream as an async
iterator of `AccountEvent`s that reopens itself.

The stream goes to the best service manager of the list (as every call does) and is
opened again whenever it breaks for a reason the recovery policy calls recoverable (a
server gone, a connection lost, the server closing the stream as it shuts down); an
expired token is refreshed and the stream opened again. The waits between attempts are
those of `RetryConfig`; when `max_attempts` openings in a row fail (none lived long
enough to count as open) the iterator raises `ServersUnavailable`. Anything else (the
account is not the device's, too many watches open) is the server's answer and is
raised as the SDK's typed error.

Events that happen while the stream is being reopened are not replayed: each event
carries the session's cumulative charge and usage, so the next one puts a display right.
A session that ended in the gap sends no next event, so after every reopening the watch
reads the account's running services again (`MeterlineClient.active_services()`), and
for each session it knew running that no longer is, it yields an ended event of its own:
`termination_reason` None (not known here), the last charge and usage it saw, the
available credit read afresh, and `ENDED_WHILE_AWAY` as its message (the session's
service record has its final charge and reason). The sessions it knows are those of its
events and those running when it first opened.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import grpc

from client_sdk import _wire, recovery
from client_sdk.auth import TokenProvider
from client_sdk.errors import MeterlineClientError, ServersUnavailable, from_rpc_error
from client_sdk.failover import ServerPool
from client_sdk.types import AccountEvent, ActiveService
from meterline.service.v1 import service_pb2, service_pb2_grpc

log = logging.getLogger(__name__)

ENDED_WHILE_AWAY = (
    "The service ended while the account watch was reconnecting; its service record has "
    "the final charge."
)
"""The message of the ended events the watch makes itself (see the module's doc)."""


@dataclass(frozen=True)
class AccountReads:
    """What the watch reads again after it reopens (MeterlineClient's own calls, with
    their failover and token refresh)."""

    active_services: Callable[[], Awaitable[list[ActiveService]]]
    """The account's running services."""
    available_micros: Callable[[], Awaitable[int]]
    """The account's available credit."""


@dataclass
class _Known:
    """The sessions the watch knows running: the last event of each (or what the first
    read of the running services said)."""

    account_id: str
    currency: str
    running: dict[str, AccountEvent] = field(default_factory=dict)

    def saw(self, event: AccountEvent) -> None:
        if event.ended:
            self.running.pop(event.session_id, None)
        else:
            self.running[event.session_id] = event

    def add(self, service: ActiveService) -> None:
        if service.session_id not in self.running:
            self.running[service.session_id] = AccountEvent(
                account_id=self.account_id,
                session_id=service.session_id,
                available_micros=0,
                charged_micros=0,
                used_units=service.used_units,
                currency=self.currency,
                time=datetime.now(UTC),
            )

    def gone(self, active: list[ActiveService], available_micros: int) -> list[AccountEvent]:
        """An ended event for each session known running that is not `active`."""
        still = {service.session_id for service in active}
        ended = [
            AccountEvent(
                account_id=self.account_id,
                session_id=last.session_id,
                available_micros=available_micros,
                charged_micros=last.charged_micros,
                used_units=last.used_units,
                currency=self.currency,
                time=datetime.now(UTC),
                ended=True,
                message=ENDED_WHILE_AWAY,
            )
            for session_id, last in self.running.items()
            if session_id not in still
        ]
        for event in ended:
            del self.running[event.session_id]
        return ended


async def _reconcile(reads: AccountReads, known: _Known, first: bool) -> list[AccountEvent]:
    """After an opening: the ended events of the sessions that ended unheard (none on the
    first opening, whose read only tells which sessions run); [] when the reads fail (the
    next reopening reads again)."""
    try:
        active = await reads.active_services()
        if first:
            for service in active:
                known.add(service)
            return []
        vanished = {s for s in known.running} - {service.session_id for service in active}
        if not vanished:
            return []
        available = await reads.available_micros()
    except MeterlineClientError as error:
        log.info("account watch: running services not read again (%s)", error.message)
        return []
    return known.gone(active, available)


async def account_events(
    pool: ServerPool,
    tokens: TokenProvider,
    account_id: str,
    currency: str,
    reads: AccountReads | None = None,
) -> AsyncIterator[AccountEvent]:
    """The account's events until the caller stops iterating (see the module's doc);
    without `reads`, nothing is read again after a reopening."""
    request = service_pb2.WatchAccountRequest(account_id=account_id)
    retry = pool.retry
    failures = 0
    refreshed = False
    tried: set[str] = set()
    known = _Known(account_id, currency)
    first = True
    while True:
        address = pool.choose(tried)
        stub: Any = service_pb2_grpc.ServiceManagerStub(pool.channel(address))
        call = stub.WatchAccount(request, metadata=await tokens.metadata())
        opened = time.monotonic()
        try:
            if reads is not None:
                # The stream is asked for first, so a session that ends from now on is
                # heard of (its ended event) or is not in this read (an ended event here).
                for event in await _reconcile(reads, known, first):
                    yield event
            first = False
            async for wire in call:
                failures, refreshed = 0, False
                tried.clear()
                pool.record_success(address)
                event = _wire.account_event(currency, wire)
                known.saw(event)
                yield event
            error: Exception = recovery.TransportFailure("the server closed the account watch")
        except grpc.aio.AioRpcError as rpc_error:
            error = rpc_error
        finally:
            call.cancel()
        # A stream that stayed open a while was open: its end starts a new count.
        if time.monotonic() - opened >= retry.max_backoff:
            failures = 0
        decision = recovery.decide(error)
        if decision is recovery.Decision.REFRESH_TOKEN and not refreshed:
            refreshed = True
            tokens.invalidate()
            continue
        if decision is not recovery.Decision.RECOVER:
            if isinstance(error, grpc.aio.AioRpcError):
                raise from_rpc_error(error) from error
            raise error
        failures += 1
        tried.add(address)
        pool.record_failure(address, error)
        if failures >= retry.max_attempts:
            raise ServersUnavailable(
                pool.unavailable(error), recovery.error_reason_of(error)
            ) from error
        wait = random.uniform(0, min(retry.max_backoff, retry.initial_backoff * 2**failures))
        log.info(
            "account watch on %s ended (%s); reopening in %.1f s",
            address,
            recovery.describe(error),
            wait,
        )
        await asyncio.sleep(wait)
