"""The gateways' durable notice streams: writing the notices the usage path decides
(final units, their lifting, low balance) off that path, in order, and serving a
gateway's watch from its cursor. The ENDED notice is written by settlement in the same
transaction as the service record (SessionStore.finish), so no termination is lost."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

from meterline.kernel.errors import InvalidArgument, Unauthenticated
from meterline.kernel.principals import Principal
from service_manager.app.gateways import GatewayAdmin, require_own_gateway
from service_manager.app.ports import GatewayRegistry, NoticeLog
from service_manager.domain.notices import GatewayNotice, subscribed

log = logging.getLogger(__name__)

BATCH = 200
"""Notices read per query while a watch catches up."""
SAFETY_POLL_SECONDS = 5.0
"""A watch looks again at least this often, even if no wakeup came (a lost NOTIFY)."""
WRITE_ATTEMPTS = 3
DRAIN_SECONDS = 2.0


class GatewayNotices:
    """Appends notices one after another (so a session's notices keep their order), in
    the background; a store blip is tried again twice."""

    def __init__(self, notices: NoticeLog) -> None:
        self._log = notices
        self._tail: asyncio.Task[None] | None = None
        self._by_session: dict[str, asyncio.Task[None]] = {}
        self.written = 0

    def send(self, notice: GatewayNotice) -> None:
        previous = self._tail
        task = asyncio.ensure_future(self._write(previous, notice))
        self._tail = task
        session_id = notice.session_id
        self._by_session[session_id] = task

        def done(finished: asyncio.Task[None]) -> None:
            if self._by_session.get(session_id) is finished:
                del self._by_session[session_id]
            if self._tail is finished:
                self._tail = None

        task.add_done_callback(done)

    async def _write(self, previous: asyncio.Task[None] | None, notice: GatewayNotice) -> None:
        if previous is not None:
            await asyncio.wait([previous])
        for attempt in range(1, WRITE_ATTEMPTS + 1):
            try:
                await self._log.append(notice)
                self.written += 1
                return
            except Exception as error:  # a store blip: the notice must not be dropped lightly
                if attempt == WRITE_ATTEMPTS:
                    log.warning(
                        "session %s: %s notice for gateway %s not written: %s",
                        notice.session_id,
                        notice.kind,
                        notice.gateway_id,
                        error,
                    )
                    return
                await asyncio.sleep(0.2 * attempt)

    async def drain(self, session_id: str) -> None:
        """Wait (briefly) until the session's queued notices are written, so the ENDED
        notice settlement writes comes after them."""
        task = self._by_session.get(session_id)
        if task is not None:
            await asyncio.wait([task], timeout=DRAIN_SECONDS)

    async def close(self) -> None:
        if self._tail is not None:
            await asyncio.wait([self._tail], timeout=DRAIN_SECONDS)


class GatewayWatch:
    """WatchTerminations: SUBSCRIBED at once, then every notice after the cursor, in
    order, as they are written (by any instance); an open watch is the gateway's
    liveness; the watch ends with UNAUTHENTICATED when the caller's token expires."""

    def __init__(
        self,
        notices: NoticeLog,
        registry: GatewayRegistry,
        admin: GatewayAdmin,
        liveness: timedelta,
    ) -> None:
        self._log = notices
        self._registry = registry
        self._admin = admin
        self._touch_every = max(liveness.total_seconds() / 3, 0.5)

    async def notices(
        self,
        principal: Principal,
        gateway_id: str,
        resume_after: int,
        only_new: bool,
        expires_at: float,
    ) -> AsyncIterator[GatewayNotice]:
        require_own_gateway(principal, gateway_id, "watch its notices")
        if resume_after < 0:
            raise InvalidArgument("resume_after cannot be negative.")
        await self._admin.registered(gateway_id)
        oldest, newest = await self._log.bounds(gateway_id)
        if resume_after > newest:
            raise InvalidArgument(
                f"resume_after {resume_after} is beyond the newest notice of gateway "
                f"{gateway_id} ({newest}); resume after a cursor this stream gave, or 0.",
                reason="BAD_CURSOR",
            )
        cursor = newest if only_new else resume_after
        expired = not only_new and resume_after > 0 and resume_after + 1 < oldest
        await self._touch(gateway_id)
        touched_at = time.monotonic()
        yield subscribed(gateway_id, cursor, expired)
        while True:
            if time.time() >= expires_at:
                raise Unauthenticated(
                    "The access token of this watch has expired; open the watch again with "
                    "a new token, resuming after the last cursor handled.",
                    reason="TOKEN_EXPIRED",
                )
            mark = self._log.mark(gateway_id)
            batch = await self._log.after(gateway_id, cursor, BATCH)
            for notice in batch:
                yield notice
                cursor = notice.cursor
            if len(batch) == BATCH:
                continue
            if time.monotonic() - touched_at >= self._touch_every:
                await self._touch(gateway_id)
                touched_at = time.monotonic()
            timeout = min(
                SAFETY_POLL_SECONDS,
                max(expires_at - time.time(), 0.0),
                max(self._touch_every - (time.monotonic() - touched_at), 0.0),
            )
            await self._log.wait(gateway_id, mark, timeout)

    async def _touch(self, gateway_id: str) -> None:
        try:
            await self._registry.seen([gateway_id], datetime.now(UTC))
        except Exception as error:  # liveness is best effort: the watch goes on
            log.info("gateway %s: liveness not written: %s", gateway_id, error)
