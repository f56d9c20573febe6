"""Which exceptions the error catalogue turns into UNAVAILABLE: a store that cannot be
reached, yes; an SQL error that is a bug, never."""

from __future__ import annotations

import subprocess
import sys

import psycopg
import psycopg_pool
import pytest
import redis.exceptions
import sqlalchemy.exc
from psycopg import errors as pg

from meterline.kernel.store_errors import as_unavailable, one_line, store_outage

pytestmark = pytest.mark.unit


def _wrapped(
    kind: type[sqlalchemy.exc.DBAPIError], orig: Exception, dropped: bool = False
) -> sqlalchemy.exc.DBAPIError:
    """`orig` as SQLAlchemy raises it, with a statement and parameters."""
    statement = "SELECT secret FROM t WHERE id = %(id)s"
    return kind(statement, {"id": "x"}, orig, connection_invalidated=dropped)


@pytest.mark.parametrize(
    "error",
    [
        _wrapped(sqlalchemy.exc.OperationalError, pg.AdminShutdown("terminating"), dropped=True),
        _wrapped(sqlalchemy.exc.OperationalError, psycopg.OperationalError("connection refused")),
        _wrapped(sqlalchemy.exc.OperationalError, pg.CannotConnectNow("starting up")),
        _wrapped(sqlalchemy.exc.InterfaceError, psycopg.InterfaceError("connection is closed")),
        _wrapped(sqlalchemy.exc.ProgrammingError, pg.UndefinedTable("t"), dropped=True),
        psycopg.OperationalError("connection timeout expired"),
        pg.ConnectionFailure("lost"),
        redis.exceptions.ConnectionError("refused"),
        redis.exceptions.TimeoutError("timed out"),
    ],
)
def test_a_store_that_cannot_be_reached(error: Exception) -> None:
    found = store_outage(error)
    assert found is not None and found[1] == "unreachable"
    unavailable = as_unavailable(error, "account database")
    assert unavailable is not None and unavailable.reason == "UNAVAILABLE"


@pytest.mark.parametrize(
    "error",
    [sqlalchemy.exc.TimeoutError("QueuePool limit"), psycopg_pool.PoolTimeout("no connection")],
)
def test_a_store_out_of_connections_is_busy(error: Exception) -> None:
    assert store_outage(error) == ("database", "busy")
    unavailable = as_unavailable(error, "account database")
    assert unavailable is not None
    assert unavailable.message == "The account database is busy; try again shortly."


@pytest.mark.parametrize(
    "error",
    [
        _wrapped(sqlalchemy.exc.ProgrammingError, pg.UndefinedTable("no such table")),
        _wrapped(sqlalchemy.exc.IntegrityError, pg.UniqueViolation("duplicate key")),
        _wrapped(sqlalchemy.exc.DataError, pg.NumericValueOutOfRange("out of range")),
        _wrapped(sqlalchemy.exc.OperationalError, pg.DeadlockDetected("deadlock")),
        _wrapped(sqlalchemy.exc.OperationalError, pg.QueryCanceled("statement timeout")),
        pg.SerializationFailure("could not serialize"),
        redis.exceptions.AuthenticationError("wrong password"),
        redis.exceptions.ResponseError("WRONGTYPE"),
        sqlalchemy.exc.ArgumentError("bad"),
        ValueError("bug"),
    ],
)
def test_a_bug_or_a_conflict_is_not_an_outage(error: Exception) -> None:
    assert store_outage(error) is None
    assert as_unavailable(error) is None


def test_the_public_sentence_names_the_store_and_the_log_line_hides_the_sql() -> None:
    error = _wrapped(sqlalchemy.exc.OperationalError, psycopg.OperationalError("refused\nhint"))
    unavailable = as_unavailable(error, "tariff database")
    assert unavailable is not None
    assert unavailable.message == "The tariff database cannot be reached; try again shortly."
    redis_down = as_unavailable(redis.exceptions.ConnectionError("refused"))
    assert redis_down is not None
    assert redis_down.message == "The presence store (Redis) cannot be reached; try again shortly."
    assert one_line(error) == "OperationalError: refused"


def test_the_catalogue_needs_no_database_driver() -> None:
    """The device SDK imports the catalogue: it must not load a driver."""
    code = (
        "import sys, client_sdk, meterline.kernel.grpc_errors\n"
        "loaded = [m for m in ('sqlalchemy', 'psycopg', 'psycopg_pool', 'redis') "
        "if m in sys.modules]\n"
        "assert not loaded, loaded\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
