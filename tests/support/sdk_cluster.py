"""Real processes for the SDK's failover tests: the rating service and the billing manager
once, on databases of their own, and service managers started beside them on the same
databases (a primary and a secondary share the sessions, as in production), which a test
kills or freezes. Plus the devices: funded accounts with credentials, and the SDK config
that reaches the cluster over TLS."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import signal
import subprocess
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg.rows import dict_row

from client_sdk import ClientConfig
from meterline.auth.v1 import auth_pb2_grpc
from meterline.billing.v1 import billing_pb2, billing_pb2_grpc
from meterline.kernel.config import Endpoints
from meterline.kernel.db import drop_database, ensure_database, libpq_dsn
from meterline.kernel.processes import free_port, spawn_service, stop_processes
from meterline.rating.v1 import rating_pb2_grpc
from tests.support import tls
from tests.support.clients import OPERATOR, device_credential, ensure_tariff, new_account
from tests.support.stack import environment, wait_for
from tests.support.stores import StoreUrls

PREFIX = "+4179"
ENDPOINT = "+41791234567"
PRICE_MICROS = 10_000
"""0.01 EUR a second, billed per second: n units cost n * 10,000 micros."""


@dataclass(frozen=True)
class Cluster:
    """Rating and billing processes, and what a service manager needs to join them."""

    stores: StoreUrls
    endpoints: Endpoints
    log_dir: Path

    def env(self, address: str, overrides: Mapping[str, str]) -> dict[str, str]:
        return {
            **environment(self.stores, self.endpoints),
            "METERLINE_SERVICE_ADDRESS": address,
            **overrides,
        }


@contextlib.contextmanager
def cluster(stores: StoreUrls, log_dir: Path, name: str) -> Iterator[Cluster]:
    """Databases named after `name` (dropped at the end) and the two peer processes."""
    run = secrets.token_hex(4)
    names = {role: f"meterline_{name}_{run}_{role}" for role in ("rating", "billing", "service")}
    urls = {role: ensure_database(stores.server_url, db) for role, db in names.items()}
    private = StoreUrls(
        server_url=stores.server_url,
        rating_url=urls["rating"],
        billing_url=urls["billing"],
        service_url=urls["service"],
        redis_url=stores.redis_url,
        redis_prefix=f"{stores.redis_prefix}-{name}-{run}",
    )
    endpoints = Endpoints(
        rating=f"127.0.0.1:{free_port()}", billing=f"127.0.0.1:{free_port()}", service=""
    )
    env = environment(private, endpoints)
    processes: list[subprocess.Popen[bytes]] = []
    try:
        started = []
        for role, address in (("rating", endpoints.rating), ("billing", endpoints.billing)):
            log = log_dir / f"{role}.log"
            process = spawn_service(role, env, log)
            processes.append(process)
            started.append((address, process, log))
        for address, process, log in started:
            wait_for(address, process, log)
        yield Cluster(private, endpoints, log_dir)
    finally:
        stop_processes(processes)
        for db in names.values():
            drop_database(stores.server_url, db)


@dataclass
class Instance:
    """One `python -m service_manager` process."""

    address: str
    process: subprocess.Popen[bytes]
    log: Path

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def freeze(self) -> None:
        """SIGSTOP: the process hangs; its sockets stay open and answer nothing."""
        self.process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        self.process.send_signal(signal.SIGCONT)


@asynccontextmanager
async def service_managers(
    cluster: Cluster, *overrides: Mapping[str, str]
) -> AsyncIterator[list[Instance]]:
    """One service manager per mapping of environment overrides, on the cluster's stores;
    stopped at the end (thawed first, should a test have left one frozen)."""
    instances: list[Instance] = []
    try:
        for extra in overrides:
            address = f"127.0.0.1:{free_port()}"
            log = cluster.log_dir / f"service-{address.rsplit(':', 1)[1]}.log"
            process = spawn_service("service", cluster.env(address, extra), log)
            instances.append(Instance(address, process, log))
        for instance in instances:
            await asyncio.to_thread(wait_for, instance.address, instance.process, instance.log)
        yield instances
    finally:
        for instance in instances:
            if instance.process.poll() is None:
                instance.thaw()
        stop_processes([instance.process for instance in instances])


@dataclass(frozen=True)
class Device:
    account_id: str
    client_id: str
    client_secret: str
    funded_micros: int


@asynccontextmanager
async def operator_api(cluster: Cluster) -> AsyncIterator[OperatorApi]:
    """Stubs of the cluster's rating service and billing manager (no service manager)."""
    async with (
        tls.channel(cluster.endpoints.rating) as rating,
        tls.channel(cluster.endpoints.billing) as billing,
    ):
        yield OperatorApi(
            rating_pb2_grpc.RatingServiceStub(rating),
            billing_pb2_grpc.BillingManagerStub(billing),
            auth_pb2_grpc.AuthServiceStub(billing),
        )


@dataclass(frozen=True)
class OperatorApi:
    rating: rating_pb2_grpc.RatingServiceAsyncStub
    billing: billing_pb2_grpc.BillingManagerAsyncStub
    auth: auth_pb2_grpc.AuthServiceAsyncStub

    async def account(self, account_id: str) -> billing_pb2.Account:
        return await self.billing.GetAccount(
            billing_pb2.GetAccountRequest(account_id=account_id), metadata=OPERATOR
        )


async def devices(cluster: Cluster, count: int, funded_micros: int) -> list[Device]:
    """`count` funded accounts, each with a device credential; the tariff they call."""
    async with operator_api(cluster) as api:
        await ensure_tariff(api.rating, PREFIX, PRICE_MICROS)

        async def one() -> Device:
            account_id = await new_account(api.billing, funded_micros)
            client_id, secret = await device_credential(api.auth, account_id)
            return Device(account_id, client_id, secret, funded_micros)

        return list(await asyncio.gather(*(one() for _ in range(count))))


def sdk_config(
    device: Device, service_addresses: Sequence[str], cluster: Cluster, **options: Any
) -> ClientConfig:
    return ClientConfig(
        service_addresses=list(service_addresses),
        auth_addresses=[cluster.endpoints.billing],
        client_id=device.client_id,
        client_secret=device.client_secret,
        tls=tls.client_tls(),
        **options,
    )


def service_records(cluster: Cluster) -> dict[str, dict[str, Any]]:
    """Every service record of the cluster, by session id."""
    with psycopg.connect(libpq_dsn(cluster.stores.service_url), row_factory=dict_row) as conn:
        rows = conn.execute(
            "SELECT session_id, account_id, used_units, billed_units, charged_micros, "
            "termination_reason FROM service_records"
        ).fetchall()
    return {row["session_id"]: row for row in rows}
