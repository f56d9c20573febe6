"""Presence in Redis: the collection of active end users (user, service type, rate,
endpoint, start, usage) and the event channels displays listen on (gateways have their
durable notice streams in the service database instead, storage/notice_log.py).

Nothing waits for Redis: changes are queued and a writer sends them every tick in one
pipeline; of a session's usage only the newest is sent. If Redis is down they wait (the
newest usage per session, every start and end) and go when it is back; a Redis that lost
the collection (restart, flush) is written again from the database's active sessions."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.exceptions import RedisError
from redis.typing import EncodableT, FieldT

from meterline.kernel.errors import Unavailable
from meterline.kernel.media import ServiceType
from service_manager.app.ports import ActiveUser
from service_manager.domain.records import UsageEvent
from service_manager.domain.sessions import Session
from service_manager.rates import session_rate_from_json, session_rate_to_json
from service_manager.storage.watched import WatchedAccounts

log = logging.getLogger(__name__)

TICK_SECONDS = 0.05
USAGE_NOTE_SECONDS = 1.0
"""The collection's usage figure of a session is written at most this often."""
DISPLAY_EVENT_SECONDS = 0.2
"""A session's usage event goes to displays at most this often (the newest one; a
final-unit indication at once): five a second is live to a person, and the usage path
of a busy instance does not pay for events nobody can read that fast."""
MAX_WAITING = 200_000
"""Queued starts and ends beyond this while Redis is down are dropped (the rebuild from
the database restores the collection)."""


def usage_event_to_json(event: UsageEvent) -> str:
    """The event as displays read it (a JSON object). Written out by hand: the usage path
    of a busy instance sends a thousand of these a second, and json.dumps of a dict
    costs three times as much."""
    reason = event.reason.value if event.reason else ""
    left = "null" if event.seconds_left is None else str(int(event.seconds_left))
    return (
        f'{{"account_id": {_quoted(event.account_id)}, '
        f'"session_id": {_quoted(event.session_id)}, '
        f'"balance_micros": {int(event.balance_micros)}, '
        f'"charged_micros": {int(event.charged_micros)}, '
        f'"used_units": {int(event.used_units)}, '
        f'"ended": {_BOOLEANS[event.ended]}, '
        f'"reason": {_quoted(reason)}, '
        f'"final_units": {_BOOLEANS[event.final_units]}, '
        f'"low_balance": {_BOOLEANS[event.low_balance]}, '
        f'"seconds_left": {left}}}'
    )


_BOOLEANS = {False: "false", True: "true"}
_quoted = json.JSONEncoder(ensure_ascii=True).encode
"""A str as a JSON string."""

PUBLISH_ALL = "for i = 1, #KEYS do redis.call('PUBLISH', KEYS[i], ARGV[i]) end"
"""ARGV[i] published on channel KEYS[i]: one command (and one answer to read) for the
usage events of a tick, instead of one each."""
NOTE_USAGE_ALL = "for i = 1, #KEYS do redis.call('HSET', KEYS[i], 'used_units', ARGV[i]) end"
"""The collection's usage figure ARGV[i] of the session entry KEYS[i], likewise."""
PER_SCRIPT = 500
"""Entries per script call, so that one call never holds Redis up for long."""


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class Keys:
    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.active = f"{prefix}:presence:active"
        # v2: with the per-account sets; a collection built before them is rebuilt.
        self.built = f"{prefix}:presence:built:v2"
        self.rebuilding = f"{prefix}:presence:rebuilding"

    def session(self, session_id: str) -> str:
        return f"{self.prefix}:presence:session:{session_id}"

    def account_active(self, account_id: str) -> str:
        """The active sessions of one account, so that reading them costs what the
        account has, not what the installation has."""
        return f"{self.prefix}:presence:account:{account_id}"

    def account_channel(self, account_id: str) -> str:
        return f"{self.prefix}:events:account:{account_id}"


def _entry(session: Session) -> dict[FieldT, EncodableT]:
    return {
        "account_id": session.account_id,
        "service_type": session.service_type.value,
        "endpoint": session.endpoint,
        "gateway_id": session.gateway_id,
        "started_at": session.started_at.isoformat(),
        "used_units": session.used_units,
        "rate": json.dumps(session_rate_to_json(session.rate)),
    }


class RedisPresence:
    """The Presence port on Redis."""

    def __init__(self, redis: Redis, prefix: str, watched: WatchedAccounts | None = None) -> None:
        self._redis = redis
        self.keys = Keys(prefix)
        self._watched = watched
        """Given: a session's usage events are published only while its account is
        watched (on any instance); without: always."""
        self._changes: list[tuple[str, Any]] = []
        self._usage: dict[str, tuple[UsageEvent, int]] = {}
        self._noted: dict[str, float] = {}
        self._shown: dict[str, float] = {}
        self._pruned_at = time.monotonic()
        self._failing = False

    # -- queued writes -------------------------------------------------------------------

    def started(self, session: Session) -> None:
        self._queue(("add", (session.session_id, session.started_at.timestamp(), _entry(session))))

    def usage(self, session: Session, event: UsageEvent) -> None:
        self._usage[session.session_id] = (event, session.used_units)

    def ended(self, session_id: str, event: UsageEvent) -> None:
        self._usage.pop(session_id, None)
        self._noted.pop(session_id, None)
        self._shown.pop(session_id, None)
        self._queue(("remove", (session_id, event.account_id)))
        self._queue(
            ("publish", (self.keys.account_channel(event.account_id), usage_event_to_json(event)))
        )

    def _queue(self, change: tuple[str, Any]) -> None:
        if len(self._changes) >= MAX_WAITING:
            self._changes.pop(0)
        self._changes.append(change)

    async def run(self) -> None:
        """The writer: every tick, what changed, in one pipeline."""
        while True:
            await asyncio.sleep(TICK_SECONDS)
            try:
                if self._watched is not None:
                    # Also with nothing to send: it renews this instance's own marks.
                    await self._watched.refresh_when_due()
                if not self._changes and not self._usage:
                    continue
                await self.flush()
                if self._failing:
                    log.info("presence is written to Redis again")
                self._failing = False
            except RedisError as error:
                if not self._failing:
                    log.warning("presence not written to Redis; trying again: %s", error)
                self._failing = True
                await asyncio.sleep(0.5)

    def _forget_quiet(self, now: float) -> None:
        """Drop the send times of sessions quiet for a while (ended elsewhere, moved)."""
        for times in (self._shown, self._noted):
            for session_id in [key for key, at in times.items() if now - at > 60]:
                del times[session_id]
        self._pruned_at = now

    async def flush(self) -> None:
        changes, self._changes = self._changes, []
        now = time.monotonic()
        if now - self._pruned_at > 60:
            self._forget_quiet(now)
        shown = self._shown
        usage: dict[str, tuple[UsageEvent, int]] = {}
        for session_id, value in self._usage.items():
            if value[0].final_units or now - shown.get(session_id, 0.0) >= DISPLAY_EVENT_SECONDS:
                usage[session_id] = value
        for session_id in usage:
            del self._usage[session_id]
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for kind, value in changes:
                    if kind == "add":
                        session_id, score, mapping = value
                        pipe.hset(self.keys.session(session_id), mapping=mapping)
                        pipe.zadd(self.keys.active, {session_id: score})
                        account = self.keys.account_active(str(mapping["account_id"]))
                        pipe.zadd(account, {session_id: score})
                    elif kind == "remove":
                        session_id, account_id = value
                        pipe.delete(self.keys.session(session_id))
                        pipe.zrem(self.keys.active, session_id)
                        pipe.zrem(self.keys.account_active(account_id), session_id)
                    else:
                        pipe.publish(*value)
                if usage:
                    self._usage_writes(pipe, usage, now)
                await pipe.execute()
        except BaseException:
            self._changes[:0] = changes
            for session_id, value in usage.items():
                self._usage.setdefault(session_id, value)
            raise
        # An HSET of usage may have recreated the entry of a session that ended in the
        # same tick; ended sessions are removed after their usage.
        ended = [value for kind, value in changes if kind == "remove"]
        if ended:
            async with self._redis.pipeline(transaction=False) as pipe:
                for session_id, _ in ended:
                    pipe.delete(self.keys.session(session_id))
                await pipe.execute()

    def _usage_writes(
        self, pipe: Pipeline, usage: dict[str, tuple[UsageEvent, int]], now: float
    ) -> None:
        """The usage events of a tick, and the collection's usage figures due, as a few
        script calls on `pipe` (in the order the events were made)."""
        shown, noted, keys = self._shown, self._noted, self.keys
        watched = None if self._watched is None else self._watched.is_watched
        entries: list[str] = []
        figures: list[int] = []
        channels: list[str] = []
        events: list[str] = []
        for session_id, (event, used) in usage.items():
            shown[session_id] = now
            if now - noted.get(session_id, 0.0) >= USAGE_NOTE_SECONDS:
                noted[session_id] = now
                entries.append(keys.session(session_id))
                figures.append(used)
            if watched is None or watched(event.account_id):
                channels.append(keys.account_channel(event.account_id))
                events.append(usage_event_to_json(event))
        for start in range(0, len(entries), PER_SCRIPT):
            end = start + PER_SCRIPT
            part = entries[start:end]
            pipe.eval(NOTE_USAGE_ALL, len(part), *part, *figures[start:end])
        for start in range(0, len(channels), PER_SCRIPT):
            end = start + PER_SCRIPT
            part = channels[start:end]
            pipe.eval(PUBLISH_ALL, len(part), *part, *events[start:end])

    # -- reads and repair ------------------------------------------------------------------

    async def active(self, account_id: str = "") -> list[ActiveUser]:
        try:
            if self._changes:
                await self.flush()  # what this instance changed is seen at once
            index = self.keys.account_active(account_id) if account_id else self.keys.active
            session_ids = [_text(item) for item in await self._redis.zrange(index, 0, -1)]
            if not session_ids:
                return []
            async with self._redis.pipeline(transaction=False) as pipe:
                for session_id in session_ids:
                    pipe.hgetall(self.keys.session(session_id))
                details = await pipe.execute()
        except RedisError as error:
            raise Unavailable("Presence (Redis) cannot be reached; try again shortly.") from error
        users = []
        stale = []
        for session_id, raw in zip(session_ids, details, strict=True):
            if not raw or (b"account_id" not in raw and "account_id" not in raw):
                stale.append(session_id)
                continue
            fields = {_text(key): _text(value) for key, value in raw.items()}
            if account_id and fields["account_id"] != account_id:
                stale.append(session_id)
                continue
            users.append(
                ActiveUser(
                    session_id=session_id,
                    account_id=fields["account_id"],
                    service_type=ServiceType(fields["service_type"]),
                    endpoint=fields["endpoint"],
                    gateway_id=fields["gateway_id"],
                    started_at=datetime.fromisoformat(fields["started_at"]).astimezone(UTC),
                    used_units=int(fields.get("used_units", 0)),
                    rate=session_rate_from_json(json.loads(fields["rate"])),
                )
            )
        if account_id and stale:
            # Left by a removal that did not reach Redis (one dropped from a full queue),
            # or by a rebuild that found the entry without its account.
            with contextlib.suppress(RedisError):
                await self._redis.zrem(index, *stale)
        return users

    async def needs_rebuild(self) -> bool:
        try:
            return not await self._redis.exists(self.keys.built)
        except RedisError:
            return False  # down: nothing to rebuild into yet

    async def rebuild_if_lost(self, sessions: Sequence[Session]) -> bool:
        """Write the collection from the database's active sessions, once (one instance
        does it; the others see the marker)."""
        try:
            if not await self._redis.set(self.keys.rebuilding, "1", nx=True, ex=30):
                return False
            try:
                present = {
                    _text(item) for item in await self._redis.zrange(self.keys.active, 0, -1)
                }
                active = {session.session_id for session in sessions}
                gone = sorted(present - active)
                accounts_of_gone = await self._accounts_of(gone)
                async with self._redis.pipeline(transaction=False) as pipe:
                    for session in sessions:
                        score = {session.session_id: session.started_at.timestamp()}
                        pipe.hset(self.keys.session(session.session_id), mapping=_entry(session))
                        pipe.zadd(self.keys.active, score)
                        pipe.zadd(self.keys.account_active(session.account_id), score)
                    for session_id, account_id in zip(gone, accounts_of_gone, strict=True):
                        pipe.delete(self.keys.session(session_id))
                        pipe.zrem(self.keys.active, session_id)
                        if account_id:
                            pipe.zrem(self.keys.account_active(account_id), session_id)
                    pipe.set(self.keys.built, datetime.now(UTC).isoformat())
                    await pipe.execute()
            finally:
                await self._redis.delete(self.keys.rebuilding)
        except RedisError as error:
            log.warning("presence not rebuilt yet: %s", error)
            return False
        return True

    async def _accounts_of(self, session_ids: Sequence[str]) -> list[str]:
        """The account of each session's entry ('' where the entry has none)."""
        if not session_ids:
            return []
        async with self._redis.pipeline(transaction=False) as pipe:
            for session_id in session_ids:
                pipe.hget(self.keys.session(session_id), "account_id")
            found = await pipe.execute()
        return [_text(account) if account else "" for account in found]
