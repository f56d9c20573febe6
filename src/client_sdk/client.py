"""The device's entry point: log in, start services, read the balance."""

from __future__ import annotations

import logging
import uuid
import weakref
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import grpc

from client_sdk import _wire
from client_sdk._money import format_amount
from client_sdk.auth import TokenProvider
from client_sdk.config import ClientConfig
from client_sdk.errors import AuthenticationFailed, MeterlineClientError
from client_sdk.failover import ServerPool
from client_sdk.session import ServiceSession, UsageSource
from client_sdk.types import AccountEvent, ActiveService, ServiceRecord, ServiceType
from client_sdk.updates import ComponentUpdates, UpdateAvailable, UpdateConfig, VerifiedPackage
from client_sdk.watch import AccountReads, account_events
from meterline.billing.v1 import billing_pb2, billing_pb2_grpc
from meterline.service.v1 import service_pb2, service_pb2_grpc

T = TypeVar("T")


log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Balance:
    account_id: str
    currency: str
    balance_micros: int
    """Funded minus charged."""
    available_micros: int
    """Balance minus what running services hold."""

    @property
    def balance(self) -> str:
        """The balance as a decimal string, e.g. "0.58"."""
        return format_amount(self.balance_micros)

    @property
    def available(self) -> str:
        return format_amount(self.available_micros)


class MeterlineClient:
    """One device's connection to Meterline. Use `async with MeterlineClient(config)`.

    Every call has a deadline (`FailoverConfig.call_timeout`), goes to the best server of
    its list (primary first, failing over under the recovery policy) and carries an
    access token that is refreshed before it expires, or at once if a server finds it
    expired."""

    def __init__(self, config: ClientConfig) -> None:
        self.config = config
        self.service_pool = ServerPool(
            config.service_addresses, config.tls, config.failover, config.retry, config.keep_alive
        )
        """The service managers."""
        self.auth_pool = ServerPool(
            config.auth_addresses, config.tls, config.failover, config.retry, config.keep_alive
        )
        """The billing managers (AuthService, balances)."""
        self.tokens = TokenProvider(
            self.auth_pool, config.client_id, config.client_secret, config.token_refresh_margin
        )
        self._sessions: weakref.WeakSet[ServiceSession] = weakref.WeakSet()
        self.update_available: UpdateAvailable | None = None
        """What the check on connect found (with `ClientConfig.updates`), or None."""

    async def __aenter__(self) -> MeterlineClient:
        await self.login()
        if self.config.updates is not None:
            await self._check_on_connect(self.config.updates)
        return self

    async def _check_on_connect(self, updates: UpdateConfig) -> None:
        """Connecting checks for an update; a failed check never stops the device from
        connecting (it is logged and `update_available` stays None)."""
        try:
            self.update_available = await self.check_for_update(updates)
        except MeterlineClientError as error:
            log.warning("the component update check failed: %s", error)

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def login(self) -> str:
        """Exchange the credential for a token (if none is held); returns the account the
        credential is bound to. Later calls renew the token by themselves."""
        await self.tokens.token()
        return self.tokens.account_id

    @property
    def account_id(self) -> str:
        return self.tokens.account_id

    async def close(self) -> None:
        """Close the channels. Sessions not stopped stop reporting (and heartbeating) but
        are not ended: the server settles them at their last count after its liveness
        timeout, as for a device that went away."""
        for session in list(self._sessions):
            await session._detach()
        await self.service_pool.close()
        await self.auth_pool.close()

    async def start_service(
        self,
        service_type: ServiceType | str,
        endpoint: str,
        *,
        account_id: str | None = None,
        application_id: str = "",
        usage_source: UsageSource | None = None,
        report_interval: float | None = None,
    ) -> ServiceSession:
        """Start a service. With `usage_source`, usage is reported every `report_interval`
        seconds on its own; without, call `session.report(used_units)`."""
        account = account_id or await self.login()
        if not account:
            raise AuthenticationFailed(
                "This credential is not bound to an account; pass account_id.", "NO_ACCOUNT"
            )
        request = service_pb2.StartServiceRequest(
            account_id=account,
            service_type=_wire.service_type_to_wire(service_type),
            endpoint=endpoint,
            application_id=application_id,
            # The same request id on every retry: a failover cannot start it twice.
            request_id=uuid.uuid4().hex,
        )

        async def call(
            channel: grpc.aio.Channel, deadline: float
        ) -> service_pb2.StartServiceResponse:
            stub = service_pb2_grpc.ServiceManagerStub(channel)
            return await stub.StartService(
                request, metadata=await self.tokens.metadata(), timeout=deadline
            )

        started = await self.service_pool.call(call, refresh_token=self.tokens.invalidate)
        session = ServiceSession(
            self,
            started,
            _wire.rate(started.rate),
            usage_source,
            report_interval or self.config.report_interval,
        )
        self._sessions.add(session)
        return session

    async def stop_session(self, session_id: str, used_units: int) -> ServiceRecord:
        """Stop a session by id with its final cumulative usage (repeatable)."""
        request = service_pb2.StopServiceRequest(session_id=session_id, used_units=used_units)

        async def call(channel: grpc.aio.Channel, deadline: float) -> service_pb2.ServiceRecord:
            stub = service_pb2_grpc.ServiceManagerStub(channel)
            return await stub.StopService(
                request, metadata=await self.tokens.metadata(), timeout=deadline
            )

        record = await self.service_pool.call(call, refresh_token=self.tokens.invalidate)
        return _wire.record(record)

    async def balance(self) -> Balance:
        account = self.account_id or await self.login()
        request = billing_pb2.GetAccountRequest(account_id=account)

        async def call(channel: grpc.aio.Channel, deadline: float) -> billing_pb2.Account:
            stub = billing_pb2_grpc.BillingManagerStub(channel)
            return await stub.GetAccount(
                request, metadata=await self.tokens.metadata(), timeout=deadline
            )

        found = await self.auth_pool.call(call, refresh_token=self.tokens.invalidate)
        return Balance(
            account_id=found.account_id,
            currency=found.currency,
            balance_micros=found.balance_micros,
            available_micros=found.available_micros,
        )

    async def redeem_voucher(self, code: str) -> Balance:
        """Top up this device's own account with a prepaid voucher code (as printed; case,
        spaces and dashes do not matter); the balance after it. A repeat of the same code
        on the same account returns that first funding (a retry is safe); a used, expired,
        unknown or other-currency code is refused (its `reason`: VOUCHER_USED,
        VOUCHER_EXPIRED, VOUCHER_UNKNOWN, CURRENCY_MISMATCH) and changes nothing."""
        account = self.account_id or await self.login()
        request = billing_pb2.RedeemVoucherRequest(account_id=account, code=code)

        async def call(
            channel: grpc.aio.Channel, deadline: float
        ) -> billing_pb2.RedeemVoucherResponse:
            stub = billing_pb2_grpc.BillingManagerStub(channel)
            return await stub.RedeemVoucher(
                request, metadata=await self.tokens.metadata(), timeout=deadline
            )

        funded = (await self.auth_pool.call(call, refresh_token=self.tokens.invalidate)).account
        return Balance(
            account_id=funded.account_id,
            currency=funded.currency,
            balance_micros=funded.balance_micros,
            available_micros=funded.available_micros,
        )

    # -- what a display shows (client_sdk.watch) --------------------------------------------

    async def active_services(self) -> list[ActiveService]:
        """The account's running services, oldest first (started by this device or
        another of the account): what each is, its rate, when it started, its usage."""
        account = self.account_id or await self.login()
        request = service_pb2.ListActiveSessionsRequest(account_id=account)

        async def call(
            channel: grpc.aio.Channel, deadline: float
        ) -> service_pb2.ListActiveSessionsResponse:
            stub = service_pb2_grpc.ServiceManagerStub(channel)
            return await stub.ListActiveSessions(
                request, metadata=await self.tokens.metadata(), timeout=deadline
            )

        found = await self.service_pool.call(call, refresh_token=self.tokens.invalidate)
        return [_wire.active_service(session) for session in found.sessions]

    async def watch_account(self) -> AsyncGenerator[AccountEvent, None]:
        """The account's live events, as they happen, until you stop iterating: one
        `AccountEvent` per usage update applied to any of its sessions and one when a
        session ends. The stream reopens itself after a failover (see client_sdk.watch)."""
        account = self.account_id or await self.login()
        currency = (await self.balance()).currency

        async def available() -> int:
            return (await self.balance()).available_micros

        reads = AccountReads(self.active_services, available)
        async for event in account_events(self.service_pool, self.tokens, account, currency, reads):
            yield event

    # -- component updates (client_sdk.updates) --------------------------------------------

    def component_updates(self, updates: UpdateConfig) -> ComponentUpdates:
        """The update check and verified download for `updates`, over this client's
        service managers (failover and token refresh as for every call)."""

        async def run(operation: Callable[[grpc.aio.Channel], Awaitable[T]]) -> T:
            async def call(channel: grpc.aio.Channel, _deadline: float) -> T:
                return await operation(channel)

            return await self.service_pool.call(call, refresh_token=self.tokens.invalidate)

        return ComponentUpdates(
            updates, run, self.tokens.metadata, self.config.failover.call_timeout
        )

    def _updates(self, updates: UpdateConfig | None) -> UpdateConfig:
        chosen = updates or self.config.updates
        if chosen is None:
            raise ValueError("no UpdateConfig: pass one or set ClientConfig.updates")
        return chosen

    async def check_for_update(self, updates: UpdateConfig | None = None) -> UpdateAvailable | None:
        """A newer published component than `updates.current_version` (default: the
        config's), or None."""
        return await self.component_updates(self._updates(updates)).check()

    async def download_update(
        self, updates: UpdateConfig, update: UpdateAvailable, destination: Path | None = None
    ) -> VerifiedPackage:
        """Download `update` and verify its SHA-256 and signature against the pinned key;
        never installs anything. Raises PackageTampered, SignatureInvalid or
        UntrustedSigningKey for a package that cannot be trusted."""
        return await self.component_updates(updates).download(update, destination)
