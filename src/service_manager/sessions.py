"""The session service: start, meter, stop, settle and expire metered services. It
coordinates the service database, presence, the billing manager and the rating service;
the rules themselves live in domain/sessions.py."""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from meterline.billing.v1 import billing_pb2
from meterline.kernel.config import QuotaPolicy
from meterline.kernel.db import single_statement_engine
from meterline.kernel.errors import (
    AlreadyExists,
    FailedPrecondition,
    InsufficientFunds,
    InvalidArgument,
    NotFound,
    PermissionDenied,
)
from meterline.kernel.media import MAX_ENDPOINT_LENGTH, ServiceType, Unit, validate_endpoint
from meterline.kernel.principals import Principal, PrincipalKind
from meterline.kernel.tokens import TokenSigner
from service_manager.domain import sessions as rules
from service_manager.domain.sessions import (
    Session,
    SessionStatus,
    TerminationReason,
    UpdateKind,
)
from service_manager.peers import Peers
from service_manager.storage.presence import ActiveUser, Presence
from service_manager.storage.session_store import SessionStore

log = logging.getLogger(__name__)

MAX_REQUEST_ID_LENGTH = 200


@dataclass(frozen=True, slots=True)
class Termination:
    reason: TerminationReason
    message: str
    final_unit_indication: bool
    ended: bool


@dataclass(frozen=True, slots=True)
class Started:
    session: Session
    gateway_address: str
    gateway_ticket: str
    available_micros: int
    quota_valid_until: datetime


@dataclass(frozen=True, slots=True)
class Metered:
    session: Session
    available_micros: int
    """What the account would have left if the session ended now."""
    termination: Termination | None
    seconds_left: int | None


def _scope(principal: Principal) -> tuple[str, str]:
    """(account_id, gateway_id) a usage update of this caller must match; empty = any."""
    if principal.is_trusted:
        return "", ""
    if principal.kind is PrincipalKind.DEVICE:
        return principal.account_id or "-", ""
    if principal.kind is PrincipalKind.GATEWAY:
        return "", principal.gateway_id or "-"
    return "-", "-"


def _first_hold_key(session: Session) -> str:
    return f"{session.session_id}:hold:1"


def _reason_for(principal: Principal) -> TerminationReason:
    if principal.kind is PrincipalKind.GATEWAY:
        return TerminationReason.GATEWAY
    if principal.kind is PrincipalKind.OPERATOR:
        return TerminationReason.OPERATOR
    return TerminationReason.CLIENT_STOP


class SessionService:
    def __init__(
        self,
        engine: AsyncEngine,
        peers: Peers,
        presence: Presence,
        quota: QuotaPolicy,
        signer: TokenSigner,
    ) -> None:
        self._engine = engine
        self._peers = peers
        self.presence = presence
        self._quota = quota
        self._signer = signer
        self._store = SessionStore()
        self.validity = timedelta(seconds=quota.validity_seconds)
        # Usage is cumulative, so an update lost in a crash is repaired by the next one:
        # the one-statement usage update need not wait for the WAL flush.
        self._usage = single_statement_engine(engine, synchronous_commit=False)

    async def close(self) -> None:
        await self._usage.dispose()

    def slice_units(self, unit: Unit) -> int:
        return {
            Unit.SECOND: self._quota.slice_seconds,
            Unit.BYTE: self._quota.slice_bytes,
            Unit.MESSAGE: self._quota.slice_messages,
            Unit.EVENT: self._quota.slice_events,
        }[unit]

    # -- start ---------------------------------------------------------------------------

    async def start(
        self,
        principal: Principal,
        account_id: str,
        service_type: ServiceType,
        endpoint: str,
        application_id: str,
        request_id: str,
    ) -> Started:
        principal.require_account(account_id)
        if service_type is ServiceType.APPLICATION and not endpoint:
            endpoint = application_id
        validate_endpoint(endpoint)
        if len(application_id) > MAX_ENDPOINT_LENGTH:
            raise InvalidArgument(
                f"application_id is longer than {MAX_ENDPOINT_LENGTH} characters."
            )
        if len(request_id) > MAX_REQUEST_ID_LENGTH:
            raise InvalidArgument(f"request_id is longer than {MAX_REQUEST_ID_LENGTH} characters.")
        if request_id:
            async with self._engine.connect() as conn:
                existing = await self._store.by_request_id(conn, request_id)
            if existing is not None:
                return await self._repeat_start(principal, existing, account_id, endpoint)

        account = await self._peers.account(account_id)
        if account.status != billing_pb2.ACCOUNT_STATUS_ACTIVE:
            raise FailedPrecondition(
                f"Account {account_id} is suspended; it cannot start services.",
                reason="ACCOUNT_SUSPENDED",
            )
        rate = await self._peers.rate(service_type, endpoint, account_id)
        if rate.currency != account.currency:
            raise FailedPrecondition(
                f"The tariff for {endpoint} is in {rate.currency} but the account is in "
                f"{account.currency}; no rate applies to this account.",
                reason="CURRENCY_MISMATCH",
            )
        async with self._engine.connect() as conn:
            gateway = await self._store.choose_gateway(conn, service_type)
        if gateway is None:
            raise FailedPrecondition(
                f"No gateway carries {service_type} services right now; try again later.",
                reason="NO_GATEWAY",
            )
        gateway_id, gateway_address = gateway
        budget = account.available_micros + account.credit_limit_micros
        now = datetime.now(UTC)
        grant = rules.next_grant(
            rate, 0, 0, self.slice_units(rate.unit), budget, int(now.timestamp())
        )
        if grant is None:
            raise InsufficientFunds(
                "Insufficient funds: the balance cannot pay for the first unit of this service. "
                "Fund the account and try again."
            )
        session = Session(
            session_id=f"ses_{uuid.uuid4().hex}",
            account_id=account_id,
            service_type=service_type,
            endpoint=endpoint,
            application_id=application_id,
            gateway_id=gateway_id,
            rate=rate,
            status=SessionStatus.ACTIVE,
            started_at=now,
            last_update_at=now,
            last_sequence=0,
            used_units=0,
            granted_units=0,
            held_micros=0,
        )
        # The session is written before its first hold, with the hold's amount pending: if
        # this process dies between the two, settlement finds the hold by its key and
        # releases it. A hold refused outright leaves no session behind.
        session = replace(session, pending_hold_micros=grant.amount_micros)
        async with self._engine.begin() as conn:
            await self._store.insert(conn, session, request_id or None)
        hold_id = ""
        if grant.amount_micros:
            try:
                hold_id = await self._peers.reserve(
                    account_id, grant.amount_micros, _first_hold_key(session), session.session_id
                )
            except (InsufficientFunds, FailedPrecondition, InvalidArgument, NotFound):
                async with self._engine.begin() as conn:
                    await self._store.delete_unstarted(conn, session.session_id)
                raise
        async with self._engine.begin() as conn:
            await self._record_grant(conn, session, 1, hold_id, grant)
        session = replace(session, pending_hold_micros=0)
        session = replace(
            session, granted_units=grant.granted_units, held_micros=grant.amount_micros
        )
        await self.presence.add(session)
        log.info(
            "session %s started for account %s (%s to %s)",
            session.session_id,
            account_id,
            service_type,
            endpoint,
        )
        return Started(
            session=session,
            gateway_address=gateway_address,
            gateway_ticket=self._ticket(session),
            available_micros=account.available_micros - grant.amount_micros,
            quota_valid_until=session.quota_valid_until(self.validity),
        )

    def _ticket(self, session: Session) -> str:
        return self._signer.issue_session_ticket(
            session.session_id, session.gateway_id, ttl=timedelta(hours=24)
        )

    async def _repeat_start(
        self, principal: Principal, session: Session, account_id: str, endpoint: str
    ) -> Started:
        """A retried StartService: the session the first call started."""
        principal.require_session(session.account_id, session.gateway_id)
        if session.account_id != account_id or session.endpoint != endpoint:
            raise AlreadyExists(
                "This request_id already started a different service; use a new request_id."
            )
        account = await self._peers.account(account_id)
        async with self._engine.connect() as conn:
            address = await self._store.gateway_address(conn, session.gateway_id)
        return Started(
            session=session,
            gateway_address=address,
            gateway_ticket=self._ticket(session),
            available_micros=account.available_micros,
            quota_valid_until=session.quota_valid_until(self.validity),
        )

    async def _record_grant(
        self, conn: AsyncConnection, session: Session, number: int, hold_id: str, grant: rules.Grant
    ) -> None:
        await self._store.full_durability(conn)
        if hold_id:
            await self._store.add_hold(
                conn, session.session_id, number, hold_id, grant.amount_micros, grant.granted_units
            )
        else:
            await self._store.extend_grant(conn, session.session_id, grant.granted_units)

    # -- meter ---------------------------------------------------------------------------

    async def _locked(
        self, conn: AsyncConnection, principal: Principal, session_id: str
    ) -> Session:
        session = await self._store.get(conn, session_id, lock=True)
        if session is None:
            raise NotFound(f"There is no session {session_id!r}.", reason="SESSION_NOT_FOUND")
        principal.require_session(session.account_id, session.gateway_id)
        return session

    async def _extend_grant(self, conn: AsyncConnection, session: Session, used: int) -> Session:
        """Reserve the next slice if the usage is near the grant; returns the session as it
        stands after. Leaves the grant as it was when the balance cannot fund more."""
        slice_units = self.slice_units(session.rate.unit)
        if not rules.needs_next_slice(session, used, slice_units):
            return session
        account = await self._peers.account(session.account_id)
        budget = account.available_micros + account.credit_limit_micros
        grant = rules.next_grant(
            session.rate,
            session.granted_units,
            used,
            slice_units,
            budget,
            session.start_epoch,
        )
        if grant is None:
            return session
        number = await self._store.hold_count(conn, session.session_id) + 1
        hold_id = ""
        if grant.amount_micros:
            try:
                hold_id = await self._peers.reserve(
                    session.account_id,
                    grant.amount_micros,
                    f"{session.session_id}:hold:{number}",
                    session.session_id,
                )
            except (InsufficientFunds, AlreadyExists) as error:
                # Another session took the funds meanwhile, or a retried slice asked for a
                # different amount: keep the grant; the next update tries again.
                log.info("session %s: next slice not granted: %s", session.session_id, error)
                return session
        await self._record_grant(conn, session, number, hold_id, grant)
        return replace(
            session,
            granted_units=grant.granted_units,
            held_micros=session.held_micros + grant.amount_micros,
        )

    async def meter(
        self, principal: Principal, session_id: str, sequence: int, used_units: int
    ) -> Metered:
        """Apply one Resource Utilization Update: in one statement when it is the usual
        next update of a session with quota to spare, else under the row lock."""
        if sequence >= 1 and 0 <= used_units <= rules.MAX_UNITS:
            scope = _scope(principal)
            async with self._usage.connect() as conn:
                session = await self._store.apply_usage(
                    conn, session_id, sequence, used_units, datetime.now(UTC), *scope
                )
            if session is not None:
                slice_units = self.slice_units(session.rate.unit)
                if rules.needs_next_slice(session, used_units, slice_units):
                    session = await self._grant_more(session_id)
                return await self._metered(session)
        return await self._meter_locked(principal, session_id, sequence, used_units)

    async def _grant_more(self, session_id: str) -> Session:
        """Reserve the next slice for a session whose usage nears its grant; end it when
        the balance cannot fund one and the grant is used up."""
        trusted = Principal(kind=PrincipalKind.SERVICE, subject="quota")
        exhausted = False
        async with self._engine.begin() as conn:
            session = await self._locked(conn, trusted, session_id)
            if session.status is SessionStatus.ACTIVE:
                session = await self._extend_grant(conn, session, session.used_units)
                exhausted = session.used_units >= session.granted_units
        if exhausted:
            session = await self._cut_off(session_id)
        return session

    async def _cut_off(self, session_id: str) -> Session:
        """End a session whose grant is used up and cannot be extended."""
        await self.settle(session_id, None, TerminationReason.BALANCE_EXHAUSTED)
        async with self._engine.connect() as conn:
            settled = await self._store.get(conn, session_id)
        assert settled is not None
        return settled

    async def _meter_locked(
        self, principal: Principal, session_id: str, sequence: int, used_units: int
    ) -> Metered:
        """The careful path: classify the update (repeat, out of order, backwards, foreign,
        ended) under the session's row lock."""
        exhausted = False
        async with self._engine.begin() as conn:
            # Usage is cumulative, so an update lost in a crash is repaired by the next
            # one: it need not wait for the WAL flush. A new quota slice turns this back on.
            await self._store.relax_durability(conn)
            session = await self._locked(conn, principal, session_id)
            if (
                session.status is SessionStatus.ACTIVE
                and rules.classify_update(session, sequence, used_units) is UpdateKind.APPLY
            ):
                session = await self._store.save_usage(
                    conn, session_id, sequence, used_units, datetime.now(UTC)
                )
                session = await self._extend_grant(conn, session, session.used_units)
                exhausted = session.used_units >= session.granted_units
        if exhausted:
            session = await self._cut_off(session_id)
        return await self._metered(session)

    async def _metered(self, session: Session) -> Metered:
        session_id = session.session_id
        termination = None
        if session.status is not SessionStatus.ACTIVE:
            account = await self._peers.account(session.account_id)  # after settlement
            reason = session.termination_reason or TerminationReason.CLIENT_STOP
            termination = Termination(reason, rules.TERMINATION_MESSAGES[reason], False, True)
            available = account.available_micros
        else:
            account = await self._peers.account_for_display(session.account_id)
            available = account.available_micros + session.held_micros - session.charged_micros
            slice_units = self.slice_units(session.rate.unit)
            if rules.needs_next_slice(session, session.used_units, slice_units):
                budget = account.available_micros + account.credit_limit_micros
                if (
                    rules.next_grant(
                        session.rate,
                        session.granted_units,
                        session.used_units,
                        slice_units,
                        budget,
                        session.start_epoch,
                    )
                    is None
                ):
                    reason = TerminationReason.BALANCE_EXHAUSTED
                    termination = Termination(
                        reason,
                        "These are the last units the balance pays for; fund the account to go on.",
                        final_unit_indication=True,
                        ended=False,
                    )
        await self.presence.record_usage(
            session,
            {
                "account_id": session.account_id,
                "session_id": session_id,
                "balance_micros": available,
                "charged_micros": session.charged_micros,
                "used_units": session.used_units,
                "ended": bool(termination and termination.ended),
                "reason": termination.reason.value if termination else "",
            },
        )
        return Metered(
            session=session,
            available_micros=available,
            termination=termination,
            seconds_left=rules.estimated_seconds_left(session, account.available_micros),
        )

    # -- stop and settle -------------------------------------------------------------------

    async def stop(self, principal: Principal, session_id: str, used_units: int) -> dict[str, Any]:
        async with self._engine.connect() as conn:
            session = await self._store.get(conn, session_id)
        if session is None:
            raise NotFound(f"There is no session {session_id!r}.", reason="SESSION_NOT_FOUND")
        principal.require_session(session.account_id, session.gateway_id)
        # A device's or a gateway's final count may not be below its own last report; an
        # operator's is a floor only (0 settles what was reported).
        floor = {
            PrincipalKind.DEVICE: session.client_used_units,
            PrincipalKind.GATEWAY: session.gateway_used_units,
        }.get(principal.kind, 0)
        return await self.settle(session_id, used_units, _reason_for(principal), floor)

    async def settle(
        self,
        session_id: str,
        final_used: int | None,
        reason: TerminationReason,
        reported_floor: int = 0,
    ) -> dict[str, Any]:
        """End a session: capture exactly the charge of its final usage from its holds,
        release the rest, write the service record, remove presence. Safe to repeat: every
        movement is keyed by the session, and the final usage is fixed before any."""
        trusted = Principal(kind=PrincipalKind.SERVICE, subject="settlement")
        async with self._engine.begin() as conn:
            session = await self._locked(conn, trusted, session_id)
            if session.status is SessionStatus.ENDED:
                record = await self._store.record(conn, session_id)
                assert record is not None
                return record
            if session.pending_hold_micros:
                await self._resolve_pending_hold(conn, session)
            if session.status is SessionStatus.ACTIVE:
                if final_used is not None:
                    rules.validate_used_units(final_used)
                    rules.ensure_not_backwards(reported_floor, final_used)
                used = max(session.used_units, final_used or 0)
                if used > session.granted_units:
                    session = await self._extend_grant(
                        conn, replace(session, used_units=used), used
                    )
                await self._store.begin_settling(conn, session_id, used, reason, datetime.now(UTC))
        async with self._engine.connect() as conn:
            settling = await self._store.get(conn, session_id)
            assert settling is not None
            session = settling
            holds = await self._store.holds(conn, session_id)
        for hold_id, take in rules.split_capture(session.charged_micros, holds):
            if take:
                await self._peers.capture(hold_id, take, f"{session_id}:settle:{hold_id}")
            else:
                await self._peers.release(hold_id, f"{session_id}:settle:{hold_id}")
        ended_at = datetime.now(UTC)
        async with self._engine.begin() as conn:
            session = await self._locked(conn, trusted, session_id)
            if session.status is not SessionStatus.ENDED:
                await self._store.finish(conn, session, ended_at)
            record = await self._store.record(conn, session_id)
            assert record is not None
        await self.presence.remove(session_id)
        final_reason = session.termination_reason or reason
        event = {
            "session_id": session_id,
            "gateway_id": session.gateway_id,
            "reason": final_reason.value,
            "message": rules.TERMINATION_MESSAGES[final_reason],
        }
        await self.presence.publish(self.presence.gateway_channel(session.gateway_id), event)
        await self.presence.publish(
            self.presence.account_channel(session.account_id),
            {
                "account_id": session.account_id,
                "session_id": session_id,
                "balance_micros": (await self._peers.account(session.account_id)).available_micros,
                "charged_micros": record["charged_micros"],
                "used_units": record["used_units"],
                "ended": True,
                "reason": final_reason.value,
            },
        )
        log.info(
            "session %s ended (%s): %d units, %d micros",
            session_id,
            final_reason,
            record["used_units"],
            record["charged_micros"],
        )
        return record

    async def _resolve_pending_hold(self, conn: AsyncConnection, session: Session) -> None:
        """A start that died between writing the session and recording its first hold:
        repeat the reservation with its key (which returns the hold if it was made) and
        record it, so settlement releases it; the client never got a grant, so nothing is
        charged."""
        try:
            hold_id = await self._peers.reserve(
                session.account_id,
                session.pending_hold_micros,
                _first_hold_key(session),
                session.session_id,
            )
        except InsufficientFunds:
            await self._store.forget_pending_hold(conn, session.session_id)
            return
        await self._store.add_hold(
            conn, session.session_id, 1, hold_id, session.pending_hold_micros, 0
        )

    async def expire_idle(self) -> int:
        """Terminate sessions that sent no update within the validity (liveness timeout),
        and finish settlements a crash interrupted."""
        before = datetime.now(UTC) - self.validity
        async with self._engine.begin() as conn:
            idle = await self._store.claim_idle(conn, before, limit=50)
        for session_id in idle:
            try:
                await self.settle(session_id, None, TerminationReason.LIVENESS_TIMEOUT)
            except Exception:
                log.exception("session %s: settlement after liveness timeout failed", session_id)
        return len(idle)

    # -- reads -----------------------------------------------------------------------------

    async def active(self, principal: Principal, account_id: str) -> list[ActiveUser]:
        if principal.kind is PrincipalKind.DEVICE:
            if account_id and account_id != principal.account_id:
                raise PermissionDenied("A device may list only its own account's sessions.")
            account_id = principal.account_id
        users = await self.presence.active(account_id)
        if principal.kind is PrincipalKind.GATEWAY:
            users = [user for user in users if user.gateway_id == principal.gateway_id]
        return users

    async def gateway_usage(
        self, principal: Principal, session_id: str, used_units: int, ended: bool
    ) -> tuple[int, dict[str, Any] | None]:
        """Authoritative usage from the session's gateway."""
        principal.require_kind(
            PrincipalKind.GATEWAY, PrincipalKind.OPERATOR, action="report gateway usage"
        )
        if ended:
            async with self._engine.connect() as conn:
                session = await self._store.get(conn, session_id)
            if session is None:
                raise NotFound(f"There is no session {session_id!r}.", reason="SESSION_NOT_FOUND")
            principal.require_session(session.account_id, session.gateway_id)
            record = await self.settle(
                session_id, used_units, TerminationReason.GATEWAY, session.gateway_used_units
            )
            return int(record["charged_micros"]), record
        async with self._engine.begin() as conn:
            session = await self._locked(conn, principal, session_id)
            if session.status is SessionStatus.ACTIVE:
                rules.validate_used_units(used_units)
                rules.ensure_not_backwards(session.gateway_used_units, used_units)
                session = await self._store.save_usage(
                    conn,
                    session_id,
                    session.last_sequence,
                    used_units,
                    datetime.now(UTC),
                    from_gateway=True,
                )
                session = await self._extend_grant(conn, session, session.used_units)
        return session.charged_micros, None
