"""The one recovery policy of the SDK: for every failed call or stream, recover (try again,
on another server if this one failed), refresh the token and try once more, or terminate
(the server's own answer, raised to the caller as a typed error). Retries wait with
jittered exponential backoff (tenacity), bounded in attempts and time by `RetryConfig`.

    recover     UNAVAILABLE, DEADLINE_EXCEEDED, a connection that broke under a stream,
                an update not acknowledged within its deadline, CANCELLED by the server
    refresh     UNAUTHENTICATED with reason TOKEN_EXPIRED (once per operation)
    terminate   everything else: INTERNAL, UNKNOWN, INVALID_ARGUMENT,
                FAILED_PRECONDITION, NOT_FOUND, PERMISSION_DENIED, ...; CANCELLED by us

A server bug (INTERNAL) would answer the same on every server, so it is not retried; a
server that cannot be reached or does not answer in time is left for the next one.
Meterline's servers never answer CANCELLED themselves: a CANCELLED that this process did
not ask for is the server's gRPC core dropping the call (a backlog beyond its queue, or
calls still open when it shut down), which another attempt cures."""

from __future__ import annotations

import enum
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

import grpc
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
    stop_after_delay,
    wait_random_exponential,
)

from client_sdk.config import RetryConfig
from client_sdk.errors import MeterlineClientError, ServersUnavailable, error_reason, from_rpc_error

log = logging.getLogger(__name__)
T = TypeVar("T")

RECOVERABLE_CODES = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED}
)
LOCAL_CANCELLATION = "Locally cancelled by application!"
"""grpc.aio's details of a call this process cancelled: that one is not retried."""
TOKEN_EXPIRED = "TOKEN_EXPIRED"
SESSION_MOVED = "SESSION_MOVED"
"""The server let the session go to another instance: open the stream again (anywhere)."""


class Decision(enum.Enum):
    RECOVER = "recover"
    REFRESH_TOKEN = "refresh_token"
    TERMINATE = "terminate"


class TransportFailure(Exception):
    """A stream that failed without a status from the server: it ended without answering,
    or its update was not acknowledged within the deadline."""


class AckTimeout(TransportFailure):
    """A usage update was not acknowledged within `FailoverConfig.ack_timeout`."""


def decide(error: BaseException) -> Decision:
    """What to do about one failed attempt."""
    if isinstance(error, TransportFailure | TimeoutError):
        return Decision.RECOVER
    if isinstance(error, grpc.aio.AioRpcError):
        code = error.code()
        if code is grpc.StatusCode.CANCELLED and error.details() == LOCAL_CANCELLATION:
            return Decision.TERMINATE
        if code in RECOVERABLE_CODES:
            return Decision.RECOVER
        if code is grpc.StatusCode.UNAUTHENTICATED and error_reason(error) == TOKEN_EXPIRED:
            return Decision.REFRESH_TOKEN
    return Decision.TERMINATE


def blames_server(error: BaseException) -> bool:
    """Whether a recoverable failure counts against the server's circuit breaker: not when
    the server answered that the session moved (it is healthy; the stream opens again)."""
    if isinstance(error, grpc.aio.AioRpcError):
        return error_reason(error) != SESSION_MOVED
    return True


def describe(error: BaseException) -> str:
    if isinstance(error, grpc.aio.AioRpcError):
        return f"{error.code().name}: {error.details()}"
    if isinstance(error, TransportFailure):
        return str(error) or type(error).__name__
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


class _TryAgain(Exception):
    def __init__(self, cause: BaseException) -> None:
        super().__init__(describe(cause))
        self.cause = cause


def _log_retry(state: RetryCallState) -> None:
    outcome = state.outcome
    error = outcome.exception() if outcome is not None else None
    log.info(
        "attempt %d failed (%s); trying again",
        state.attempt_number,
        describe(error.cause if isinstance(error, _TryAgain) else error or Exception()),
    )


async def run(
    attempt: Callable[[], Awaitable[T]],
    config: RetryConfig,
    *,
    refresh_token: Callable[[], None] | None = None,
    unavailable: Callable[[BaseException], str] = describe,
) -> T:
    """Run `attempt` until it succeeds or the policy terminates. `refresh_token` forgets the
    cached token (an expired one is then refreshed by the next attempt), at most once.
    `unavailable` words the `ServersUnavailable` raised when the retries run out."""
    refreshed = False

    async def guarded() -> T:
        nonlocal refreshed
        try:
            return await attempt()
        except MeterlineClientError:
            raise
        except Exception as error:
            decision = decide(error)
            if decision is Decision.RECOVER:
                raise _TryAgain(error) from error
            if decision is Decision.REFRESH_TOKEN and refresh_token is not None and not refreshed:
                refreshed = True
                refresh_token()
                raise _TryAgain(error) from error
            if isinstance(error, grpc.aio.AioRpcError):
                raise from_rpc_error(error) from error
            raise

    try:
        async for try_ in AsyncRetrying(
            retry=retry_if_exception_type(_TryAgain),
            wait=wait_random_exponential(multiplier=config.initial_backoff, max=config.max_backoff),
            stop=stop_after_attempt(config.max_attempts) | stop_after_delay(config.max_elapsed),
            before_sleep=_log_retry,
            reraise=True,
        ):
            with try_:
                return await guarded()
    except _TryAgain as exhausted:
        cause = exhausted.cause
        if decide(cause) is Decision.REFRESH_TOKEN and isinstance(cause, grpc.aio.AioRpcError):
            raise from_rpc_error(cause) from cause
        raise ServersUnavailable(unavailable(cause), error_reason_of(cause)) from cause
    raise AssertionError("unreachable")  # pragma: no cover


def error_reason_of(error: BaseException) -> str:
    if isinstance(error, grpc.aio.AioRpcError):
        return error_reason(error) or error.code().name
    if isinstance(error, AckTimeout):
        return "ACK_TIMEOUT"
    return "UNAVAILABLE"
