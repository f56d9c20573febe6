"""Which exceptions mean "a store cannot be reached": the database or Redis is down,
restarting, refusing connections or out of connections. The error catalogue turns those
into UNAVAILABLE (retryable) instead of INTERNAL.

This module imports no database driver: the device SDK imports the error catalogue and
must not need one. It looks only at driver modules already in `sys.modules`; an
exception raised by a driver means that driver is loaded.

Only the connection is judged, never the SQL: a ProgrammingError, an IntegrityError, a
deadlock or a cancelled statement is not "unreachable" and stays INTERNAL (or whatever
the code above made of it).
"""

from __future__ import annotations

import sys
from typing import Literal

from meterline.kernel import errors

Outage = Literal["unreachable", "busy"]

# SQLSTATEs a server gives while it goes away or is not there yet (class 08 is "connection
# exception" as a whole): admin shutdown, crash shutdown, cannot connect now (starting up,
# shutting down, in recovery), too many connections.
_DOWN_SQLSTATES = frozenset({"57P01", "57P02", "57P03", "53300"})

# Redis connection errors that are not transient: retrying a wrong password helps nobody.
_REDIS_CONFIGURATION_ERRORS = ("AuthenticationError", "AuthorizationError")


def _psycopg_outage(error: BaseException) -> bool:
    psycopg = sys.modules.get("psycopg")
    if psycopg is None:
        return False
    if isinstance(error, psycopg.InterfaceError):  # "the connection is closed", ...
        return True
    if isinstance(error, psycopg.OperationalError):
        # No SQLSTATE: libpq itself failed (refused, timed out, server closed the
        # connection). With one: only the "server going away or not ready" states.
        state = getattr(error, "sqlstate", None)
        return state is None or state.startswith("08") or state in _DOWN_SQLSTATES
    return False


def _psycopg_pool_busy(error: BaseException) -> bool:
    psycopg_pool = sys.modules.get("psycopg_pool")
    if psycopg_pool is None:
        return False
    # No pooled connection free in time, or too many callers waiting for one.
    return isinstance(error, psycopg_pool.PoolTimeout | psycopg_pool.TooManyRequests)


def _sqlalchemy_outage(error: BaseException) -> Outage | None:
    exc = sys.modules.get("sqlalchemy.exc")
    if exc is None:
        return None
    if isinstance(error, exc.TimeoutError):  # no pooled connection free in pool_timeout
        return "busy"
    if not isinstance(error, exc.DBAPIError):
        return None
    if error.connection_invalidated:  # SQLAlchemy saw the connection drop
        return "unreachable"
    if isinstance(error, exc.OperationalError | exc.InterfaceError):
        orig = error.orig
        if _psycopg_outage(orig):
            return "unreachable"
        psycopg = sys.modules.get("psycopg")
        # Another driver's error: trust SQLAlchemy's (DB-API) classification.
        if psycopg is None or not isinstance(orig, psycopg.Error):
            return "unreachable"
    return None


def _redis_outage(error: BaseException) -> bool:
    exceptions = sys.modules.get("redis.exceptions")
    if exceptions is None:
        return False
    if not isinstance(error, exceptions.ConnectionError | exceptions.TimeoutError):
        return False
    configuration = tuple(
        getattr(exceptions, name)
        for name in _REDIS_CONFIGURATION_ERRORS
        if hasattr(exceptions, name)
    )
    return not isinstance(error, configuration)


def store_outage(error: BaseException) -> tuple[str, Outage] | None:
    """("database" | "redis", "unreachable" | "busy") if `error` means that store cannot
    serve right now, else None."""
    found = _sqlalchemy_outage(error)
    if found is not None:
        return "database", found
    if _psycopg_pool_busy(error):
        return "database", "busy"
    if _psycopg_outage(error):
        return "database", "unreachable"
    if _redis_outage(error):
        return "redis", "unreachable"
    return None


def as_unavailable(
    error: BaseException, database: str = "database", redis: str = "presence store (Redis)"
) -> errors.Unavailable | None:
    """The public UNAVAILABLE error for a store outage, naming the store as the caller
    knows it ("account database"), or None if `error` is not an outage."""
    found = store_outage(error)
    if found is None:
        return None
    store, outage = found
    name = database if store == "database" else redis
    if outage == "busy":
        return errors.Unavailable(f"The {name} is busy; try again shortly.")
    return errors.Unavailable(f"The {name} cannot be reached; try again shortly.")


def one_line(error: BaseException) -> str:
    """A short description for the log: the driver's error class and the first line of its
    message, without SQLAlchemy's statement, parameters and links."""
    orig = getattr(error, "orig", None)
    cause = orig if isinstance(orig, BaseException) else error
    lines = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {lines[0]}" if lines else type(cause).__name__
