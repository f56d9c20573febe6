"""`meterline up`: the stores (the configured ones, or the embedded default) and the three
services, each its own process, on this machine, with TLS: development certificates made
once into DATA_DIR/tls unless certificates (or plaintext) are configured.

A stack owns its data folder: `up` holds DATA_DIR/stack.lock (an flock, let go by the
kernel however the process ends) for as long as it runs, and writes its pid and its
children there; a second `up` on the folder is refused, `meterline status` and
`meterline down` find the running one through it. Every child dies with `up`
(kernel/processes.py). A folder whose stack ended without cleaning up (its lock record or
stack.json left behind) is recovered by the next `up` or `down`, which say so.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

import psutil  # type: ignore[import-untyped]

from meterline.kernel.config import (
    ConfigError,
    Endpoints,
    Settings,
    Stores,
    TlsSettings,
    token_secret,
)
from meterline.kernel.db import ensure_database
from meterline.kernel.dev_certificates import ensure_dev_certificates
from meterline.kernel.embedded import (
    EmbeddedError,
    start_embedded_postgres,
    start_embedded_redis,
    stop_embedded_postgres,
    stop_embedded_redis,
)
from meterline.kernel.processes import (
    kill_group,
    port_is_free,
    spawn,
    spawn_service,
    stop_processes,
    wait_until_serving,
)
from meterline.kernel.tls import channel_credentials

log = logging.getLogger(__name__)

STATE_FILE = "stack.json"
LOCK_FILE = "stack.lock"
TLS_DIR = "tls"
ROLES = ("rating", "billing", "service")
SERVICE_NAMES = {
    "rating": "the rating service",
    "billing": "the billing manager",
    "service": "the service manager",
}
DOWN_TIMEOUT = 60.0
"""Seconds `meterline down` waits for the stack to stop before it kills it."""


class StackError(RuntimeError):
    """The stack could not start (or stop); the message says why and what to do."""


class Progress(Protocol):
    """What `up` tells its user while it starts: `begin` a part, then it is `ready`, and
    `note`s between (the CLI shows them; `Silent` says nothing)."""

    def begin(self, what: str) -> None:
        """`what` starts now ("PostgreSQL (embedded)")."""

    def ready(self, text: str) -> None:
        """The part begun last is ready; `text` says where ("PostgreSQL on ...")."""

    def note(self, text: str) -> None:
        """Something the user should know ("made development certificates in ...")."""


class Silent:
    def begin(self, what: str) -> None:
        pass

    def ready(self, text: str) -> None:
        pass

    def note(self, text: str) -> None:
        pass


@dataclass
class RunningStack:
    endpoints: Endpoints
    stores: Stores
    secret: str
    log_dir: Path
    embedded: bool
    client_tls: TlsSettings
    """What a client of this stack uses: its CA, and a client certificate for servers that
    require one."""
    made_certificates: Path | None = None
    """The folder development certificates were made in by this start, if they were."""
    processes: dict[str, int] = field(default_factory=dict)
    """The pid of each child: postgres, redis, rating, billing, service, web."""
    web_url: str = ""
    """Where the end users' web page answers (https://host:port)."""


@dataclass(frozen=True)
class StackState:
    """What stack.json says about the stack that runs from a data folder."""

    pid: int
    started_at: str
    endpoints: Endpoints
    stores: Stores
    embedded: bool
    tls: TlsSettings
    processes: dict[str, int]
    web_url: str = ""
    """Where the end users' web page answers ('' for a stack from before it had one)."""


def _tls_of(state: dict[str, Any]) -> TlsSettings:
    tls = state["tls"]

    def path(key: str) -> Path | None:
        value = tls.get(key)
        return Path(value) if value else None

    if tls.get("plaintext"):
        return TlsSettings(plaintext=True)
    return TlsSettings(
        ca_file=path("ca_file"), cert_file=path("cert_file"), key_file=path("key_file")
    )


def metrics_addresses(address: str) -> dict[str, str]:
    """Each service's metrics address under `meterline up`, from one
    METERLINE_METRICS_ADDRESS (unset: none): the rating service takes host:port, the
    billing manager the next port, the service manager the one after (port 0: each picks
    its own, as its log says). One address for three processes could serve none."""
    if not address:
        return {}
    host, _, port = address.rpartition(":")
    if not port.isdigit() or int(port) > 65535:
        raise StackError(
            f"METERLINE_METRICS_ADDRESS {address!r} is not host:port (e.g. 127.0.0.1:9464)"
        )
    if int(port) + len(ROLES) - 1 > 65535:
        raise StackError(
            f"METERLINE_METRICS_ADDRESS {address!r}: the services take this port and the next "
            "two, so it must be at most 65533"
        )
    first = int(port)
    return {role: f"{host}:{first + index if first else 0}" for index, role in enumerate(ROLES)}


def read_state(data_dir: Path) -> StackState | None:
    """The stack.json of `data_dir`, if there is a readable one (it may be stale: see
    `stack_owner`)."""
    try:
        state = json.loads((data_dir / STATE_FILE).read_text())
        return StackState(
            pid=int(state["pid"]),
            started_at=str(state.get("started_at", "")),
            endpoints=Endpoints(**state["endpoints"]),
            stores=Stores(**state["stores"]),
            embedded=bool(state["embedded"]),
            tls=_tls_of(state),
            processes={str(k): int(v) for k, v in state.get("processes", {}).items()},
            web_url=str(state.get("web_url") or ""),
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None


def running_stack_tls(data_dir: Path) -> TlsSettings | None:
    """The client TLS recorded in `data_dir`'s stack.json (the CA and client certificate
    of the stack `meterline up` runs there), if there is one; only its `tls` part is read."""
    try:
        return _tls_of(json.loads((data_dir / STATE_FILE).read_text()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


# -- the folder's owner ---------------------------------------------------------------------


def _record(text: str) -> tuple[int | None, dict[str, tuple[int, float]]]:
    """The owner's pid and its children (pid, start time) from a lock file's text."""
    first, _, rest = text.partition("\n")
    pid = int(first) if first.strip().isdigit() else None
    try:
        children = {name: (int(p), float(t)) for name, (p, t) in json.loads(rest or "{}").items()}
    except (ValueError, TypeError, AttributeError):
        children = {}
    return pid, children


def stack_owner(data_dir: Path) -> int | None:
    """The pid of the `meterline up` that holds `data_dir`, or None if none runs."""
    path = data_dir / LOCK_FILE
    try:
        descriptor = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            pid, _ = _record(os.read(descriptor, 65536).decode(errors="replace"))
            return pid or 0
        fcntl.flock(descriptor, fcntl.LOCK_UN)
        return None
    finally:
        os.close(descriptor)


class FolderLock:
    """The lock a running stack holds on its data folder, and its record there: the owner's
    pid on the first line, its children (name: [pid, start time]) as JSON after it."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self._descriptor: int | None = None
        self._children: dict[str, tuple[int, float]] = {}
        self.previous = ""
        """The record found on taking the lock: non-empty when a stack ended uncleanly."""

    def acquire(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(self.data_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        # A `status` or `down` looks with a shared lock for an instant: try a few times.
        for attempt in range(10):
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if attempt == 9:
                    pid, _ = _record(os.read(descriptor, 65536).decode(errors="replace"))
                    os.close(descriptor)
                    raise StackError(
                        f"a stack (pid {pid or 'unknown'}) is running here ({self.data_dir}); "
                        "`meterline down` stops it"
                    ) from None
                time.sleep(0.05)
        self.previous = os.pread(descriptor, 65536, 0).decode(errors="replace")
        self._descriptor = descriptor
        self._write()

    def add(self, name: str, pid: int) -> None:
        """Record a child, so that a next start can stop it should we end without doing so
        (where children cannot be made to die with us)."""
        try:
            started = psutil.Process(pid).create_time()
        except psutil.Error:
            started = 0.0
        self._children[name] = (pid, started)
        self._write()

    def _write(self) -> None:
        assert self._descriptor is not None
        text = f"{os.getpid()}\n{json.dumps(self._children)}\n".encode()
        os.ftruncate(self._descriptor, 0)
        os.pwrite(self._descriptor, text, 0)

    def release(self) -> None:
        """An empty record: this stack ended cleanly. Then let go of the lock."""
        if self._descriptor is None:
            return
        os.ftruncate(self._descriptor, 0)
        os.close(self._descriptor)
        self._descriptor = None


def _stop_leftovers(children: dict[str, tuple[int, float]]) -> list[str]:
    """Stop the children of a dead stack that still run (the same process: same start
    time); 'postgres pid 123', ... of those stopped."""
    stopped = []
    for name, (pid, started) in children.items():
        try:
            process = psutil.Process(pid)
            if started and abs(process.create_time() - started) > 1:
                continue  # the pid was reused by another process
            process.send_signal(signal.SIGINT if name == "postgres" else signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except psutil.TimeoutExpired:
                kill_group(pid)
        except psutil.Error:
            continue
        stopped.append(f"{name} pid {pid}")
    return stopped


def recover(data_dir: Path, previous: str) -> str | None:
    """Clear what a stack that ended without stopping left in `data_dir` (its record
    `previous`, its stack.json, children still running): a sentence saying so, or None
    when there was nothing to clear."""
    pid, children = _record(previous)
    state = read_state(data_dir)
    if pid is None and state is None:
        return None
    pid = pid or (state.pid if state else None)
    stopped = _stop_leftovers(children)
    (data_dir / STATE_FILE).unlink(missing_ok=True)
    sentence = f"a stack (pid {pid}) ended here without stopping; recovered its data folder"
    if stopped:
        sentence += f" and stopped what it left running ({', '.join(stopped)})"
    return sentence


def stop_stack(data_dir: Path, timeout: float = DOWN_TIMEOUT) -> str:
    """`meterline down`: stop the stack running from `data_dir` (SIGTERM: it stops its
    services, then its stores; SIGKILL after `timeout`, its children die with it). A
    sentence saying what was done."""
    pid = stack_owner(data_dir)
    if pid is None:
        lock = FolderLock(data_dir)
        if not (data_dir / LOCK_FILE).exists() and read_state(data_dir) is None:
            return f"no stack runs in {data_dir}"
        lock.acquire()
        try:
            recovered = recover(data_dir, lock.previous)
        finally:
            lock.release()
        return f"no stack runs in {data_dir}" + (f"; {recovered}" if recovered else "")
    if not pid:
        raise StackError(f"a stack holds {data_dir} but its record names no process")
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return f"no stack runs in {data_dir}"
    deadline = time.monotonic() + timeout
    while stack_owner(data_dir) is not None:
        if time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            return f"the stack (pid {pid}) did not stop within {timeout:.0f} s; killed it"
        time.sleep(0.1)
    return f"stopped the stack (pid {pid})"


# -- starting it -------------------------------------------------------------------------------


class LocalStack:
    def __init__(self, settings: Settings, progress: Progress | None = None) -> None:
        self._settings = settings
        self._progress: Progress = progress or Silent()
        self._exit = ExitStack()
        self._processes: list[subprocess.Popen[bytes]] = []
        self._lock = FolderLock(settings.data_dir)
        self.recovered: str | None = None
        """The sentence of a stale folder recovered by this start, if it was."""

    @contextlib.contextmanager
    def _part(self, what: str) -> Iterator[Callable[[str], None]]:
        """Begin `what`; the caller says where it is ready with the function it gets."""
        started = time.monotonic()
        self._progress.begin(what)
        said: list[str] = []
        yield said.append
        self._progress.ready(f"{said[0] if said else what} ({time.monotonic() - started:.1f} s)")

    def _stores(self, running: RunningStack) -> tuple[Stores, bool]:
        stores = self._settings.stores
        embedded_dir = self._settings.data_dir / "embedded"
        embedded = False
        urls = (
            stores.rating_database_url,
            stores.billing_database_url,
            stores.service_database_url,
        )
        try:
            if not all(urls):
                with self._part(f"PostgreSQL (embedded, in {embedded_dir})") as ready:
                    server_url, pid = start_embedded_postgres(embedded_dir)
                    self._exit.callback(stop_embedded_postgres, embedded_dir)
                    self._lock.add("postgres", pid)
                    running.processes["postgres"] = pid
                    stores = replace(
                        stores,
                        rating_database_url=stores.rating_database_url
                        or ensure_database(server_url, "meterline_rating"),
                        billing_database_url=stores.billing_database_url
                        or ensure_database(server_url, "meterline_billing"),
                        service_database_url=stores.service_database_url
                        or ensure_database(server_url, "meterline_service"),
                    )
                    ready(f"PostgreSQL ready on {server_url.split('@')[-1].split('/')[0]}")
                embedded = True
            if not stores.redis_url:
                with self._part("Redis (embedded)") as ready:
                    redis_url, pid = start_embedded_redis(embedded_dir)
                    self._exit.callback(stop_embedded_redis, embedded_dir)
                    self._lock.add("redis", pid)
                    running.processes["redis"] = pid
                    ready(f"Redis ready on {redis_url.removeprefix('redis://').split('/')[0]}")
                embedded = True
                stores = replace(stores, redis_url=redis_url)
        except EmbeddedError as error:
            raise StackError(str(error)) from error
        return stores, embedded

    def __enter__(self) -> RunningStack:
        try:
            return self._start()
        except BaseException:
            self.close()
            raise

    def _tls(self) -> tuple[dict[str, str], TlsSettings, Path | None]:
        """The services' TLS environment, their clients' TLS, and the folder development
        certificates were made in now (if they were)."""
        tls = self._settings.tls
        if tls.plaintext or tls.cert_file:
            # Configured: the services read the same variables from the environment.
            return {}, tls, None
        directory = (self._settings.data_dir / TLS_DIR).resolve()
        try:
            certificates, made = ensure_dev_certificates(directory)
        except OSError as error:
            raise StackError(
                f"cannot make development certificates in {directory}: "
                f"{error.strerror or error}; set METERLINE_DATA_DIR to a folder you can write"
            ) from error
        env = {
            "METERLINE_TLS_CERT_FILE": str(certificates.server_cert),
            "METERLINE_TLS_KEY_FILE": str(certificates.server_key),
            "METERLINE_TLS_CA_FILE": str(certificates.ca),
        }
        client = TlsSettings(
            ca_file=certificates.ca,
            cert_file=certificates.client_cert,
            key_file=certificates.client_key,
        )
        return env, client, directory if made else None

    def _start(self) -> RunningStack:
        # First: whose folder this is. A second `up` must touch nothing of the first's.
        try:
            self._lock.acquire()
        except OSError as error:
            raise StackError(
                f"cannot use {self._settings.data_dir} as the data folder: "
                f"{error.strerror or error}; set METERLINE_DATA_DIR to a folder you can write"
            ) from error
        self._exit.callback(self._lock.release)
        self.recovered = recover(self._settings.data_dir, self._lock.previous)
        if self.recovered:
            self._progress.note(self.recovered)
        endpoints = self._settings.endpoints
        for role in ROLES:
            address = getattr(endpoints, role)
            if not port_is_free(address):
                raise StackError(
                    f"{address} (the {role} service's address) is in use by another program: "
                    f"stop it, or set METERLINE_{role.upper()}_ADDRESS to another port"
                )
        if not port_is_free(self._settings.web.address):
            raise StackError(
                f"{self._settings.web.address} (the web page's address) is in use by another "
                "program: stop it, or set METERLINE_WEB_ADDRESS to another port"
            )
        metrics = metrics_addresses(self._settings.metrics_address)
        for role, address in metrics.items():
            if not address.endswith(":0") and not port_is_free(address):
                raise StackError(
                    f"{address} ({SERVICE_NAMES[role]}'s metrics, from METERLINE_METRICS_ADDRESS) "
                    "is in use by another program: stop it, or set METERLINE_METRICS_ADDRESS "
                    "to another port (the three services take it and the next two)"
                )
        try:
            secret = token_secret(self._settings, create=True)
        except ConfigError as error:
            raise StackError(str(error)) from error
        tls_env, client_tls, made_certificates = self._tls()
        if made_certificates:
            self._progress.note(f"made development certificates in {made_certificates}")
        try:
            credentials = channel_credentials(client_tls)
        except ConfigError as error:
            raise StackError(str(error)) from error
        log_dir = self._settings.data_dir / "logs"
        running = RunningStack(
            endpoints, Stores(), secret, log_dir, False, client_tls, made_certificates
        )
        stores, embedded = self._stores(running)
        running.stores, running.embedded = stores, embedded
        env = {
            **os.environ,
            "METERLINE_RATING_DATABASE_URL": stores.rating_database_url,
            "METERLINE_BILLING_DATABASE_URL": stores.billing_database_url,
            "METERLINE_SERVICE_DATABASE_URL": stores.service_database_url,
            "METERLINE_REDIS_URL": stores.redis_url,
            "METERLINE_REDIS_PREFIX": stores.redis_prefix,
            "METERLINE_TOKEN_SECRET": secret,
            "METERLINE_RATING_ADDRESS": endpoints.rating,
            "METERLINE_BILLING_ADDRESS": endpoints.billing,
            "METERLINE_SERVICE_ADDRESS": endpoints.service,
            **tls_env,
        }
        # The service manager needs the other two, so it starts last.
        for role in ROLES:
            address = getattr(endpoints, role)
            log_path = log_dir / f"{role}.log"
            role_env = {**env, "METERLINE_METRICS_ADDRESS": metrics[role]} if metrics else env
            with self._part(SERVICE_NAMES[role]) as ready:
                process = spawn_service(role, role_env, log_path)
                self._processes.append(process)
                self._lock.add(role, process.pid)
                running.processes[role] = process.pid
                try:
                    wait_until_serving(address, process, log_path, credentials)
                except (RuntimeError, TimeoutError) as error:
                    raise StackError(
                        f"{SERVICE_NAMES[role]} did not start ({_first_line(str(error))}); "
                        f"the last line of its log {log_path}: {_last_log_line(log_path)}"
                    ) from error
                served = ""
                if metrics:
                    served = (
                        f", metrics on a free port (its log {log_path} says which)"
                        if metrics[role].endswith(":0")
                        else f", metrics on http://{metrics[role]}/metrics"
                    )
                ready(f"{SERVICE_NAMES[role]} serving on {address}{served}")
            log.info("%s service serving on %s (log: %s)", role, address, log_path)
        self._start_web(running, env, tls_env)
        self._write_state(running)
        return running

    def _start_web(
        self, running: RunningStack, env: dict[str, str], tls_env: dict[str, str]
    ) -> None:
        """The end users' web page beside the services: a client of theirs, serving HTTPS
        with their certificate (docs/web.md)."""
        from meterline.web.server import page_url, wait_until_answering

        address = self._settings.web.address
        page_tls = (
            TlsSettings(ca_file=Path(tls_env["METERLINE_TLS_CA_FILE"]))
            if tls_env
            else running.client_tls
        )
        log_path = running.log_dir / "web.log"
        with self._part("the web page") as ready:
            process = spawn(
                [sys.executable, "-m", "meterline.web"],
                log_path,
                death_signal=signal.SIGTERM,
                env={**env, "METERLINE_WEB_ADDRESS": address},
            )
            self._processes.append(process)
            self._lock.add("web", process.pid)
            running.processes["web"] = process.pid
            try:
                wait_until_answering(address, process, log_path, page_tls)
            except (RuntimeError, TimeoutError) as error:
                raise StackError(
                    f"the web page did not start ({_first_line(str(error))}); the last line of "
                    f"its log {log_path}: {_last_log_line(log_path)}"
                ) from error
            running.web_url = page_url(address, page_tls)
            ready(f"the web page serving on {running.web_url}")

    @property
    def state_file(self) -> Path:
        """Where a running stack tells other tools its addresses, store URLs and the TLS
        its clients use (the CLI reads that part)."""
        return self._settings.data_dir / STATE_FILE

    def _write_state(self, running: RunningStack) -> None:
        state = {
            "pid": os.getpid(),
            "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "endpoints": dataclasses.asdict(running.endpoints),
            "stores": dataclasses.asdict(running.stores),
            "embedded": running.embedded,
            "tls": {
                "plaintext": running.client_tls.plaintext,
                "ca_file": _text(running.client_tls.ca_file),
                "cert_file": _text(running.client_tls.cert_file),
                "key_file": _text(running.client_tls.key_file),
            },
            "processes": running.processes,
            "web_url": running.web_url,
        }
        temporary = self.state_file.with_suffix(".json.tmp")
        temporary.write_text(json.dumps(state, indent=2))
        temporary.replace(self.state_file)  # readers never see half a file
        self._exit.callback(self.state_file.unlink, missing_ok=True)

    def close(self) -> None:
        stop_processes(self._processes)
        self._processes.clear()
        self._exit.close()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def stopped_parts(running: RunningStack) -> list[str]:
    """The parts of a serving stack whose process is no longer running (it exited, or was
    killed), by name: postgres, redis, rating, billing, service, web."""
    stopped = []
    for name, pid in running.processes.items():
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                continue
        except psutil.NoSuchProcess:
            pass
        except psutil.AccessDenied:
            continue  # it exists (the embedded PostgreSQL runs as another user)
        stopped.append(name)
    return stopped


def stopped_message(running: RunningStack, stopped: list[str]) -> str:
    """What `up` says when a part stopped under it: which, its log's last line where it
    has one, and what to do."""
    details = []
    for name in stopped:
        log = running.log_dir / f"{name}.log"
        details.append(f"{name} ({_last_log_line(log)})" if log.exists() else name)
    return (
        f"{', '.join(details)} stopped while the stack was serving, so the whole stack is "
        f"stopped; see the logs in {running.log_dir} and start it again with `meterline up`."
    )


def _first_line(text: str) -> str:
    """The first line of an error whose next lines are a log's tail."""
    return text.strip().splitlines()[0].rstrip(":") if text.strip() else text


def _last_log_line(path: Path) -> str:
    try:
        lines = [
            line
            for line in path.read_text(errors="replace").splitlines()
            # SQLAlchemy ends its errors with a pointer to its docs: the line before says it.
            if line.strip() and not line.startswith("(Background on this error")
        ]
    except OSError:
        return "(no log)"
    return lines[-1] if lines else "(empty)"


def _text(path: Path | None) -> str | None:
    return str(path.resolve()) if path else None
