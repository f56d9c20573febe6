"""The SDK's resilience as objects, without a server: the circuit breaker, the failover
strategy, the health checker's decisions, the recovery policy per status, the retry loop
(recover, refresh once, terminate, give up) and the pool's choice of server per attempt."""

from __future__ import annotations

from collections.abc import Callable

import grpc
import pytest
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2

from client_sdk import (
    AccountSuspended,
    AuthenticationError,
    AuthenticationFailed,
    FailoverConfig,
    InsufficientFunds,
    InvalidRequest,
    NoGateway,
    NotFound,
    PermissionDenied,
    RetryConfig,
    ServerError,
    ServersUnavailable,
    ServiceRefused,
    TlsConfig,
    UnknownEndpoint,
    recovery,
)
from client_sdk.errors import error_reason, from_rpc_error
from client_sdk.failover import (
    CircuitBreaker,
    CircuitState,
    FailoverStrategy,
    HealthChecker,
    ServerPool,
)
from client_sdk.recovery import Decision, decide

pytestmark = pytest.mark.unit

FAST = RetryConfig(initial_backoff=0.001, max_backoff=0.002, max_attempts=6, max_elapsed=5)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def rpc_error(code: grpc.StatusCode, reason: str = "", details: str = "") -> grpc.aio.AioRpcError:
    trailing = grpc.aio.Metadata()
    if reason:
        info = any_pb2.Any()
        info.Pack(error_details_pb2.ErrorInfo(reason=reason, domain="meterline.dev"))
        status = status_pb2.Status(code=code.value[0], message=details, details=[info])
        trailing = grpc.aio.Metadata(("grpc-status-details-bin", status.SerializeToString()))
    return grpc.aio.AioRpcError(
        code, grpc.aio.Metadata(), trailing, details=details or code.name, debug_error_string=None
    )


# -- the circuit breaker ------------------------------------------------------------------


def test_breaker_opens_at_the_threshold_and_a_success_resets_the_count() -> None:
    clock = Clock()
    breaker = CircuitBreaker("a:1", failure_threshold=3, cool_down=5, clock=clock)
    assert breaker.state is CircuitState.CLOSED
    assert not breaker.record_failure()
    assert not breaker.record_failure()
    breaker.record_success()
    assert not breaker.record_failure()
    assert not breaker.record_failure()
    assert breaker.state is CircuitState.CLOSED and breaker.allows_traffic
    assert breaker.record_failure()
    assert breaker.state is CircuitState.OPEN and not breaker.allows_traffic
    assert breaker.opened_at == 1000.0


def test_breaker_half_opens_after_the_cool_down_and_a_failed_probe_reopens_it() -> None:
    clock = Clock()
    breaker = CircuitBreaker("a:1", failure_threshold=1, cool_down=5, clock=clock)
    assert breaker.record_failure()
    clock.now += 4.9
    assert breaker.state is CircuitState.OPEN
    assert not breaker.record_failure()  # more failures while open change nothing
    clock.now += 0.1
    assert breaker.state is CircuitState.HALF_OPEN
    assert not breaker.allows_traffic  # only the health check decides now
    assert breaker.record_failure()  # the probe failed: another cool-down
    assert breaker.state is CircuitState.OPEN and breaker.opened_at == clock.now
    clock.now += 5
    breaker.record_success()
    assert breaker.state is CircuitState.CLOSED and breaker.allows_traffic


# -- the strategy --------------------------------------------------------------------------


def strategy(clock: Clock, *addresses: str) -> FailoverStrategy:
    return FailoverStrategy([CircuitBreaker(a, 1, 5, clock) for a in addresses])


def test_strategy_prefers_the_first_closed_address_and_skips_what_the_operation_tried() -> None:
    clock = Clock()
    servers = strategy(clock, "p:1", "s:1", "t:1")
    assert servers.preferred == "p:1"
    assert servers.choose(tried={"p:1"}) == "s:1"
    assert servers.choose(tried={"p:1", "s:1"}) == "t:1"
    # Everything tried once: round again, best first.
    assert servers.choose(tried={"p:1", "s:1", "t:1"}) == "p:1"


def test_strategy_prefers_a_closed_circuit_it_tried_to_an_open_one() -> None:
    clock = Clock()
    servers = FailoverStrategy([CircuitBreaker(a, 3, 5, clock) for a in ("p:1", "s:1")])
    primary, secondary = servers.breakers
    for _ in range(3):
        primary.record_failure()
    secondary.record_failure()  # once: below its threshold
    assert servers.choose({"s:1"}) == "s:1"


def test_strategy_state_is_per_address_not_a_shared_counter() -> None:
    """Two operations failing on the primary at once both go to the secondary; neither
    sends the other back to the dead primary."""
    clock = Clock()
    servers = strategy(clock, "p:1", "s:1")
    primary, _ = servers.breakers
    first, second = {"p:1"}, {"p:1"}
    primary.record_failure()
    primary.record_failure()
    assert servers.choose(first) == "s:1"
    assert servers.choose(second) == "s:1"
    assert servers.preferred == "s:1"  # new work avoids the open circuit


def test_strategy_returns_to_the_primary_once_its_circuit_closes() -> None:
    clock = Clock()
    servers = strategy(clock, "p:1", "s:1")
    primary = servers.breakers[0]
    primary.record_failure()
    assert servers.preferred == "s:1"
    clock.now += 10
    assert servers.preferred == "s:1"  # half-open is not closed
    primary.record_success()  # the health check said SERVING
    assert servers.preferred == "p:1"


def test_strategy_with_every_circuit_open_tries_the_one_that_answered_last() -> None:
    clock = Clock()
    servers = strategy(clock, "p:1", "s:1")
    primary, secondary = servers.breakers
    primary.record_failure()  # the primary died
    clock.now += 1
    secondary.record_success()
    clock.now += 1
    secondary.record_failure()  # the secondary was slow once, under the load it took over
    assert servers.preferred == "s:1"
    assert servers.choose({"p:1"}) == "s:1"
    # Neither ever answered: the one whose circuit opened first.
    never = strategy(clock, "a:1", "b:1")
    never.breakers[1].record_failure()
    clock.now += 1
    never.breakers[0].record_failure()
    assert never.preferred == "b:1"


async def test_health_checker_closes_healthy_half_open_circuits_only() -> None:
    clock = Clock()
    breakers = [CircuitBreaker(a, 1, 5, clock) for a in ("p:1", "s:1", "t:1")]
    checker = HealthChecker(breakers, lambda address: None, FailoverConfig())  # type: ignore[arg-type,return-value]
    asked: list[str] = []
    healthy = {"p:1": True, "s:1": False, "t:1": True}

    async def check(address: str) -> bool:
        asked.append(address)
        return healthy[address]

    checker.check = check  # type: ignore[method-assign]
    for breaker in breakers[:2]:
        breaker.record_failure()
    clock.now += 1
    await checker.run_once()
    assert asked == []  # still cooling down
    breakers[2].record_failure()
    clock.now += 4.5
    await checker.run_once()
    assert asked == ["p:1", "s:1"]  # t:1 is still cooling down
    assert [b.state for b in breakers] == [
        CircuitState.CLOSED,
        CircuitState.OPEN,
        CircuitState.OPEN,
    ]


# -- the recovery policy ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "reason", "decision"),
    [
        (grpc.StatusCode.UNAVAILABLE, "", Decision.RECOVER),
        (grpc.StatusCode.UNAVAILABLE, "SESSION_MOVED", Decision.RECOVER),
        (grpc.StatusCode.DEADLINE_EXCEEDED, "", Decision.RECOVER),
        (grpc.StatusCode.UNAUTHENTICATED, "TOKEN_EXPIRED", Decision.REFRESH_TOKEN),
        (grpc.StatusCode.UNAUTHENTICATED, "TOKEN_INVALID", Decision.TERMINATE),
        (grpc.StatusCode.UNAUTHENTICATED, "BAD_CREDENTIALS", Decision.TERMINATE),
        (grpc.StatusCode.INTERNAL, "INTERNAL", Decision.TERMINATE),
        (grpc.StatusCode.INTERNAL, "", Decision.TERMINATE),
        (grpc.StatusCode.UNKNOWN, "", Decision.TERMINATE),
        # Our servers never send CANCELLED: their gRPC core dropped the call (a backlog
        # beyond its queue, or a shutdown), which another attempt cures.
        (grpc.StatusCode.CANCELLED, "", Decision.RECOVER),
        (grpc.StatusCode.INVALID_ARGUMENT, "USAGE_WENT_BACKWARDS", Decision.TERMINATE),
        (grpc.StatusCode.FAILED_PRECONDITION, "INSUFFICIENT_FUNDS", Decision.TERMINATE),
        (grpc.StatusCode.NOT_FOUND, "SESSION_NOT_FOUND", Decision.TERMINATE),
        (grpc.StatusCode.PERMISSION_DENIED, "", Decision.TERMINATE),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "", Decision.TERMINATE),
    ],
)
def test_the_policy_decides_per_status(
    code: grpc.StatusCode, reason: str, decision: Decision
) -> None:
    assert decide(rpc_error(code, reason)) is decision


def test_a_call_this_process_cancelled_is_not_tried_again() -> None:
    local = rpc_error(grpc.StatusCode.CANCELLED, details=recovery.LOCAL_CANCELLATION)
    assert decide(local) is Decision.TERMINATE
    assert decide(rpc_error(grpc.StatusCode.CANCELLED, details="CANCELLED")) is Decision.RECOVER


def test_transport_failures_recover_and_a_moved_session_does_not_blame_the_server() -> None:
    assert decide(recovery.AckTimeout("late")) is Decision.RECOVER
    assert decide(recovery.TransportFailure("closed")) is Decision.RECOVER
    assert decide(ValueError("a bug of ours")) is Decision.TERMINATE
    assert recovery.blames_server(recovery.AckTimeout("late"))
    assert recovery.blames_server(rpc_error(grpc.StatusCode.UNAVAILABLE))
    assert not recovery.blames_server(rpc_error(grpc.StatusCode.UNAVAILABLE, "SESSION_MOVED"))


@pytest.mark.parametrize(
    ("code", "reason", "kind"),
    [
        (grpc.StatusCode.FAILED_PRECONDITION, "INSUFFICIENT_FUNDS", InsufficientFunds),
        (grpc.StatusCode.FAILED_PRECONDITION, "ACCOUNT_SUSPENDED", AccountSuspended),
        (grpc.StatusCode.NOT_FOUND, "UNKNOWN_ENDPOINT", UnknownEndpoint),
        (grpc.StatusCode.FAILED_PRECONDITION, "NO_GATEWAY", NoGateway),
        (grpc.StatusCode.FAILED_PRECONDITION, "PEER_REFUSED_TOKEN", ServerError),
        (grpc.StatusCode.FAILED_PRECONDITION, "CURRENCY_MISMATCH", ServiceRefused),
        (grpc.StatusCode.PERMISSION_DENIED, "PERMISSION_DENIED", PermissionDenied),
        (grpc.StatusCode.NOT_FOUND, "SESSION_NOT_FOUND", NotFound),
        (grpc.StatusCode.INVALID_ARGUMENT, "USAGE_WENT_BACKWARDS", InvalidRequest),
        (grpc.StatusCode.UNAUTHENTICATED, "BAD_CREDENTIALS", AuthenticationFailed),
        (grpc.StatusCode.INTERNAL, "INTERNAL", ServerError),
        (grpc.StatusCode.UNKNOWN, "", ServerError),
        (grpc.StatusCode.UNAVAILABLE, "", ServersUnavailable),
    ],
)
def test_errors_are_typed_by_reason_then_code(
    code: grpc.StatusCode, reason: str, kind: type[Exception]
) -> None:
    error = from_rpc_error(rpc_error(code, reason, "A sentence."))
    assert type(error) is kind
    assert error.reason == (reason or code.name)
    assert error.message == "A sentence."
    assert not any(isinstance(v, grpc.StatusCode) for v in vars(error).values())


def test_the_old_error_names_still_work() -> None:
    assert AuthenticationError is AuthenticationFailed
    assert issubclass(InsufficientFunds, ServiceRefused)
    assert error_reason(rpc_error(grpc.StatusCode.INTERNAL)) == ""


# -- the retry loop ----------------------------------------------------------------------------


class Script:
    """An attempt that fails with the given errors, in order, then answers "ok"."""

    def __init__(self, *errors: BaseException) -> None:
        self.errors = list(errors)
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


async def test_recoverable_failures_are_retried_until_success() -> None:
    attempt = Script(rpc_error(grpc.StatusCode.UNAVAILABLE), recovery.AckTimeout("late"))
    assert await recovery.run(attempt, FAST) == "ok"
    assert attempt.calls == 3


async def test_a_server_answer_is_raised_at_once_as_a_typed_error() -> None:
    attempt = Script(rpc_error(grpc.StatusCode.INTERNAL, "INTERNAL", "Internal error."))
    with pytest.raises(ServerError, match="Internal error"):
        await recovery.run(attempt, FAST)
    assert attempt.calls == 1


async def test_an_expired_token_is_refreshed_and_the_call_made_again_once() -> None:
    refreshed: list[bool] = []
    expired = rpc_error(grpc.StatusCode.UNAUTHENTICATED, "TOKEN_EXPIRED", "expired")
    attempt = Script(expired)
    assert await recovery.run(attempt, FAST, refresh_token=lambda: refreshed.append(True)) == "ok"
    assert (attempt.calls, refreshed) == (2, [True])

    again = Script(expired, rpc_error(grpc.StatusCode.UNAUTHENTICATED, "TOKEN_EXPIRED", "still"))
    with pytest.raises(AuthenticationFailed) as raised:
        await recovery.run(again, FAST, refresh_token=lambda: refreshed.append(True))
    assert raised.value.reason == "TOKEN_EXPIRED"
    assert again.calls == 2


async def test_retries_end_in_servers_unavailable() -> None:
    attempt = Script(*[rpc_error(grpc.StatusCode.UNAVAILABLE, details="down")] * 10)
    with pytest.raises(ServersUnavailable, match="down"):
        await recovery.run(attempt, FAST)
    assert attempt.calls == FAST.max_attempts


# -- the pool ------------------------------------------------------------------------------------


def pool(*addresses: str, threshold: int = 1) -> ServerPool:
    return ServerPool(
        addresses,
        TlsConfig(plaintext=True),
        FailoverConfig(failure_threshold=threshold, call_timeout=0.5),
        FAST,
    )


def scripted_call(
    answers: dict[str, list[BaseException | str]], seen: list[str], pool_: ServerPool
) -> Callable[[grpc.aio.Channel, float], object]:
    by_channel = {id(pool_.channel(a)): a for a in answers}

    async def call(channel: grpc.aio.Channel, deadline: float) -> str:
        assert deadline == 0.5
        address = by_channel[id(channel)]
        seen.append(address)
        answer = answers[address].pop(0)
        if isinstance(answer, BaseException):
            raise answer
        return answer

    return call


async def test_a_call_moves_to_the_next_server_and_new_calls_follow_the_breaker() -> None:
    servers = pool("p:1", "s:1")
    seen: list[str] = []
    down = rpc_error(grpc.StatusCode.UNAVAILABLE)
    call = scripted_call({"p:1": [down], "s:1": ["first", "second"]}, seen, servers)
    try:
        assert await servers.call(call) == "first"  # type: ignore[arg-type]
        assert seen == ["p:1", "s:1"]
        assert servers.current == "s:1"
        assert await servers.call(call) == "second"  # type: ignore[arg-type]
        assert seen == ["p:1", "s:1", "s:1"]  # the open primary is not tried again
    finally:
        await servers.close()


async def test_a_server_bug_is_not_retried_on_another_server() -> None:
    servers = pool("p:1", "s:1")
    seen: list[str] = []
    bug = rpc_error(grpc.StatusCode.INTERNAL, "INTERNAL", "Internal error; incident 42.")
    call = scripted_call({"p:1": [bug], "s:1": ["never"]}, seen, servers)
    try:
        with pytest.raises(ServerError, match="incident 42"):
            await servers.call(call)  # type: ignore[arg-type]
        assert seen == ["p:1"]
        assert servers.current == "p:1"  # an answer is no reason to leave a server
    finally:
        await servers.close()


async def test_a_moved_session_does_not_open_the_circuit() -> None:
    servers = pool("p:1", "s:1")
    servers.record_failure("p:1", rpc_error(grpc.StatusCode.UNAVAILABLE, "SESSION_MOVED"))
    assert servers.breaker("p:1").allows_traffic
    servers.record_failure("p:1", recovery.AckTimeout("late"))
    assert not servers.breaker("p:1").allows_traffic
    await servers.close()
