"""The one retry policy (tenacity). Only UNAVAILABLE is retried, and only for calls that
are safe to repeat: reads, and money movements that carry an idempotency key."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

import grpc
from tenacity import (
    AsyncRetrying,
    before_sleep_log,
    retry_if_exception,
    stop_after_attempt,
    stop_after_delay,
    wait_random_exponential,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

RETRYABLE_CODES = frozenset({grpc.StatusCode.UNAVAILABLE})


def is_retryable(error: BaseException) -> bool:
    return isinstance(error, grpc.aio.AioRpcError) and error.code() in RETRYABLE_CODES


def retrying(attempts: int = 5, max_seconds: float = 10.0) -> AsyncRetrying:
    """Exponential backoff with full jitter, capped in attempts and in time."""
    return AsyncRetrying(
        retry=retry_if_exception(is_retryable),
        wait=wait_random_exponential(multiplier=0.05, max=2.0),
        stop=stop_after_attempt(attempts) | stop_after_delay(max_seconds),
        before_sleep=before_sleep_log(log, logging.WARNING),
        reraise=True,
    )


async def call_with_retry(call: Callable[[], Awaitable[T]], attempts: int = 5) -> T:
    """Run an idempotent call, retrying it while the peer is UNAVAILABLE."""
    async for attempt in retrying(attempts):
        with attempt:
            return await call()
    raise AssertionError("unreachable")  # pragma: no cover
