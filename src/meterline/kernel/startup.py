"""Before a service starts: its stores must answer. A database or Redis that cannot be
reached makes the process print one sentence naming the URL (password masked) and what
to check, and exit 1, instead of a traceback from deep inside a migration.

It does not wait and retry: whoever runs the service restarts it (compose's
`restart: unless-stopped` and its health-gated `depends_on`, systemd, Kubernetes), and
`meterline up` starts its embedded stores and waits for them before any service. A
service that is up when its store goes away stays up and says NOT_SERVING instead
(`kernel/health.py`)."""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

import psycopg
from redis.asyncio import Redis
from redis.exceptions import RedisError

from meterline.kernel.db import CONNECT_TIMEOUT_SECONDS, libpq_dsn
from meterline.kernel.store_errors import one_line


class StoreUnreachable(Exception):
    """A store a service needs cannot be reached at start; the message is the sentence."""


def masked(url: str) -> str:
    """`url` with its password replaced by ***, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{user}:***@{host}" + (f":{parts.port}" if parts.port is not None else "")
    return urlunsplit(parts._replace(netloc=netloc))


async def check_database(url: str, variable: str, what: str) -> None:
    """One connection to the PostgreSQL database at `url` (the value of `variable`,
    called `what` in the sentence), or StoreUnreachable."""
    try:
        conn = await psycopg.AsyncConnection.connect(
            libpq_dsn(url), connect_timeout=CONNECT_TIMEOUT_SECONDS
        )
    except psycopg.Error as error:
        raise StoreUnreachable(
            f"the {what} at {masked(url)} ({variable}) cannot be reached ({one_line(error)}). "
            "Check that PostgreSQL runs there and accepts connections from this host, and "
            "that the URL's host, port, user, password and database name are right (the "
            "database must exist)."
        ) from None
    await conn.close()


async def check_redis(url: str, variable: str) -> None:
    """A PING to the Redis at `url` (the value of `variable`), or StoreUnreachable."""
    client = Redis.from_url(url, socket_connect_timeout=CONNECT_TIMEOUT_SECONDS)
    try:
        await client.ping()
    except (RedisError, OSError) as error:
        raise StoreUnreachable(
            f"the Redis at {masked(url)} ({variable}) cannot be reached ({one_line(error)}). "
            "Check that Redis runs there and accepts connections from this host, and that "
            "the URL's host, port, password and database number are right."
        ) from None
    finally:
        await client.aclose()
