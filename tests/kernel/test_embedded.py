"""The embedded default: real PostgreSQL and Redis from the wheels, in a data folder, owned
by the process that started them."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import psycopg
import pytest
import redis
from sqlalchemy.engine import make_url

from meterline.kernel.embedded import (
    EmbeddedError,
    EmbeddedServers,
    EmbeddedStack,
    start_embedded_postgres,
)

pytestmark = pytest.mark.embedded

# A process that starts both servers in a folder, prints their pids and waits.
OWNER = """
import json, pathlib, sys, time
from meterline.kernel.embedded import EmbeddedStack
with EmbeddedStack(pathlib.Path(sys.argv[1])) as servers:
    print(json.dumps([servers.postgres_pid, servers.redis_pid]), flush=True)
    time.sleep(600)
"""


def _connect(postgres_url: str, dbname: str) -> psycopg.Connection[tuple[object, ...]]:
    url = make_url(postgres_url)
    assert url.drivername == "postgresql+psycopg"
    assert url.host == "127.0.0.1"
    return psycopg.connect(
        host=url.host, port=url.port, user=url.username, dbname=dbname, autocommit=True
    )


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    status = pathlib.Path(f"/proc/{pid}/status")
    return status.exists() and "zombie" in status.read_text()


def _wait_gone(pids: list[int], seconds: float = 15) -> None:
    deadline = time.monotonic() + seconds
    while not all(_gone(pid) for pid in pids):
        assert time.monotonic() < deadline, f"still running: {[p for p in pids if not _gone(p)]}"
        time.sleep(0.1)


def _check_redis(servers: EmbeddedServers, value: str) -> None:
    assert servers.redis_url.startswith("redis://127.0.0.1:")
    with redis.Redis.from_url(servers.redis_url) as client:
        assert client.set("meterline:probe", value)
        assert client.get("meterline:probe") == value.encode()


def _owner(data_dir: pathlib.Path) -> tuple[subprocess.Popen[str], list[int]]:
    process = subprocess.Popen(
        [sys.executable, "-c", OWNER, str(data_dir)], stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    assert line, "the owner process did not start its servers"
    return process, json.loads(line)


def test_embedded_stack_start_use_stop_and_reuse_cluster(tmp_path: pathlib.Path) -> None:
    data_dir = tmp_path / "data"

    with EmbeddedStack(data_dir) as servers:
        with _connect(servers.postgres_url, "postgres") as conn:
            conn.execute("CREATE DATABASE x")
            conn.execute("CREATE TABLE kept (v text)")
            conn.execute("INSERT INTO kept VALUES ('first run')")
        _check_redis(servers, "first")
    _wait_gone([servers.postgres_pid, servers.redis_pid], seconds=1)

    # What a crashed run leaves behind: a postmaster.pid naming a process that is gone.
    (data_dir / "postgres" / "postmaster.pid").write_text(
        f"{servers.postgres_pid}\n{data_dir / 'postgres'}\n0\n5432\n\n127.0.0.1\n0 0\nready\n"
    )
    with EmbeddedStack(data_dir) as again:
        with _connect(again.postgres_url, "postgres") as conn:
            assert conn.execute("SELECT v FROM kept").fetchall() == [("first run",)]
        with _connect(again.postgres_url, "x") as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        _check_redis(again, "second")
    _wait_gone([again.postgres_pid, again.redis_pid], seconds=1)


def test_kill_9_of_the_owner_takes_its_servers_down(tmp_path: pathlib.Path) -> None:
    owner, pids = _owner(tmp_path / "data")
    assert not any(_gone(pid) for pid in pids)
    owner.send_signal(signal.SIGKILL)
    owner.wait()
    _wait_gone(pids)
    # The folder is free again: a new owner starts on the same cluster.
    with (
        EmbeddedStack(tmp_path / "data") as servers,
        _connect(servers.postgres_url, "postgres") as conn,
    ):
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_a_second_process_is_refused_while_the_first_runs(tmp_path: pathlib.Path) -> None:
    owner, pids = _owner(tmp_path / "data")
    try:
        with pytest.raises(EmbeddedError, match=f"another running process \\(pid {owner.pid}\\)"):
            start_embedded_postgres(tmp_path / "data")
        assert not any(_gone(pid) for pid in pids)  # the refusal touched nothing of theirs
    finally:
        owner.terminate()
        owner.wait()
    _wait_gone(pids)


def test_an_interrupted_initdb_is_one_sentence(tmp_path: pathlib.Path) -> None:
    pgdata = tmp_path / "data" / "postgres"
    pgdata.mkdir(parents=True)
    (pgdata / "base").mkdir()  # initdb got this far, no PG_VERSION yet
    with pytest.raises(EmbeddedError) as raised:
        start_embedded_postgres(tmp_path / "data")
    assert "initdb was interrupted" in str(raised.value)
    assert "remove that folder" in str(raised.value)
    assert "\n" not in str(raised.value)


def test_a_cluster_of_another_postgresql_version_is_one_sentence(tmp_path: pathlib.Path) -> None:
    pgdata = tmp_path / "data" / "postgres"
    pgdata.mkdir(parents=True)
    (pgdata / "PG_VERSION").write_text("13\n")
    with pytest.raises(EmbeddedError) as raised:
        start_embedded_postgres(tmp_path / "data")
    assert "holds a PostgreSQL 13 cluster" in str(raised.value)
    assert "\n" not in str(raised.value)
