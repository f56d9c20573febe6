"""Failover between the servers of an ordered list, primary first, as objects:

- `CircuitBreaker`, one per address: closed while the address works; open after
  `failure_threshold` recoverable failures in a row; half-open once `cool_down` has
  passed, when the health check may close it again.
- `FailoverStrategy`: for each attempt, the first address whose circuit is closed,
  skipping those the same operation already failed on. There is no shared "current
  server" that one session's failure could move under another's feet: the state is each
  address's health, and each operation keeps its own list of what it tried.
- `HealthChecker`: asks the standard gRPC health service (grpc.health.v1) of each
  half-open address until it answers SERVING, which closes the circuit: new calls and
  streams then go back to the primary.
- `ServerPool`: the channels, breakers and strategy of one list of servers, and `call`,
  which runs a unary call under the recovery policy with a deadline on every attempt.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections.abc import Awaitable, Callable, Collection, Sequence
from typing import TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from client_sdk import recovery
from client_sdk.channels import channel_options, open_channel
from client_sdk.config import FailoverConfig, KeepAliveConfig, RetryConfig, TlsConfig

log = logging.getLogger(__name__)
T = TypeVar("T")

Clock = Callable[[], float]


class CircuitState(enum.Enum):
    CLOSED = "closed"
    """The address takes traffic."""
    OPEN = "open"
    """The address failed; no traffic until the cool-down has passed and it is healthy."""
    HALF_OPEN = "half_open"
    """Cool-down over: the next health check decides."""


class CircuitBreaker:
    """The health of one address as the SDK has seen it."""

    def __init__(
        self, address: str, failure_threshold: int, cool_down: float, clock: Clock = time.monotonic
    ) -> None:
        self.address = address
        self._threshold = failure_threshold
        self._cool_down = cool_down
        self._clock = clock
        self._failures = 0
        self._opened_at: float | None = None
        self.last_success = float("-inf")
        """When the address last answered (-inf: never)."""

    @property
    def state(self) -> CircuitState:
        if self._opened_at is None:
            return CircuitState.CLOSED
        if self._clock() - self._opened_at >= self._cool_down:
            return CircuitState.HALF_OPEN
        return CircuitState.OPEN

    @property
    def opened_at(self) -> float:
        """When the circuit (last) opened; -inf for a closed one."""
        return float("-inf") if self._opened_at is None else self._opened_at

    @property
    def allows_traffic(self) -> bool:
        return self._opened_at is None

    def record_success(self) -> None:
        if self._opened_at is not None:
            log.info("server %s answers again; its circuit closes", self.address)
        self._failures = 0
        self._opened_at = None
        self.last_success = self._clock()

    def record_failure(self) -> bool:
        """Count a recoverable failure; True if this opened (or re-opened) the circuit."""
        self._failures += 1
        state = self.state
        if state is CircuitState.HALF_OPEN or (
            state is CircuitState.CLOSED and self._failures >= self._threshold
        ):
            if state is CircuitState.CLOSED:
                log.warning("server %s failed; its circuit opens", self.address)
            self._opened_at = self._clock()
            return True
        return False


class FailoverStrategy:
    """Chooses the server for an attempt: the first in list order whose circuit is closed
    and that this operation has not failed on yet; else the first whose circuit is closed
    (a failure below the threshold says less than an open circuit); else, every circuit
    being open, the server that answered last."""

    def __init__(self, breakers: Sequence[CircuitBreaker]) -> None:
        if not breakers:
            raise ValueError("a failover strategy needs at least one server")
        self.breakers = tuple(breakers)

    def choose(self, tried: Collection[str] = ()) -> str:
        candidates = [b for b in self.breakers if b.address not in tried]
        if not candidates:
            # Every server failed this operation once: go round again, best first.
            candidates = list(self.breakers)
        for breaker in (*candidates, *self.breakers):
            if breaker.allows_traffic:
                return breaker.address
        # Every circuit is open: the one that answered last is the likeliest to answer
        # (a server merely slow a moment ago, rather than one dead for a while).
        return max(candidates, key=lambda b: (b.last_success, -b.opened_at)).address

    @property
    def preferred(self) -> str:
        """Where new work goes now."""
        return self.choose()


class HealthChecker:
    """Closes the circuits of servers that are healthy again: every `interval`, each
    half-open address is asked grpc.health.v1 Check; SERVING closes it, anything else
    (or no answer within `timeout`) keeps it open for another cool-down."""

    def __init__(
        self,
        breakers: Sequence[CircuitBreaker],
        channel: Callable[[str], grpc.aio.Channel],
        config: FailoverConfig,
    ) -> None:
        self._breakers = breakers
        self._channel = channel
        self._config = config
        self._task: asyncio.Task[None] | None = None

    def wake(self) -> None:
        """Make sure the checks run (a circuit has opened)."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def check(self, address: str) -> bool:
        stub = health_pb2_grpc.HealthStub(self._channel(address))
        try:
            answer = await stub.Check(
                health_pb2.HealthCheckRequest(service=self._config.health_service),
                timeout=self._config.health_check_timeout,
            )
        except grpc.aio.AioRpcError as error:
            log.debug("health check of %s: %s", address, recovery.describe(error))
            return False
        return bool(answer.status == health_pb2.HealthCheckResponse.SERVING)

    async def run_once(self) -> None:
        due = [b for b in self._breakers if b.state is CircuitState.HALF_OPEN]
        results = await asyncio.gather(*(self.check(b.address) for b in due))
        for breaker, healthy in zip(due, results, strict=True):
            if healthy:
                breaker.record_success()
            elif breaker.state is CircuitState.HALF_OPEN:
                breaker.record_failure()

    async def _run(self) -> None:
        while any(not b.allows_traffic for b in self._breakers):
            await asyncio.sleep(self._config.health_check_interval)
            await self.run_once()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None


class ServerPool:
    """One ordered list of servers: a channel, a circuit breaker and health checks for
    each, the strategy over them, and unary calls run under the recovery policy."""

    def __init__(
        self,
        addresses: Sequence[str],
        tls: TlsConfig,
        failover: FailoverConfig | None = None,
        retry: RetryConfig | None = None,
        keep_alive: KeepAliveConfig | None = None,
        clock: Clock = time.monotonic,
    ) -> None:
        self._addresses = tuple(addresses)
        self._tls = tls
        self.failover = failover or FailoverConfig()
        self.retry = retry or RetryConfig()
        self._options = channel_options(keep_alive or KeepAliveConfig(), self.failover)
        self._channels: dict[str, grpc.aio.Channel] = {}
        self._breakers = {
            address: CircuitBreaker(
                address, self.failover.failure_threshold, self.failover.cool_down, clock
            )
            for address in self._addresses
        }
        self.strategy = FailoverStrategy([self._breakers[a] for a in self._addresses])
        self.health = HealthChecker(self.strategy.breakers, self.channel, self.failover)

    @property
    def addresses(self) -> tuple[str, ...]:
        return self._addresses

    @property
    def current(self) -> str:
        """The server new calls and streams go to now."""
        return self.strategy.preferred

    def breaker(self, address: str) -> CircuitBreaker:
        return self._breakers[address]

    def channel(self, address: str | None = None) -> grpc.aio.Channel:
        address = address or self.current
        if address not in self._channels:
            self._channels[address] = open_channel(address, self._tls, self._options)
        return self._channels[address]

    def choose(self, tried: Collection[str] = ()) -> str:
        return self.strategy.choose(tried)

    def record_success(self, address: str) -> None:
        self._breakers[address].record_success()

    def record_failure(self, address: str, error: BaseException) -> None:
        """A recoverable failure on `address`; opens its circuit at the threshold."""
        if not recovery.blames_server(error):
            return
        if self._breakers[address].record_failure():
            self.health.wake()

    def unavailable(self, error: BaseException) -> str:
        return (
            f"No server could be reached or answered in time ({', '.join(self._addresses)}); "
            f"the last said: {recovery.describe(error)}"
        )

    async def call(
        self,
        operation: Callable[[grpc.aio.Channel, float], Awaitable[T]],
        *,
        refresh_token: Callable[[], None] | None = None,
    ) -> T:
        """Run an idempotent unary call: `operation(channel, deadline)` makes the call with
        that deadline (seconds). A recoverable failure moves it to the next server (with backoff);
        an expired token is refreshed (`refresh_token`) and the call made again, once."""
        tried: set[str] = set()

        async def attempt() -> T:
            address = self.choose(tried)
            try:
                result = await operation(self.channel(address), self.failover.call_timeout)
            except Exception as error:
                if recovery.decide(error) is recovery.Decision.RECOVER:
                    tried.add(address)
                    self.record_failure(address, error)
                raise
            self.record_success(address)
            return result

        return await recovery.run(
            attempt, self.retry, refresh_token=refresh_token, unavailable=self.unavailable
        )

    async def run(
        self,
        operation: Callable[[grpc.aio.Channel], Awaitable[T]],
        *,
        refresh_token: Callable[[], None] | None = None,
    ) -> T:
        """`call` for an operation that sets its own deadline (a long download, say)."""

        async def with_own_deadline(channel: grpc.aio.Channel, deadline: float) -> T:
            return await operation(channel)

        return await self.call(with_own_deadline, refresh_token=refresh_token)

    async def close(self) -> None:
        await self.health.close()
        for channel in self._channels.values():
            await channel.close(None)
        self._channels.clear()
