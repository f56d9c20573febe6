"""Which accounts someone is watching, on any instance: a session's display events are
published only for those (most accounts, most of the time, have no page or live view
open, and on a busy instance the events are a large share of the usage path's work).

Each instance marks the accounts its own WatchAccount streams follow in one Redis hash
(`<prefix>:events:watched`, field account id, value the end of a lease in Unix seconds),
renews the marks while the streams stay open, and reads the whole hash every
`REFRESH_SECONDS`. So a watcher on this instance gets events at once, and one on another
instance from at most `REFRESH_SECONDS` after it opened. A mark nobody renews ends with
its lease (an instance that died); ended marks are removed by whoever reads them."""

from __future__ import annotations

import logging
import time
from collections import Counter

from redis.asyncio import Redis
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

REFRESH_SECONDS = 0.5
"""How often an instance reads every instance's marks (and renews its own when due)."""
LEASE_SECONDS = 30.0
"""How long a mark lasts unless renewed."""
RENEW_SECONDS = 10.0
"""How often an instance renews the marks of the accounts it watches."""
DELETE_ENDED = (
    "local now = tonumber(ARGV[#ARGV]) "
    "for i = 1, #ARGV - 1 do "
    "local until_ = redis.call('HGET', KEYS[1], ARGV[i]) "
    "if until_ and (tonumber(until_) or 0) <= now then redis.call('HDEL', KEYS[1], ARGV[i]) end "
    "end"
)
"""Removes the marks ARGV[1..n-1] that have still ended at ARGV[n]: one renewed or made
again since they were read stays."""


class WatchedAccounts:
    def __init__(self, redis: Redis, prefix: str, lease_seconds: float = LEASE_SECONDS) -> None:
        self._redis = redis
        self.key = f"{prefix}:events:watched"
        self._lease = lease_seconds
        self._renew = min(RENEW_SECONDS, lease_seconds / 3)
        self._local: Counter[str] = Counter()
        self._remote: dict[str, float] = {}
        self._renewed_at = 0.0
        self._refreshed_at = 0.0

    def is_watched(self, account_id: str) -> bool:
        return account_id in self._local or self._remote.get(account_id, 0.0) > time.time()

    async def start(self, account_id: str) -> None:
        """A stream of this instance follows the account: mark it for the others. A mark
        that cannot be written is only late (the next renewal writes it)."""
        self._local[account_id] += 1
        if self._local[account_id] == 1:
            try:
                await self._redis.hset(self.key, account_id, str(time.time() + self._lease))
            except RedisError as error:
                self._renewed_at = 0.0  # marked by the next refresh
                log.warning("watched account %s not marked yet: %s", account_id, error)

    def stop(self, account_id: str) -> None:
        """A stream that followed the account ended (its mark ends with its lease)."""
        self._local[account_id] -= 1
        if self._local[account_id] <= 0:
            del self._local[account_id]

    async def refresh_when_due(self) -> None:
        now = time.monotonic()
        if now - self._refreshed_at >= REFRESH_SECONDS:
            self._refreshed_at = now
            await self.refresh()

    async def refresh(self) -> None:
        """Renew this instance's marks when due, and read every instance's."""
        now = time.time()
        async with self._redis.pipeline(transaction=False) as pipe:
            if self._local and now - self._renewed_at >= self._renew:
                lease_end = str(now + self._lease)
                pipe.hset(self.key, mapping=dict.fromkeys(self._local, lease_end))
                self._renewed_at = now
            pipe.hgetall(self.key)
            answers = await pipe.execute()
        marks: dict[str, float] = {}
        ended: list[str] = []
        for field, value in answers[-1].items():
            account_id, until = _text(field), _float(value)
            if until > now:
                marks[account_id] = until
            elif account_id not in self._local:
                ended.append(account_id)
        self._remote = marks
        if ended:
            await self._redis.eval(DELETE_ENDED, 1, self.key, *ended, str(now))


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _float(value: bytes | str) -> float:
    try:
        return float(_text(value))
    except ValueError:
        return 0.0
