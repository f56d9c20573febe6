"""Child processes of a Meterline process (the services `meterline up` runs, the embedded
PostgreSQL and Redis): started so that they die with their parent, checked until they
serve, stopped in order.

A child dies with its parent through PR_SET_PDEATHSIG (Linux): the kernel sends it a
signal when the thread that forked it ends, however that happens (`kill -9` included).
Children are therefore forked from the main thread, or from one thread that lasts as long
as the process, never from a worker that may end first. Each child leads a process group
of its own, so a terminal's Ctrl-C reaches only the parent (which stops them in order)
and a child's own children can be stopped with it. Elsewhere than Linux the signal is not
available; the data folder's owner record then lets the next start stop what was left.

The signal is asked for by a small bootstrap the child runs before it becomes the real
program (`python -I -S -c` it, then exec), not by a `preexec_fn`: a `preexec_fn` makes
Python run its after-fork hooks in the forked child, and gRPC's, run there while other
threads of this process were inside gRPC, aborted the child now and then ("epoll_wait
error: Bad file descriptor"). A child started as another user (the embedded PostgreSQL
when we are root) may not reach this interpreter, and a change of user clears the
signal: it is started through util-linux's `setpriv`, which changes the user and then
asks for the signal. Python's own change of user (`user=`) would rule out its vfork, so
gRPC's fork handlers would run in the child (they aborted it, or the parent, under load).
Only where `setpriv` is missing does such a child get a `preexec_fn`.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import pwd
import queue
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

T = TypeVar("T")

SERVICE_PACKAGES = {
    "rating": "rating_service",
    "billing": "billing_manager",
    "service": "service_manager",
}
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def port_is_free(address: str) -> bool:
    """Whether a server could listen on `address` now. Bound as gRPC binds (SO_REUSEADDR),
    so a port whose last connections linger in TIME-WAIT counts as free, as it is for the
    server; only something listening there makes it taken."""
    host, _, port = address.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, int(port)))
        except OSError:
            return False
    return True


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


_DIE_WITH_PARENT = (
    "import ctypes, os, sys\n"
    "parent, signum = int(sys.argv[1]), int(sys.argv[2])\n"
    f"ctypes.CDLL(None, use_errno=True).prctl({_PR_SET_PDEATHSIG}, signum, 0, 0, 0)\n"
    "if os.getppid() != parent:\n"  # the parent died before the prctl took hold
    "    os.kill(os.getpid(), signum)\n"
    "os.execvp(sys.argv[3], sys.argv[3:])\n"
)


def _arrange_death_signal(signum: int) -> Callable[[], None]:
    """A `preexec_fn` doing what the bootstrap does, for a child started as another user.
    Runs in the forked child: it only calls prctl, getppid and kill, resolved here."""
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    parent = os.getpid()

    def arrange() -> None:
        prctl(_PR_SET_PDEATHSIG, signum, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the prctl took hold
            os.kill(os.getpid(), signum)

    return arrange


def die_with_parent(argv: Sequence[str], signum: int) -> list[str]:
    """`argv`, started so that it receives `signum` when this process goes (Linux's
    PR_SET_PDEATHSIG, through the bootstrap above; `argv` as it is elsewhere). The
    interpreter is named by its real path: a child running as another user may not reach
    a virtualenv's directory."""
    if not sys.platform.startswith("linux"):
        return list(argv)
    python = os.path.realpath(sys.executable)
    return [python, "-I", "-S", "-c", _DIE_WITH_PARENT, str(os.getpid()), str(signum), *argv]


def as_user_dying_with_parent(
    setpriv: str, argv: Sequence[str], uid: int, gid: int | None, signum: int
) -> list[str]:
    """`argv` run as user `uid` (group `gid`, or the user's own; no other groups) through
    setpriv, receiving `signum` when this process goes."""
    group = gid if gid is not None else pwd.getpwuid(uid).pw_gid
    name = signal.Signals(signum).name.removeprefix("SIG")
    return [
        setpriv,
        f"--reuid={uid}",
        f"--regid={group}",
        "--clear-groups",
        f"--pdeathsig={name}",
        "--",
        *argv,
    ]


class _LastingThread:
    """One daemon thread that forks children for the threads that may end before them."""

    def __init__(self) -> None:
        self._work: queue.SimpleQueue[tuple[Callable[[], object], queue.SimpleQueue[object]]]
        self._work = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def run(self, work: Callable[[], T]) -> T:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._serve, name="meterline-spawner", daemon=True
                )
                self._thread.start()
        answer: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._work.put((work, answer))
        result = answer.get()
        if isinstance(result, _Raised):
            raise result.error
        return result  # type: ignore[return-value]

    def _serve(self) -> None:
        while True:
            work, answer = self._work.get()
            try:
                answer.put(work())
            except BaseException as error:
                answer.put(_Raised(error))


class _Raised:
    def __init__(self, error: BaseException) -> None:
        self.error = error


_spawner = _LastingThread()


def spawn(
    argv: Sequence[str],
    log_path: Path,
    *,
    death_signal: int,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    user: int | None = None,
    group: int | None = None,
) -> subprocess.Popen[bytes]:
    """Start `argv` with its output appended to `log_path`, leading a process group of its
    own, receiving `death_signal` when this process dies (see the module's docstring)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)

    preexec: Callable[[], None] | None = None
    if user is not None and sys.platform.startswith("linux"):
        setpriv = shutil.which("setpriv")
        if setpriv is not None:
            # util-linux's setpriv changes the user, then asks for the signal: Python then
            # forks (vfork) running no after-fork hooks, as for every other child.
            command = as_user_dying_with_parent(setpriv, argv, user, group, death_signal)
            user = group = None
        else:
            command, preexec = list(argv), _arrange_death_signal(death_signal)
    else:
        command = die_with_parent(argv, death_signal)

    def start() -> subprocess.Popen[bytes]:
        with log_path.open("ab") as log:
            return subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=dict(env) if env is not None else None,
                cwd=cwd,
                user=user,
                group=group,
                extra_groups=[] if user is not None else None,
                process_group=0,
                preexec_fn=preexec,
            )

    if threading.current_thread() is threading.main_thread():
        return start()
    return _spawner.run(start)


def spawn_service(role: str, env: Mapping[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    """`python -m <the role's package>`; it drains and stops (SIGTERM) when we die."""
    return spawn(
        [sys.executable, "-m", SERVICE_PACKAGES[role]],
        log_path,
        death_signal=signal.SIGTERM,
        env=env,
    )


def wait_until_serving(
    address: str,
    process: subprocess.Popen[bytes],
    log_path: Path,
    credentials: grpc.ChannelCredentials | None,
    seconds: float = 60,
) -> None:
    """Return once the server's health check says SERVING, asked over a channel with
    `credentials` (from `tls.channel_credentials`; None: plaintext); raise with the log's
    tail if the process exits or the time runs out."""
    deadline = time.monotonic() + seconds
    last_error = ""
    if credentials is None:
        channel = grpc.insecure_channel(address)
    else:
        channel = grpc.secure_channel(address, credentials)
    with channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(
                    f"the server for {address} exited with code {process.returncode}:\n"
                    + _tail(log_path)
                )
            try:
                response = stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if response.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError as error:
                last_error = error.details() if isinstance(error, grpc.Call) else str(error)
            time.sleep(0.1)
    raise TimeoutError(
        f"{address} did not become healthy in {seconds:.0f} s"
        + (f" (last answer: {last_error})" if last_error else "")
        + ":\n"
        + _tail(log_path)
    )


def stop_processes(processes: list[subprocess.Popen[bytes]], timeout: float = 10) -> None:
    """SIGTERM to each, then SIGKILL to the process group of any still running after
    `timeout` seconds."""
    for process in processes:
        if process.poll() is None:
            process.terminate()
    for process in processes:
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_group(process.pid)
            process.wait()


def kill_group(pid: int) -> None:
    """SIGKILL to the process group `pid` leads (or to `pid` alone if it leads none)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if os.getpgid(pid) == pid:
            os.killpg(pid, signal.SIGKILL)
        else:
            os.kill(pid, signal.SIGKILL)


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
