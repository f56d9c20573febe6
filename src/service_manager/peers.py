"""The service manager's calls to the billing manager and the rating service (the Funds
and Rates ports), with our own service token and the shared retry policy. Wire types stop
here: the use cases get AccountSnapshot and SessionRate. The peers' errors come back as
domain errors with the peer's code and sentence."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import TypeVar

import grpc

from meterline.billing.v1 import billing_pb2, billing_pb2_grpc
from meterline.kernel import errors
from meterline.kernel.grpc_errors import error_reason
from meterline.kernel.grpc_server import CHANNEL_OPTIONS, bearer, client_channel
from meterline.kernel.media import ServiceType
from meterline.kernel.peer_targets import balanced_options, peer_target
from meterline.kernel.principals import Principal, PrincipalKind
from meterline.kernel.retry import call_with_retry
from meterline.kernel.tokens import IssuedToken, TokenSigner
from meterline.kernel.wire import service_type_to_wire, timestamp
from meterline.rating.v1 import rating_pb2, rating_pb2_grpc
from service_manager.domain.accounts import AccountSnapshot
from service_manager.domain.holds import HoldState, HoldStatus
from service_manager.domain.records import UsageSummary
from service_manager.domain.sessions import SessionRate
from service_manager.rates import session_rate_from_wire

T = TypeVar("T")

# The names whose health the peers' servers report (kernel/health.py) and that our
# channels watch.
BILLING_SERVICE = billing_pb2.DESCRIPTOR.services_by_name["BillingManager"].full_name
RATING_SERVICE = rating_pb2.DESCRIPTOR.services_by_name["RatingService"].full_name

_ERRORS: dict[grpc.StatusCode, type[errors.MeterlineError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: errors.InvalidArgument,
    grpc.StatusCode.NOT_FOUND: errors.NotFound,
    grpc.StatusCode.FAILED_PRECONDITION: errors.FailedPrecondition,
    grpc.StatusCode.ALREADY_EXISTS: errors.AlreadyExists,
    grpc.StatusCode.PERMISSION_DENIED: errors.PermissionDenied,
    grpc.StatusCode.UNAVAILABLE: errors.Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: errors.Unavailable,
    # An overloaded peer sheds or drops calls: that is "try again", not our bug.
    grpc.StatusCode.CANCELLED: errors.Unavailable,
    grpc.StatusCode.RESOURCE_EXHAUSTED: errors.Unavailable,
}


def _domain_error(error: grpc.aio.AioRpcError, peer: str) -> Exception:
    if error.code() is grpc.StatusCode.UNAUTHENTICATED:
        return errors.FailedPrecondition(
            f"The {peer} refused the service manager's own token; every service of an "
            "installation must share the same METERLINE_TOKEN_SECRET.",
            reason="PEER_REFUSED_TOKEN",
        )
    kind = _ERRORS.get(error.code())
    if kind is None:
        return error
    reason = error_reason(error) or None
    if kind is errors.FailedPrecondition and reason == "INSUFFICIENT_FUNDS":
        kind = errors.InsufficientFunds
    if kind is errors.Unavailable:
        return errors.Unavailable(f"The {peer} cannot be reached; try again shortly.")
    return kind(error.details() or f"The {peer} refused the call.", reason=reason)


_HOLD_STATUSES = {
    billing_pb2.HOLD_STATUS_OPEN: HoldStatus.OPEN,
    billing_pb2.HOLD_STATUS_CAPTURED: HoldStatus.CAPTURED,
    billing_pb2.HOLD_STATUS_RELEASED: HoldStatus.RELEASED,
}


def usage_to_wire(usage: UsageSummary) -> billing_pb2.UsageSummary:
    return billing_pb2.UsageSummary(
        session_id=usage.session_id,
        service_type=usage.service_type.value,
        endpoint=usage.endpoint,
        application_id=usage.application_id,
        units=usage.units,
        unit=usage.unit.value,
        start_time=timestamp(usage.started_at),
        end_time=timestamp(usage.ended_at),
        charged_micros=usage.charged_micros,
    )


class ServiceToken:
    """A token for our own calls, minted with the shared key and renewed before expiry."""

    def __init__(self, signer: TokenSigner) -> None:
        self._signer = signer
        self._issued: IssuedToken | None = None

    def metadata(self) -> tuple[tuple[str, str], ...]:
        now = datetime.now(UTC)
        if self._issued is None or self._issued.expires_at - now < timedelta(minutes=2):
            principal = Principal(kind=PrincipalKind.SERVICE, subject="service-manager")
            self._issued = self._signer.issue(principal, ttl=timedelta(minutes=10))
        return bearer(self._issued.token)


class Peers:
    def __init__(
        self,
        billing_address: str,
        rating_address: str,
        token: ServiceToken,
        credentials: grpc.ChannelCredentials | None,
        health_checks: str = "auto",
    ) -> None:
        """`credentials`: from `tls.channel_credentials` (None: plaintext). Each address may
        name several instances (`kernel/peer_targets.py`): calls are spread over them, and
        with `health_checks` (METERLINE_PEER_HEALTH_CHECKS) only over those SERVING."""
        self._billing_channel = client_channel(
            peer_target(billing_address, "METERLINE_BILLING_PEERS"),
            credentials,
            balanced_options(CHANNEL_OPTIONS, billing_address, BILLING_SERVICE, health_checks),
        )
        self._rating_channel = client_channel(
            peer_target(rating_address, "METERLINE_RATING_PEERS"),
            credentials,
            balanced_options(CHANNEL_OPTIONS, rating_address, RATING_SERVICE, health_checks),
        )
        self._billing = billing_pb2_grpc.BillingManagerStub(self._billing_channel)
        self._rating = rating_pb2_grpc.RatingServiceStub(self._rating_channel)
        self._token = token

    async def close(self) -> None:
        await self._billing_channel.close(None)
        await self._rating_channel.close(None)

    async def _call(self, peer: str, call: Callable[[], Awaitable[T]]) -> T:
        try:
            return await call_with_retry(call)
        except grpc.aio.AioRpcError as error:
            raise _domain_error(error, peer) from error

    async def account(self, account_id: str) -> AccountSnapshot:
        request = billing_pb2.GetAccountRequest(account_id=account_id)
        account = await self._call(
            "billing manager",
            lambda: self._billing.GetAccount(request, metadata=self._token.metadata(), timeout=5),
        )
        return AccountSnapshot(
            account_id=account.account_id,
            currency=account.currency,
            active=account.status == billing_pb2.ACCOUNT_STATUS_ACTIVE,
            available_micros=account.available_micros,
            credit_limit_micros=account.credit_limit_micros,
        )

    async def reserve(self, account_id: str, amount: int, key: str, reference: str) -> str:
        request = billing_pb2.ReserveRequest(
            account_id=account_id, amount_micros=amount, idempotency_key=key, reference=reference
        )
        hold = await self._call(
            "billing manager",
            lambda: self._billing.Reserve(request, metadata=self._token.metadata(), timeout=5),
        )
        return str(hold.hold_id)

    async def capture(
        self, hold_id: str, amount: int, key: str, usage: UsageSummary | None = None
    ) -> None:
        request = billing_pb2.CaptureRequest(
            hold_id=hold_id,
            amount_micros=amount,
            idempotency_key=key,
            usage=usage_to_wire(usage) if usage is not None else None,
        )
        await self._call(
            "billing manager",
            lambda: self._billing.Capture(request, metadata=self._token.metadata(), timeout=5),
        )

    async def release(self, hold_id: str, key: str) -> None:
        request = billing_pb2.ReleaseRequest(hold_id=hold_id, idempotency_key=key)
        await self._call(
            "billing manager",
            lambda: self._billing.Release(request, metadata=self._token.metadata(), timeout=5),
        )

    async def hold(self, hold_id: str) -> HoldState:
        request = billing_pb2.GetHoldRequest(hold_id=hold_id)
        hold = await self._call(
            "billing manager",
            lambda: self._billing.GetHold(request, metadata=self._token.metadata(), timeout=5),
        )
        return HoldState(
            hold_id=hold.hold_id,
            # A status this side does not know reads as still open: settlement waits.
            status=_HOLD_STATUSES.get(hold.status, HoldStatus.OPEN),
            amount_micros=hold.amount_micros,
            captured_micros=hold.captured_micros,
            released_micros=hold.released_micros,
        )

    async def rate(self, service_type: ServiceType, endpoint: str, account_id: str) -> SessionRate:
        request = rating_pb2.GetRateRequest(
            service_type=service_type_to_wire(service_type),
            endpoint=endpoint,
            account_id=account_id,
        )
        rate = await self._call(
            "rating service",
            lambda: self._rating.GetRate(request, metadata=self._token.metadata(), timeout=5),
        )
        return session_rate_from_wire(rate)
