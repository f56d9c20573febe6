"""Events between services about accounts, over Redis pub/sub. The one place their
channel names are spelled.

`{prefix}:account:{account_id}:funded`: the billing manager publishes the account id once a
top-up is committed; every service manager listens (one pattern subscription each) and
grants the next slice at once to its sessions of that account that were on their final
units. An event lost (Redis down) costs only time: a session on its final units tries
again at its next usage update.

`{prefix}:account:{account_id}:status`: the billing manager publishes the account's new
status (SUSPENDED or CLOSED) once SetAccountStatus committed it; every service manager
listens (one more pattern on the same connection) and ends its running sessions of that
account with reason OPERATOR. An event lost costs a slice at most: the next slice's hold
is refused for the account's status, and that ends the session with OPERATOR too."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

PUBLISH_TIMEOUT_SECONDS = 2.0


def account_funded_channel(prefix: str, account_id: str) -> str:
    return f"{prefix}:account:{account_id}:funded"


def account_funded_pattern(prefix: str) -> str:
    return f"{prefix}:account:*:funded"


def funded_account(prefix: str, channel: str) -> str | None:
    """The account id a funded channel names, or None for another channel."""
    return _account_of(prefix, channel, ":funded")


def _account_of(prefix: str, channel: str, tail: str) -> str | None:
    head = f"{prefix}:account:"
    if channel.startswith(head) and channel.endswith(tail) and len(channel) > len(head + tail):
        return channel[len(head) : -len(tail)]
    return None


def account_status_channel(prefix: str, account_id: str) -> str:
    return f"{prefix}:account:{account_id}:status"


def account_status_pattern(prefix: str) -> str:
    return f"{prefix}:account:*:status"


def status_account(prefix: str, channel: str) -> str | None:
    """The account id a status channel names, or None for another channel."""
    return _account_of(prefix, channel, ":status")


class FundingPublisher:
    """Publishes "account funded" after the top-up committed, and "account suspended or
    closed" after the status change committed, off the caller's path: a Redis that is
    down never fails a top-up (the money is in) or a status change (it is made)."""

    def __init__(self, redis_url: str, prefix: str) -> None:
        self._redis = Redis.from_url(redis_url, socket_connect_timeout=2, socket_timeout=2)
        self._prefix = prefix
        self._pending: set[asyncio.Task[None]] = set()

    def funded(self, account_id: str) -> None:
        channel = account_funded_channel(self._prefix, account_id)
        self._spawn(self._publish(account_id, channel, account_id, "funding"))

    def status_changed(self, account_id: str, status: str) -> None:
        """The account is now `status` (e.g. "SUSPENDED", "CLOSED")."""
        channel = account_status_channel(self._prefix, account_id)
        self._spawn(self._publish(account_id, channel, status, "status"))

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(work)
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _publish(self, account_id: str, channel: str, data: str, what: str) -> None:
        try:
            async with asyncio.timeout(PUBLISH_TIMEOUT_SECONDS):
                await self._redis.publish(channel, data)
        except (RedisError, OSError, TimeoutError) as error:
            log.warning("account %s: %s event not published: %s", account_id, what, error)

    async def close(self) -> None:
        if self._pending:
            await asyncio.wait(list(self._pending), timeout=PUBLISH_TIMEOUT_SECONDS)
        with contextlib.suppress(RedisError, OSError):
            await self._redis.aclose()
