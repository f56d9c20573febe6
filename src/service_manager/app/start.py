"""StartService: validate, find the account (named, or by the subscriber's identity for a
gateway), check it and rate it (at once), choose a gateway (or, for a start by a gateway,
run through that gateway), write the session with its first hold as pending, reserve the
hold, answer with a session ticket the gateway verifies offline. The hold is recorded and
presence written right after, off the answer's path; a start that cannot finish once its
hold may exist gives the hold back at once."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from meterline.kernel import metrics
from meterline.kernel.errors import (
    AlreadyExists,
    FailedPrecondition,
    InsufficientFunds,
    InvalidArgument,
    MeterlineError,
    NotFound,
    PermissionDenied,
)
from meterline.kernel.media import MAX_ENDPOINT_LENGTH, ServiceType, validate_endpoint
from meterline.kernel.principals import Principal, PrincipalKind
from meterline.kernel.tickets import TicketSigner
from service_manager.app.gateways import GatewayChooser
from service_manager.app.identities import IdentityAdmin
from service_manager.app.ports import Fence, Funds, Presence, Rates, SessionStore
from service_manager.app.quota import Quota, hold_key
from service_manager.domain import gateways as gateway_rules
from service_manager.domain.gateways import Gateway
from service_manager.domain.identities import IdentityKind
from service_manager.domain.sessions import Session, SessionStatus

log = logging.getLogger(__name__)

MAX_REQUEST_ID_LENGTH = 200
REPEAT_WAIT_SECONDS = 5.0
"""How long a repeated request_id waits for the first call's start to finish."""


@dataclass(frozen=True, slots=True)
class StartRequest:
    account_id: str
    service_type: ServiceType
    endpoint: str
    application_id: str = ""
    request_id: str = ""
    region: str = ""
    identity: tuple[IdentityKind, str] | None = None
    """The subscriber by identity (kind, value), instead of or as well as account_id."""


@dataclass(frozen=True, slots=True)
class Started:
    session: Session
    gateway_address: str
    gateway_ticket: str
    available_micros: int
    quota_valid_until: datetime


class StartSession:
    def __init__(
        self,
        store: SessionStore,
        funds: Funds,
        rates: Rates,
        quota: Quota,
        gateways: GatewayChooser,
        presence: Presence,
        tickets: TicketSigner,
        owner_id: str,
        validity: timedelta,
        abandon: Callable[[str], Coroutine[Any, Any, None]],
        identities: IdentityAdmin | None = None,
    ) -> None:
        self._store = store
        self._funds = funds
        self._rates = rates
        self._quota = quota
        self._gateways = gateways
        self._presence = presence
        self._tickets = tickets
        self._identities = identities
        self._owner_id = owner_id
        self._validity = validity
        self._abandon = abandon
        self._in_flight: dict[str, asyncio.Future[Started]] = {}
        self._background: set[asyncio.Task[None]] = set()

    async def __call__(self, principal: Principal, request: StartRequest) -> Started:
        request = _validated(request)
        request, through = await self._subscriber(principal, request)
        if not request.request_id:
            return await self._start(request, through)
        first = self._in_flight.get(request.request_id)
        if first is not None:
            # The same request is being started here: its answer is this one's too.
            started = await asyncio.shield(first)
            return await self._repeat(principal, started.session, request)
        existing = await self._store.by_request_id(request.request_id)
        if existing is not None:
            return await self._repeat(principal, existing, request)
        first = self._in_flight.get(request.request_id)
        if first is not None:  # started here while this call read the database
            started = await asyncio.shield(first)
            return await self._repeat(principal, started.session, request)
        future: asyncio.Future[Started] = asyncio.get_running_loop().create_future()
        self._in_flight[request.request_id] = future
        try:
            started = await self._start(request, through)
        except BaseException as error:
            future.set_exception(error)
            future.exception()  # retrieved: waiters get it through shield
            raise
        else:
            future.set_result(started)
            return started
        finally:
            del self._in_flight[request.request_id]

    async def _subscriber(
        self, principal: Principal, request: StartRequest
    ) -> tuple[StartRequest, str | None]:
        """The account to charge, and the gateway the session must run through (a
        gateway's start by identity runs through that gateway only)."""
        if request.identity is not None:
            if principal.kind is PrincipalKind.DEVICE:
                # Nor may it learn, by trying, which numbers other accounts have.
                raise PermissionDenied("A device starts sessions by its own account id.")
            if self._identities is None:
                raise FailedPrecondition("Subscriber identities are not kept here.")
            account_id = await self._identities.account_of(*request.identity)
            if request.account_id and request.account_id != account_id:
                raise InvalidArgument(
                    "account_id and identity name different accounts; give one of them."
                )
            request = replace(request, account_id=account_id)
        if principal.kind is PrincipalKind.GATEWAY:
            if request.identity is None:
                raise PermissionDenied(
                    "A gateway starts a session for the subscriber it names by identity "
                    "(StartServiceRequest.identity), not by account id."
                )
            return request, principal.gateway_id
        if not request.account_id:
            raise InvalidArgument("account_id (or identity) is missing.")
        principal.require_account(request.account_id)
        return request, None

    async def _gateway(self, request: StartRequest, through: str | None) -> Gateway:
        if through is None:
            return await self._gateways.choose(request.service_type, request.region)
        gateway = gateway_rules.route_through(
            await self._gateways.gateway(through), through, request.service_type, request.region
        )
        self._gateways.counted(gateway.gateway_id)
        return gateway

    async def _start(self, request: StartRequest, through: str | None = None) -> Started:
        account, rate = await asyncio.gather(
            self._funds.account(request.account_id),
            self._rates.rate(request.service_type, request.endpoint, request.account_id),
        )
        if not account.active:
            raise FailedPrecondition(
                f"Account {request.account_id} is suspended; it cannot start services.",
                reason="ACCOUNT_SUSPENDED",
            )
        if rate.currency != account.currency:
            raise FailedPrecondition(
                f"The tariff for {request.endpoint} is in {rate.currency} but the account is "
                f"in {account.currency}; no rate applies to this account.",
                reason="CURRENCY_MISMATCH",
            )
        gateway = await self._gateway(request, through)
        now = datetime.now(UTC)
        session = Session(
            session_id=f"ses_{uuid.uuid4().hex}",
            account_id=request.account_id,
            service_type=request.service_type,
            endpoint=request.endpoint,
            application_id=request.application_id,
            gateway_id=gateway.gateway_id,
            rate=rate,
            status=SessionStatus.ACTIVE,
            started_at=now,
            last_update_at=now,
            last_sequence=0,
            used_units=0,
            granted_units=0,
            held_micros=0,
            owner_epoch=1,
            owner_id=self._owner_id,
        )
        grant = self._quota.first_grant(session, account.budget_micros)
        if grant is None:
            raise InsufficientFunds(
                "Insufficient funds: the balance cannot pay for the first unit of this service. "
                "Fund the account and try again."
            )
        # The session is written before its first hold, with the hold as pending: if this
        # process dies between the two, whoever settles it finds the hold by its key.
        session.pending_hold_number = 1
        session.pending_hold_micros = grant.amount_micros
        session.pending_granted_units = grant.granted_units
        if not await self._store.insert_new(session, request.request_id or None):
            existing = await self._store.by_request_id(request.request_id)
            if existing is None:
                raise AlreadyExists("This request_id is being used; try again.")
            return await self._settled_repeat(existing, request)
        hold_id = ""
        if grant.amount_micros:
            try:
                hold_id = await self._funds.reserve(
                    session.account_id,
                    grant.amount_micros,
                    hold_key(session.session_id, 1),
                    session.session_id,
                )
            except (InsufficientFunds, FailedPrecondition, InvalidArgument, NotFound):
                # Refused outright: no hold was made, so the session never started.
                await self._store.delete_unstarted(session.session_id)
                raise
            except BaseException:
                # The hold may or may not exist: give it back now (settlement finds it by
                # its key), not at the liveness timeout.
                self._abandon_later(session.session_id)
                raise
        self._spawn(self._finish(session, hold_id, grant.amount_micros, grant.granted_units))
        session.granted_units = grant.granted_units
        session.held_micros = grant.amount_micros
        self._presence.started(session)
        metrics.SESSIONS_STARTED.inc()
        log.info(
            "session %s started for account %s (%s to %s)",
            session.session_id,
            session.account_id,
            session.service_type,
            session.endpoint,
        )
        return Started(
            session=session,
            gateway_address=gateway.address,
            gateway_ticket=self._ticket(session),
            available_micros=account.after_hold(grant.amount_micros).available_micros,
            quota_valid_until=session.quota_valid_until(self._validity),
        )

    async def _finish(self, session: Session, hold_id: str, amount: int, granted: int) -> None:
        """After the answer: record the first hold."""
        try:
            stored = await self._store.record_hold(
                session.session_id, Fence(SessionStatus.ACTIVE, 1), 1, hold_id, amount, granted
            )
        except MeterlineError as error:
            # The hold stays pending in the session row; whoever takes the session over or
            # settles it records it from its key.
            log.warning("session %s: first hold not recorded yet: %s", session.session_id, error)
            return
        if stored is None:
            log.info(
                "session %s was taken over before its first hold was recorded", session.session_id
            )

    def _abandon_later(self, session_id: str) -> None:
        self._spawn(self._abandon(session_id))

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _settled_repeat(self, existing: Session, request: StartRequest) -> Started:
        """Another instance is starting the same request: wait until its first hold is
        recorded (or the start was refused and the session removed)."""
        deadline = asyncio.get_running_loop().time() + REPEAT_WAIT_SECONDS
        while existing.hold_count == 0 and existing.pending_hold_number:
            if asyncio.get_running_loop().time() > deadline:
                break
            await asyncio.sleep(0.02)
            found = await self._store.get(existing.session_id)
            if found is None:
                raise FailedPrecondition(
                    "The first attempt of this request was refused; start again with a new "
                    "request_id.",
                    reason="START_REFUSED",
                )
            existing = found
        return await self._answer_for(existing, request)

    async def _repeat(
        self, principal: Principal, session: Session, request: StartRequest
    ) -> Started:
        """A retried StartService: the session the first call started."""
        principal.require_session(session.account_id, session.gateway_id)
        return await self._answer_for(session, request)

    async def _answer_for(self, session: Session, request: StartRequest) -> Started:
        if session.account_id != request.account_id or session.endpoint != request.endpoint:
            raise AlreadyExists(
                "This request_id already started a different service; use a new request_id."
            )
        account = await self._funds.account(session.account_id)
        address = await self._gateways.address(session.gateway_id)
        granted = max(session.granted_units, session.pending_granted_units)
        shown = replace(session, granted_units=granted)
        return Started(
            session=shown,
            gateway_address=address,
            gateway_ticket=self._ticket(session),
            available_micros=account.available_micros,
            quota_valid_until=session.quota_valid_until(self._validity),
        )

    def _ticket(self, session: Session) -> str:
        return self._tickets.issue(
            session.session_id,
            session.gateway_id,
            session.service_type.value,
            session.endpoint,
        )

    async def close(self) -> None:
        if self._background:
            await asyncio.wait(list(self._background), timeout=5)


def _validated(request: StartRequest) -> StartRequest:
    endpoint = request.endpoint
    if request.service_type is ServiceType.APPLICATION and not endpoint:
        endpoint = request.application_id
    validate_endpoint(endpoint)
    if len(request.application_id) > MAX_ENDPOINT_LENGTH:
        raise InvalidArgument(f"application_id is longer than {MAX_ENDPOINT_LENGTH} characters.")
    if len(request.request_id) > MAX_REQUEST_ID_LENGTH:
        raise InvalidArgument(f"request_id is longer than {MAX_REQUEST_ID_LENGTH} characters.")
    if request.region:
        gateway_rules.validate_region(request.region)
    return request if endpoint == request.endpoint else replace(request, endpoint=endpoint)
