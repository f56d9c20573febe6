"""Prometheus metrics: one registry per process, served on `METERLINE_METRICS_ADDRESS`
(host:port; unset: not served). Every RPC is counted by method and status code with its
latency (recorded when the call is done, by the servicer decorators in `grpc_errors`, so a
stream's messages cost nothing extra). The billing manager counts the ledger transactions
it writes (repeats of a key not counted), the service manager what it does below, and
`meterline_pool_connections` shows every connection pool's use."""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)
T = TypeVar("T")

RPC_CALLS = Counter(
    "meterline_rpc_calls", "RPCs answered, by method and status code", ["method", "code"]
)
RPC_SECONDS = Histogram(
    "meterline_rpc_seconds",
    "RPC duration (a stream's whole life), by method",
    ["method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 60, 600),
)
USAGE_UPDATES = Counter("meterline_usage_updates", "Usage updates applied by this instance")
CUT_OFFS = Counter("meterline_cut_offs", "Sessions ended by the service, by reason", ["reason"])
SESSIONS_STARTED = Counter("meterline_sessions_started", "Sessions started by this instance")
ACTIVE_SESSIONS = Gauge("meterline_active_sessions", "Sessions this instance holds in memory")
SLICES_RESERVED = Counter(
    "meterline_slices_reserved", "Quota slices after the first granted to sessions (holds made)"
)
LEDGER_MOVEMENTS = Counter(
    "meterline_ledger_movements",
    "Ledger transactions written by this billing manager, by kind (a repeated key is not one)",
    ["kind"],
)


def call_done(method: str, started: float) -> Any:
    """A done-callback for a servicer context: counts the call with its final code."""

    def record(context: Any) -> None:
        code = context.code()
        name = "OK" if code is None else getattr(code, "name", str(code))
        RPC_CALLS.labels(method, name).inc()
        RPC_SECONDS.labels(method).observe(time.perf_counter() - started)

    return record


def serve_metrics(address: str) -> int:
    """Serve /metrics on `address` (host:port, port 0 picks one); the port. An address
    that is not host:port, or one another program holds, is a ConfigError naming the
    setting (one line at start, never a traceback)."""
    from meterline.kernel.config import ConfigError  # here: the SDK imports this module

    host, _, port = address.rpartition(":")
    if not port.isdigit() or int(port) > 65535:
        raise ConfigError(
            f"METERLINE_METRICS_ADDRESS {address!r} is not host:port (e.g. 127.0.0.1:9464)"
        )
    try:
        server, _thread = start_http_server(int(port), addr=host.strip("[]") or "127.0.0.1")
    except OSError as error:
        raise ConfigError(
            f"METERLINE_METRICS_ADDRESS {address} cannot be served "
            f"({error.strerror or error}): give each process an address of its own "
            "that no other program listens on"
        ) from None
    bound = int(server.server_port)
    log.info("metrics on http://%s:%d/metrics", host or "127.0.0.1", bound)
    return bound


# -- connection pools ----------------------------------------------------------------------
# Read when /metrics is scraped (in the metrics server's thread), never on a call's path.
# This module imports no driver (the SDK imports the error catalogue, which imports this):
# the readers below look at the pools' own methods and counters by name.


@dataclass(frozen=True)
class PoolUsage:
    """A pool's connections right now."""

    in_use: int
    """Connections lent out (or being opened for a caller)."""
    idle: int
    """Open connections waiting in the pool."""
    waiting: int | None = None
    """Callers waiting for a connection (None: the pool does not say)."""


def psycopg_usage(pool: Any) -> PoolUsage:
    """A psycopg_pool pool's usage, from its `get_stats()`."""
    stats = pool.get_stats()
    size, idle = int(stats.get("pool_size", 0)), int(stats.get("pool_available", 0))
    return PoolUsage(max(size - idle, 0), idle, int(stats.get("requests_waiting", 0)))


def sqlalchemy_usage(engine: Any) -> PoolUsage:
    """An SQLAlchemy (async) engine's QueuePool: checked out and checked in."""
    pool = engine.pool
    return PoolUsage(int(pool.checkedout()), int(pool.checkedin()))


def redis_usage(client: Any) -> PoolUsage:
    """A redis-py client's connection pool. redis-py exposes no counts, so its two
    collections are read by name; a pool without them reads as empty."""
    pool = client.connection_pool
    in_use = getattr(pool, "_in_use_connections", ())
    idle = getattr(pool, "_available_connections", ())
    return PoolUsage(len(in_use), len(idle))


class _Pools(Collector):
    """`meterline_pool_connections{pool, state}`: in_use, idle and waiting per pool, summed
    over the pools that share a name. A pool is forgotten when its owner is collected."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._tracked: list[tuple[str, weakref.ref[Any], Callable[[Any], PoolUsage]]] = []

    def track(self, name: str, owner: T, read: Callable[[T], PoolUsage]) -> None:
        with self._lock:
            self._tracked.append((name, weakref.ref(owner), read))

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "meterline_pool_connections",
            "Connections of each pool: in use, idle, and callers waiting for one",
            labels=["pool", "state"],
        )
        totals: dict[tuple[str, str], int] = {}
        with self._lock:
            self._tracked = [entry for entry in self._tracked if entry[1]() is not None]
            tracked = list(self._tracked)
        for name, owner_ref, read in tracked:
            owner = owner_ref()
            if owner is None:
                continue
            try:
                usage = read(owner)
            except Exception:  # a pool being replaced or closed: left out of this scrape
                log.debug("pool %s not read", name, exc_info=True)
                continue
            for state, value in (
                ("in_use", usage.in_use),
                ("idle", usage.idle),
                ("waiting", usage.waiting),
            ):
                if value is not None:
                    totals[name, state] = totals.get((name, state), 0) + value
        for (name, state), value in sorted(totals.items()):
            family.add_metric([name, state], value)
        yield family


POOLS = _Pools()
REGISTRY.register(POOLS)


def track_pool(name: str, owner: T, read: Callable[[T], PoolUsage]) -> None:
    """Report `read(owner)` as pool `name` on /metrics while `owner` lives."""
    POOLS.track(name, owner, read)
