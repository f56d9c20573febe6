"""The SDK for device code without asyncio: the same names as `client_sdk`, with blocking
methods.

    from client_sdk.sync import ClientConfig, MeterlineClient, ServiceType

    with MeterlineClient(config) as client:
        session = client.start_service(ServiceType.VOICE, "+442071234567")
        session.report(10)
        record = session.stop(42)

Each `MeterlineClient` runs the async SDK on a private event loop in a thread of its own
(daemon, named "meterline-sdk"); its methods hand their work to that loop and wait for
the result. Failover, heartbeats and automatic reports run there while the caller's
thread does other things. A `usage_source` is called on the SDK's thread, so it must be
safe to call from another thread (reading a counter is). Close the client (or leave its
`with` block) to stop the thread."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncGenerator, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

from client_sdk import client as _async
from client_sdk import session as _session
from client_sdk.client import Balance
from client_sdk.config import (
    ClientConfig,
    FailoverConfig,
    KeepAliveConfig,
    RetryConfig,
    TlsConfig,
)
from client_sdk.errors import (
    AccountSuspended,
    AuthenticationError,
    AuthenticationFailed,
    InsufficientFunds,
    InvalidRequest,
    LimitExceeded,
    MeterlineClientError,
    NoGateway,
    NotFound,
    PermissionDenied,
    ServerError,
    ServersUnavailable,
    ServiceRefused,
    SessionEnded,
    UnknownEndpoint,
)
from client_sdk.session import UsageSource
from client_sdk.types import (
    AccountEvent,
    ActiveService,
    BandPrice,
    BillingUpdate,
    Rate,
    ServiceRecord,
    ServiceType,
    TerminationReason,
    TimeBand,
    Unit,
    VolumeTier,
)
from client_sdk.updates import (
    PackageTampered,
    SignatureInvalid,
    UntrustedSigningKey,
    UpdateAvailable,
    UpdateConfig,
    UpdateError,
    VerifiedPackage,
)

__all__ = [
    "AccountEvent",
    "AccountSuspended",
    "ActiveService",
    "AuthenticationError",
    "AuthenticationFailed",
    "Balance",
    "BandPrice",
    "BillingUpdate",
    "ClientConfig",
    "FailoverConfig",
    "InsufficientFunds",
    "InvalidRequest",
    "KeepAliveConfig",
    "LimitExceeded",
    "MeterlineClient",
    "MeterlineClientError",
    "NoGateway",
    "NotFound",
    "PackageTampered",
    "PermissionDenied",
    "Rate",
    "RetryConfig",
    "ServerError",
    "ServersUnavailable",
    "ServiceRecord",
    "ServiceRefused",
    "ServiceSession",
    "ServiceType",
    "SessionEnded",
    "SignatureInvalid",
    "TerminationReason",
    "TimeBand",
    "TlsConfig",
    "Unit",
    "UnknownEndpoint",
    "UntrustedSigningKey",
    "UpdateAvailable",
    "UpdateConfig",
    "UpdateError",
    "UsageSource",
    "VerifiedPackage",
    "VolumeTier",
]

T = TypeVar("T")


class _LoopThread:
    """An event loop running in a daemon thread, and a blocking way to run work on it."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="meterline-sdk", daemon=True
        )
        self._thread.start()

    def run(self, work: Coroutine[Any, Any, T]) -> T:
        if threading.current_thread() is self._thread:
            work.close()
            raise RuntimeError("client_sdk.sync called from the SDK's own thread")
        if self._loop.is_closed() or not self._thread.is_alive():
            work.close()
            raise RuntimeError("this client is closed")
        future = asyncio.run_coroutine_threadsafe(work, self._loop)
        try:
            return future.result()
        except BaseException:
            future.cancel()  # e.g. KeyboardInterrupt: do not leave the work running
            raise

    def stop(self) -> None:
        if self._loop.is_closed() or not self._thread.is_alive():
            return
        self.run(_cancel_others())  # heartbeats and reporters of sessions left running
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        if not self._thread.is_alive():
            self._loop.close()


async def _cancel_others() -> None:
    current = asyncio.current_task()
    others = [task for task in asyncio.all_tasks() if task is not current]
    for task in others:
        task.cancel()
    await asyncio.gather(*others, return_exceptions=True)


async def _next(items: AsyncGenerator[T, None]) -> T:
    return await anext(items)


async def _make_client(config: ClientConfig) -> _async.MeterlineClient:
    return _async.MeterlineClient(config)


class ServiceSession:
    """A running metered service; the blocking twin of `client_sdk.ServiceSession`."""

    def __init__(self, session: _session.ServiceSession, loop: _LoopThread) -> None:
        self._session = session
        self._loop = loop

    @property
    def session_id(self) -> str:
        return self._session.session_id

    @property
    def rate(self) -> Rate:
        return self._session.rate

    @property
    def gateway_id(self) -> str:
        return self._session.gateway_id

    @property
    def gateway_address(self) -> str:
        return self._session.gateway_address

    @property
    def gateway_ticket(self) -> str:
        return self._session.gateway_ticket

    @property
    def granted_units(self) -> int:
        return self._session.granted_units

    @property
    def last_update(self) -> BillingUpdate | None:
        return self._session.last_update

    @property
    def record(self) -> ServiceRecord | None:
        return self._session.record

    @property
    def ended(self) -> bool:
        return self._session.ended

    @property
    def server(self) -> str | None:
        return self._session.server

    @property
    def used_units(self) -> int:
        return self._session.used_units

    @property
    def heartbeat_interval(self) -> float:
        return self._session.heartbeat_interval

    def report(self, used_units: int) -> BillingUpdate:
        """Send the cumulative usage now; returns the server's answer."""
        return self._loop.run(self._session.report(used_units))

    def updates(self) -> Iterator[BillingUpdate]:
        """Each billing update as it arrives, until the service ends (blocking)."""
        updates = self._session.updates()
        try:
            while True:
                try:
                    yield self._loop.run(_next(updates))
                except StopAsyncIteration:
                    return
        finally:
            with contextlib.suppress(RuntimeError):  # the client was closed meanwhile
                self._loop.run(updates.aclose())

    def stop(self, used_units: int | None = None) -> ServiceRecord:
        """End the service and settle it; see `client_sdk.ServiceSession.stop`."""
        return self._loop.run(self._session.stop(used_units))

    def __enter__(self) -> ServiceSession:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.record is None:
            self.stop()


class MeterlineClient:
    """One device's connection to Meterline; the blocking twin of
    `client_sdk.MeterlineClient`. Use `with MeterlineClient(config) as client`."""

    def __init__(self, config: ClientConfig) -> None:
        self._loop = _LoopThread()
        self._client = self._loop.run(_make_client(config))

    @property
    def config(self) -> ClientConfig:
        return self._client.config

    @property
    def account_id(self) -> str:
        return self._client.account_id

    def __enter__(self) -> MeterlineClient:
        try:
            self.login()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def login(self) -> str:
        return self._loop.run(self._client.login())

    def start_service(
        self,
        service_type: ServiceType | str,
        endpoint: str,
        *,
        account_id: str | None = None,
        application_id: str = "",
        usage_source: UsageSource | None = None,
        report_interval: float | None = None,
    ) -> ServiceSession:
        session = self._loop.run(
            self._client.start_service(
                service_type,
                endpoint,
                account_id=account_id,
                application_id=application_id,
                usage_source=usage_source,
                report_interval=report_interval,
            )
        )
        return ServiceSession(session, self._loop)

    def stop_session(self, session_id: str, used_units: int) -> ServiceRecord:
        return self._loop.run(self._client.stop_session(session_id, used_units))

    def balance(self) -> Balance:
        return self._loop.run(self._client.balance())

    def redeem_voucher(self, code: str) -> Balance:
        """Top up with a voucher; see `client_sdk.MeterlineClient.redeem_voucher`."""
        return self._loop.run(self._client.redeem_voucher(code))

    def active_services(self) -> list[ActiveService]:
        """The account's running services; see `client_sdk.MeterlineClient.active_services`."""
        return self._loop.run(self._client.active_services())

    def watch_account(self) -> Iterator[AccountEvent]:
        """The account's live events (blocking); see
        `client_sdk.MeterlineClient.watch_account`."""
        events = self._client.watch_account()
        try:
            while True:
                try:
                    yield self._loop.run(_next(events))
                except StopAsyncIteration:
                    return
        finally:
            with contextlib.suppress(RuntimeError):  # the client was closed meanwhile
                self._loop.run(events.aclose())

    def check_for_update(self, updates: UpdateConfig | None = None) -> UpdateAvailable | None:
        """A newer published component than `updates.current_version` (default: the
        config's), or None."""
        return self._loop.run(self._client.check_for_update(updates))

    def download_update(
        self, updates: UpdateConfig, update: UpdateAvailable, destination: Path | None = None
    ) -> VerifiedPackage:
        """Download `update` and verify it; see `client_sdk.MeterlineClient.download_update`."""
        return self._loop.run(self._client.download_update(updates, update, destination))

    def close(self) -> None:
        """Close the channels and stop the SDK's thread."""
        try:
            self._loop.run(self._client.close())
        finally:
            self._loop.stop()
