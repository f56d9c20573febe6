"""The embedded default: real PostgreSQL and Redis from the wheels, in a data folder."""

from __future__ import annotations

import os
import pathlib

import psycopg
import pytest
import redis
from sqlalchemy.engine import make_url

from meterline.kernel.embedded import EmbeddedServers, EmbeddedStack

pytestmark = pytest.mark.embedded


def _connect(postgres_url: str, dbname: str) -> psycopg.Connection[tuple[object, ...]]:
    url = make_url(postgres_url)
    assert url.drivername == "postgresql+psycopg"
    assert url.host == "127.0.0.1"
    return psycopg.connect(
        host=url.host, port=url.port, user=url.username, dbname=dbname, autocommit=True
    )


def _pids(data_dir: pathlib.Path) -> tuple[int, int]:
    return (
        int((data_dir / "postgres.pid").read_text()),
        int((data_dir / "redis.pid").read_text()),
    )


def _assert_gone(pid: int) -> None:
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def _check_redis(servers: EmbeddedServers, value: str) -> None:
    assert servers.redis_url.startswith("redis://127.0.0.1:")
    with redis.Redis.from_url(servers.redis_url) as client:
        assert client.set("meterline:probe", value)
        assert client.get("meterline:probe") == value.encode()


def test_embedded_stack_start_use_stop_and_reuse_cluster(tmp_path: pathlib.Path) -> None:
    data_dir = tmp_path / "data"

    with EmbeddedStack(data_dir) as servers:
        pg_pid, redis_pid = _pids(data_dir)
        with _connect(servers.postgres_url, "postgres") as conn:
            conn.execute("CREATE DATABASE x")
            conn.execute("CREATE TABLE kept (v text)")
            conn.execute("INSERT INTO kept VALUES ('first run')")
        with _connect(servers.postgres_url, "x") as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        _check_redis(servers, "first")

    _assert_gone(pg_pid)
    _assert_gone(redis_pid)
    assert not (data_dir / "postgres.pid").exists()
    assert not (data_dir / "redis.pid").exists()

    # What a crashed run leaves behind: pid files naming processes that are gone.
    (data_dir / "postgres.pid").write_text(f"{pg_pid}\n")
    (data_dir / "redis.pid").write_text(f"{redis_pid}\n")
    (data_dir / "postgres" / "postmaster.pid").write_text(
        f"{pg_pid}\n{data_dir / 'postgres'}\n0\n5432\n\n127.0.0.1\n0 0\nready\n"
    )

    with EmbeddedStack(data_dir) as servers:
        pg_pid2, redis_pid2 = _pids(data_dir)
        with _connect(servers.postgres_url, "postgres") as conn:
            assert conn.execute("SELECT v FROM kept").fetchall() == [("first run",)]
        with _connect(servers.postgres_url, "x") as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        _check_redis(servers, "second")

    _assert_gone(pg_pid2)
    _assert_gone(redis_pid2)
