"""The real PostgreSQL and Redis the tests run against: the ones already running on the
standard ports (or METERLINE_TEST_POSTGRES_URL / METERLINE_TEST_REDIS_URL), else the
embedded default started from the wheels. Each test run gets databases of its own."""

from __future__ import annotations

import os
import secrets
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg
import redis

from meterline.kernel.db import drop_database, ensure_database, libpq_dsn
from meterline.kernel.embedded import (
    start_embedded_postgres,
    start_embedded_redis,
    stop_embedded_postgres,
    stop_embedded_redis,
)

DEFAULT_POSTGRES = "postgresql://postgres@127.0.0.1:5432/postgres"
DEFAULT_REDIS = "redis://127.0.0.1:6379/0"


@dataclass(frozen=True)
class StoreUrls:
    server_url: str
    rating_url: str
    billing_url: str
    service_url: str
    redis_url: str
    redis_prefix: str


def _postgres_reachable(url: str) -> bool:
    try:
        with psycopg.connect(libpq_dsn(url), connect_timeout=3):
            return True
    except psycopg.Error:
        return False


def _redis_reachable(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_connect_timeout=3).ping())
    except redis.RedisError:
        return False


@contextmanager
def test_stores() -> Iterator[StoreUrls]:
    with ExitStack() as stack:
        postgres = os.environ.get("METERLINE_TEST_POSTGRES_URL", DEFAULT_POSTGRES)
        redis_url = os.environ.get("METERLINE_TEST_REDIS_URL", DEFAULT_REDIS)
        data_dir: Path | None = None
        if not _postgres_reachable(postgres) or not _redis_reachable(redis_url):
            data_dir = Path(tempfile.mkdtemp(prefix="meterline-test-stores-"))
        if not _postgres_reachable(postgres):
            assert data_dir is not None
            postgres, _ = start_embedded_postgres(data_dir)
            stack.callback(stop_embedded_postgres, data_dir)
        if not _redis_reachable(redis_url):
            assert data_dir is not None
            redis_url, _ = start_embedded_redis(data_dir)
            stack.callback(stop_embedded_redis, data_dir)
        run = secrets.token_hex(4)
        names = {role: f"meterline_test_{run}_{role}" for role in ("rating", "billing", "service")}
        urls = {role: ensure_database(postgres, name) for role, name in names.items()}
        for name in names.values():
            stack.callback(drop_database, postgres, name)
        prefix = f"meterline-test-{run}"
        stack.callback(_drop_keys, redis_url, prefix)
        yield StoreUrls(
            server_url=postgres,
            rating_url=urls["rating"],
            billing_url=urls["billing"],
            service_url=urls["service"],
            redis_url=redis_url,
            redis_prefix=prefix,
        )


def _drop_keys(url: str, prefix: str) -> None:
    client = redis.Redis.from_url(url)
    for key in client.scan_iter(match=f"{prefix}:*"):
        client.delete(key)
