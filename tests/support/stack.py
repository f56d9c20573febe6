"""The three services, in this process (integration tests) or as separate processes
(end-to-end tests), on loopback ports, against the test run's stores, with TLS (the test
run's certificates, tests/support/tls.py)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path

import billing_manager.server
import rating_service.server
import service_manager.server
from meterline.kernel.config import Endpoints, QuotaPolicy, Settings, Stores, TlsSettings
from meterline.kernel.principals import Principal, PrincipalKind
from meterline.kernel.processes import free_port, spawn_service, stop_processes, wait_until_serving
from meterline.kernel.runtime import ServiceHandle
from meterline.kernel.tokens import TokenSigner
from tests.support.stores import StoreUrls
from tests.support.tls import client_credentials, server_settings, tls_environment

TOKEN_SECRET = "test-secret-" + "x" * 40
VOUCHER_SECRET = "test-voucher-secret-" + "v" * 40


def settings_for(stores: StoreUrls, endpoints: Endpoints | None = None) -> Settings:
    return Settings(
        endpoints=endpoints or Endpoints(),
        stores=Stores(
            rating_database_url=stores.rating_url,
            billing_database_url=stores.billing_url,
            service_database_url=stores.service_url,
            redis_url=stores.redis_url,
            redis_prefix=stores.redis_prefix,
        ),
        quota=QuotaPolicy(validity_seconds=60),
        tls=server_settings(),
        token_secret=TOKEN_SECRET,
        voucher_secret=VOUCHER_SECRET,
    )


SUITE_TOKEN_TTL = timedelta(hours=12)
"""The shared operator token is made once, when the tests are collected: it must outlast
the whole run however slow the machine (a token of the default 15 minutes expired in the
middle of a 19-minute run)."""


def operator_token(secret: str = TOKEN_SECRET) -> str:
    signer = TokenSigner(secret)
    principal = Principal(kind=PrincipalKind.OPERATOR, subject="test-operator")
    return signer.issue(principal, SUITE_TOKEN_TTL).token


def token_for(principal: Principal, ttl: timedelta | None = None) -> str:
    return TokenSigner(TOKEN_SECRET).issue(principal, ttl).token


def metadata(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


@dataclass
class InProcessStack:
    rating: ServiceHandle
    billing: ServiceHandle
    service: ServiceHandle
    endpoints: Endpoints
    settings: Settings

    async def close(self) -> None:
        for handle in (self.service, self.billing, self.rating):
            await handle.close(grace=0.5)


async def start_in_process(
    stores: StoreUrls, quota: QuotaPolicy | None = None, tls: TlsSettings | None = None
) -> InProcessStack:
    """The three services in this process; `tls` instead of the test run's server TLS."""
    settings = settings_for(stores)
    if quota is not None:
        settings = replace(settings, quota=quota)
    if tls is not None:
        settings = replace(settings, tls=tls)
    rating = await rating_service.server.start(settings, "127.0.0.1:0")
    billing = await billing_manager.server.start(settings, "127.0.0.1:0")
    endpoints = Endpoints(
        rating=f"127.0.0.1:{rating.port}", billing=f"127.0.0.1:{billing.port}", service=""
    )
    settings = replace(settings, endpoints=endpoints)
    service = await service_manager.server.start(settings, "127.0.0.1:0")
    endpoints = replace(endpoints, service=f"127.0.0.1:{service.port}")
    return InProcessStack(
        rating, billing, service, endpoints, replace(settings, endpoints=endpoints)
    )


def environment(stores: StoreUrls, endpoints: Endpoints) -> dict[str, str]:
    return {
        **os.environ,
        "METERLINE_RATING_DATABASE_URL": stores.rating_url,
        "METERLINE_BILLING_DATABASE_URL": stores.billing_url,
        "METERLINE_SERVICE_DATABASE_URL": stores.service_url,
        "METERLINE_REDIS_URL": stores.redis_url,
        "METERLINE_REDIS_PREFIX": stores.redis_prefix,
        "METERLINE_TOKEN_SECRET": TOKEN_SECRET,
        "METERLINE_VOUCHER_SECRET": VOUCHER_SECRET,
        "METERLINE_RATING_ADDRESS": endpoints.rating,
        "METERLINE_BILLING_ADDRESS": endpoints.billing,
        "METERLINE_SERVICE_ADDRESS": endpoints.service,
        **tls_environment(),
    }


def wait_for(address: str, process: subprocess.Popen[bytes], log: Path) -> None:
    """`wait_until_serving` over TLS, trusting the test run's CA."""
    wait_until_serving(address, process, log, client_credentials())


@contextmanager
def service_processes(stores: StoreUrls, log_dir: Path) -> Iterator[Endpoints]:
    """The three services, each its own `python -m <package>` process."""
    endpoints = Endpoints(
        rating=f"127.0.0.1:{free_port()}",
        billing=f"127.0.0.1:{free_port()}",
        service=f"127.0.0.1:{free_port()}",
    )
    env = environment(stores, endpoints)
    processes: list[subprocess.Popen[bytes]] = []
    try:
        for role, address in (
            ("rating", endpoints.rating),
            ("billing", endpoints.billing),
            ("service", endpoints.service),
        ):
            log = log_dir / f"{role}.log"
            process = spawn_service(role, env, log)
            processes.append(process)
            wait_for(address, process, log)
        yield endpoints
    finally:
        stop_processes(processes)
