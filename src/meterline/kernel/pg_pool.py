"""A psycopg 3 connection pool for hot paths that must also ride out a database restart.

`psycopg_pool.AsyncConnectionPool` on its own leaves three things to its user:

- It hands out pooled connections unchecked (a check is a round trip on every call), so
  after a restart the first use of each pooled connection fails. `run` runs the work
  once more when its connection turns out to be dead.
- While the database is down, a caller waits for the pool's whole timeout. Here, once a
  connection was lost, each call first tries one direct connection (shared by the
  callers of that moment): while the database refuses connections, the call fails at
  once with the driver's error, which the error catalogue makes UNAVAILABLE.
- After a long outage the pool reconnects on its own backoff (1, 2, 4, 8... seconds
  between attempts). The first direct connection that succeeds replaces the pool with a
  fresh one, so calls work again as soon as the database does.

Connections are in autocommit: each statement is its own transaction, so work given to
`run` should be one statement (or statements each safe on its own).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import psycopg
from psycopg.adapt import AdaptersMap
from psycopg.rows import dict_row
from psycopg.types.numeric import Int8Dumper
from psycopg_pool import AsyncConnectionPool, PoolClosed, PoolTimeout

from meterline.kernel import metrics
from meterline.kernel.db import CONNECT_TIMEOUT_SECONDS, libpq_dsn
from meterline.kernel.errors import Unavailable
from meterline.kernel.store_errors import one_line

log = logging.getLogger(__name__)
T = TypeVar("T")
Connection = psycopg.AsyncConnection[dict[str, Any]]

# Seconds a call may wait for a free pooled connection before it is UNAVAILABLE ("busy").
POOL_TIMEOUT_SECONDS = 5.0
# Seconds a connection beyond the pool's min_size may stay idle before it is closed.
IDLE_SECONDS = 60.0


def _adapters() -> AdaptersMap:
    """Every Python int is sent as int8: one prepared statement per query, whatever the
    size of the amounts (psycopg otherwise picks int2, int4 or int8 by value)."""
    adapters = AdaptersMap(psycopg.adapters)
    adapters.register_dumper(int, Int8Dumper)
    return adapters


def _shared(work: Coroutine[Any, Any, None]) -> asyncio.Future[None]:
    """`work` as a task several callers can await; its outcome is read even if every
    caller has gone (cancelled by its deadline), so it is never logged as lost."""
    task = asyncio.ensure_future(work)
    task.add_done_callback(lambda done: None if done.cancelled() else done.exception())
    return task


class PooledDatabase:
    """A pool of autocommit connections with dict rows, and `run` to use one."""

    def __init__(
        self,
        url: str,
        name: str,
        min_size: int = 2,
        max_size: int = 10,
        timeout: float = POOL_TIMEOUT_SECONDS,
    ) -> None:
        self._dsn = libpq_dsn(url)
        self._name = name
        self._min_size, self._max_size, self._timeout = min_size, max_size, timeout
        self._adapters = _adapters()
        self._pool = self._new_pool()
        self._lost = False
        """A connection of the current pool was lost: check the database first."""
        self._probe: asyncio.Future[None] | None = None
        self._recovery: asyncio.Future[None] | None = None
        self._retiring: set[asyncio.Task[None]] = set()
        # On /metrics: whichever pool is current (a recovery replaces it).
        metrics.track_pool(name, self, lambda db: metrics.psycopg_usage(db._pool))

    def _new_pool(self) -> AsyncConnectionPool[Connection]:
        return AsyncConnectionPool(
            self._dsn,
            min_size=self._min_size,
            max_size=self._max_size,
            kwargs={
                "autocommit": True,
                "row_factory": dict_row,
                "connect_timeout": CONNECT_TIMEOUT_SECONDS,
                "context": self._adapters,
            },
            open=False,
            timeout=self._timeout,
            # Connections a burst opened beyond min_size go after a minute idle (psycopg's
            # default is ten), so a quiet instance does not keep PostgreSQL's slots.
            max_idle=IDLE_SECONDS,
            name=self._name,
        )

    async def open(self) -> None:
        await self._pool.open(wait=False)

    async def close(self) -> None:
        for pending in (self._recovery, self._probe):
            if pending is not None:
                pending.cancel()
                with contextlib.suppress(BaseException):
                    await pending
        await asyncio.gather(*self._retiring, return_exceptions=True)
        await self._pool.close()

    async def run(self, work: Callable[[Connection], Awaitable[T]]) -> T:
        """Run `work` on a pooled connection, and once more if that connection was dead.
        Only for work that may run twice: a connection lost during a statement leaves it
        unknown whether the statement committed, so a write must be one whose repeat
        returns the first result (a keyed money movement)."""
        for attempt in (1, 2):
            if self._lost:
                await self._recover()
            pool = self._pool
            conn: Connection | None = None
            try:
                async with pool.connection() as conn:
                    return await work(conn)
            # The pool's own errors first: they are OperationalErrors too.
            except PoolClosed:
                if pool is self._pool or attempt == 2:
                    raise  # closed for good (shutting down)
                # The pool was replaced while this call waited for it.
            except PoolTimeout:
                if pool is self._pool and not self._lost:
                    # No free connection in time: busy, or the database went away while no
                    # connection was in use. A direct connection tells which.
                    try:
                        await self._reachable()
                    except psycopg.OperationalError:
                        self._lost = True
                        raise
                raise
            except (psycopg.OperationalError, psycopg.InterfaceError) as error:
                if conn is None or not conn.closed:
                    raise  # the statement failed, not the connection
                if pool is self._pool:  # not a connection of a pool replaced since
                    self._lost = True
                if attempt == 2:
                    raise
                log.info(
                    "%s: a pooled connection was lost (%s); running again",
                    self._name,
                    one_line(error),
                )
        raise AssertionError("unreachable")  # pragma: no cover

    async def _reachable(self) -> None:
        """Return if the database accepts a connection now, else raise the driver's error.
        One attempt at a time, shared by the callers that ask meanwhile."""
        if self._probe is None or self._probe.done():
            self._probe = _shared(self._connect_once())
        await asyncio.shield(self._probe)

    async def _connect_once(self) -> None:
        probe = await psycopg.AsyncConnection.connect(
            self._dsn, autocommit=True, connect_timeout=CONNECT_TIMEOUT_SECONDS
        )
        await probe.close()

    async def _recover(self) -> None:
        """After a lost connection: raise at once while the database refuses connections;
        once it accepts one, replace the pool (one replacement, shared by the callers that
        arrive meanwhile)."""
        if self._recovery is None or self._recovery.done():
            self._recovery = _shared(self._replace_when_reachable())
        await asyncio.shield(self._recovery)

    async def _replace_when_reachable(self) -> None:
        await self._reachable()
        if not self._lost:
            return
        old, self._pool = self._pool, self._new_pool()
        await self._pool.open(wait=False)
        self._lost = False
        log.info("%s: the database accepts connections again; the pool was renewed", self._name)
        retiring = asyncio.create_task(old.close())
        self._retiring.add(retiring)
        retiring.add_done_callback(self._retiring.discard)


async def run_on_pool(
    pool: AsyncConnectionPool[Any],
    work: Callable[[Any], Awaitable[T]],
    unreachable: str,
) -> T:
    """Run `work` (one transaction, or reads) on a connection of a plain psycopg_pool
    pool. A connection a restart broke is thrown away and the work tried once more on a
    checked one; a pool with no connection to give (PoolTimeout, itself an
    OperationalError, so it is caught first) is UNAVAILABLE at once, not retried."""
    for attempt in (1, 2):
        try:
            async with pool.connection() as conn:
                return await work(conn)
        except PoolTimeout as error:
            raise Unavailable(unreachable) from error
        except psycopg.OperationalError as error:
            if attempt == 2:
                raise Unavailable(unreachable) from error
            log.info("database connection lost (%s); trying again", one_line(error))
            await pool.check()
    raise AssertionError("unreachable")  # pragma: no cover
