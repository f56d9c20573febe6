"""Each gateway's durable notice stream in the service database (`gateway_notices`).

A notice's cursor is taken from its gateway's row (`last_notice_cursor + 1`) in the
statement that inserts it: the row lock is held until the commit, so a gateway's cursors
commit in order and a reader never sees cursor n + 1 before n. The same statement
`NOTIFY`s the gateway's id; each instance `LISTEN`s on one connection and wakes its
watches of that gateway, whichever instance wrote the notice. A watch also looks again
every few seconds, so a notification lost while the listening connection reconnects
only delays a notice."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import datetime
from typing import Any

import psycopg

from meterline.kernel.db import CONNECT_TIMEOUT_SECONDS, libpq_dsn
from meterline.kernel.pg_pool import Connection, PooledDatabase
from service_manager.domain.notices import GatewayNotice, NoticeKind
from service_manager.domain.sessions import TerminationReason

log = logging.getLogger(__name__)

CHANNEL = "meterline_gateway_notices"
PRUNE_BATCH = 10_000
_COLUMNS = (
    "gateway_id, cursor, kind, session_id, account_id, reason, message, balance_micros, "
    "seconds_left, granted_units, created_at"
)

APPEND_SQL = (
    "WITH taken AS (UPDATE gateways SET last_notice_cursor = last_notice_cursor + 1 "
    "WHERE gateway_id = %(gateway_id)s RETURNING last_notice_cursor AS cursor), "
    "added AS (INSERT INTO gateway_notices (gateway_id, cursor, kind, session_id, account_id, "
    "reason, message, balance_micros, seconds_left, granted_units) "
    "SELECT %(gateway_id)s, cursor, %(kind)s, %(session_id)s, %(account_id)s, %(reason)s, "
    "%(message)s, %(balance_micros)s, %(seconds_left)s, %(granted_units)s FROM taken "
    "RETURNING cursor) "
    f"SELECT cursor, pg_notify('{CHANNEL}', %(gateway_id)s) FROM added"
)
"""Appends one notice (its cursor in the result); usable inside another transaction."""


def append_params(notice: GatewayNotice) -> dict[str, Any]:
    return {
        "gateway_id": notice.gateway_id,
        "kind": notice.kind.value,
        "session_id": notice.session_id,
        "account_id": notice.account_id,
        "reason": notice.reason.value if notice.reason else None,
        "message": notice.message,
        "balance_micros": notice.balance_micros,
        "seconds_left": notice.seconds_left,
        "granted_units": notice.granted_units,
    }


def notice_from_row(row: dict[str, Any]) -> GatewayNotice:
    return GatewayNotice(
        gateway_id=row["gateway_id"],
        session_id=row["session_id"],
        account_id=row["account_id"],
        kind=NoticeKind(row["kind"]),
        message=row["message"],
        reason=TerminationReason(row["reason"]) if row["reason"] else None,
        balance_micros=row["balance_micros"],
        seconds_left=row["seconds_left"],
        granted_units=row["granted_units"],
        cursor=row["cursor"],
        created_at=row["created_at"],
    )


class PostgresNoticeLog:
    """The NoticeLog port on PostgreSQL, with one LISTEN connection per instance."""

    def __init__(self, database: PooledDatabase, database_url: str) -> None:
        self._db = database
        self._dsn = libpq_dsn(database_url)
        self._marks: dict[str, int] = {}
        self._waiters: dict[str, set[asyncio.Future[None]]] = {}
        self._listener: asyncio.Task[None] | None = None

    # -- writing and reading -----------------------------------------------------------------

    async def append(self, notice: GatewayNotice) -> int:
        async def work(conn: Connection) -> dict[str, Any] | None:
            return await (await conn.execute(APPEND_SQL, append_params(notice))).fetchone()

        row = await self._db.run(work)
        if row is None:
            raise LookupError(f"no gateway {notice.gateway_id!r} to write a notice for")
        return int(row["cursor"])

    async def after(self, gateway_id: str, cursor: int, limit: int) -> list[GatewayNotice]:
        async def work(conn: Connection) -> list[dict[str, Any]]:
            rows = await conn.execute(
                f"SELECT {_COLUMNS} FROM gateway_notices WHERE gateway_id = %s AND cursor > %s "
                "ORDER BY cursor LIMIT %s",
                (gateway_id, cursor, limit),
            )
            return await rows.fetchall()

        return [notice_from_row(row) for row in await self._db.run(work)]

    async def bounds(self, gateway_id: str) -> tuple[int, int]:
        async def work(conn: Connection) -> dict[str, Any] | None:
            rows = await conn.execute(
                "SELECT g.last_notice_cursor AS newest, (SELECT min(n.cursor) FROM "
                "gateway_notices n WHERE n.gateway_id = g.gateway_id) AS oldest "
                "FROM gateways g WHERE g.gateway_id = %s",
                (gateway_id,),
            )
            return await rows.fetchone()

        row = await self._db.run(work)
        if row is None:
            return 1, 0
        newest = int(row["newest"])
        oldest = int(row["oldest"]) if row["oldest"] is not None else newest + 1
        return oldest, newest

    async def prune(self, before: datetime) -> int:
        deleted = 0
        while True:

            async def work(conn: Connection) -> int:
                done = await conn.execute(
                    "DELETE FROM gateway_notices WHERE ctid IN (SELECT ctid FROM "
                    "gateway_notices WHERE created_at < %s LIMIT %s)",
                    (before, PRUNE_BATCH),
                )
                return done.rowcount

            count = await self._db.run(work)
            deleted += count
            if count < PRUNE_BATCH:
                return deleted

    # -- wakeups -----------------------------------------------------------------------------

    def mark(self, gateway_id: str) -> int:
        return self._marks.get(gateway_id, 0)

    async def wait(self, gateway_id: str, mark: int, within: float) -> None:
        if self._marks.get(gateway_id, 0) != mark or within <= 0:
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiters = self._waiters.setdefault(gateway_id, set())
        waiters.add(waiter)
        try:
            await asyncio.wait([waiter], timeout=within)
        finally:
            waiters.discard(waiter)
            if not waiters:
                self._waiters.pop(gateway_id, None)

    def _wake(self, gateway_id: str | None) -> None:
        """A notice was written for the gateway (None: for any; after a reconnection)."""
        everyone = set(self._marks) | set(self._waiters)
        targets = everyone if gateway_id is None else {gateway_id}
        for target in targets:
            self._marks[target] = self._marks.get(target, 0) + 1
            for waiter in self._waiters.get(target, ()):
                if not waiter.done():
                    waiter.set_result(None)

    def start(self) -> None:
        if self._listener is None:
            self._listener = asyncio.create_task(self._listen())

    async def _listen(self) -> None:
        failing = False
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(
                    self._dsn, autocommit=True, connect_timeout=CONNECT_TIMEOUT_SECONDS
                )
                async with conn:
                    await conn.execute(f"LISTEN {CHANNEL}")
                    if failing:
                        log.info("gateway notices: listening again")
                    failing = False
                    self._wake(None)  # anything written while not listening
                    async for notification in conn.notifies():
                        self._wake(notification.payload)
            except psycopg.Error as error:
                if not failing:
                    log.warning("gateway notices: not listening (%s); trying again", error)
                failing = True
                self._wake(None)
                await asyncio.sleep(1.0)

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
            self._listener = None
