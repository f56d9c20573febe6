"""The billing manager process: `python -m billing_manager` or `meterline serve billing`.
It also hosts AuthService."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from datetime import timedelta
from pathlib import Path

from billing_manager.authentication import Authentication
from billing_manager.grpc_api import AuthServicer, BillingServicer
from billing_manager.ledger import Ledger
from billing_manager.storage.models import VERSION_TABLE
from billing_manager.storage.movement_store import MovementStore
from meterline.auth.v1 import auth_pb2, auth_pb2_grpc
from meterline.billing.v1 import billing_pb2, billing_pb2_grpc
from meterline.kernel import metrics
from meterline.kernel.account_events import FundingPublisher
from meterline.kernel.config import (
    ConfigError,
    Settings,
    load_settings,
    require_url,
    token_secret,
    voucher_secret,
)
from meterline.kernel.db import DatabaseProbe, create_engine_for, upgrade_schema
from meterline.kernel.errors import InvalidArgument
from meterline.kernel.grpc_server import Authenticator, start_server
from meterline.kernel.health import follow_store
from meterline.kernel.logs import configure_logging
from meterline.kernel.metrics import serve_metrics
from meterline.kernel.runtime import ServiceHandle, run_until_signalled
from meterline.kernel.startup import check_database
from meterline.kernel.tls import server_credentials
from meterline.kernel.tokens import TokenSigner
from meterline.kernel.tracing import configure_tracing

log = logging.getLogger(__name__)
SWEEP_BATCH = 100
MIGRATIONS = Path(__file__).parent / "storage" / "migrations"
SERVICE_NAMES = (
    billing_pb2.DESCRIPTOR.services_by_name["BillingManager"].full_name,
    auth_pb2.DESCRIPTOR.services_by_name["AuthService"].full_name,
)


def migrate(database_url: str) -> None:
    upgrade_schema(database_url, MIGRATIONS, VERSION_TABLE)


async def sweep_expired_holds(ledger: Ledger, settings: Settings) -> None:
    """Every METERLINE_HOLD_SWEEP_SECONDS, release the holds past their expiry (each once,
    however many billing managers sweep: Ledger.expire_holds), a batch at a time."""
    while True:
        await asyncio.sleep(settings.hold_sweep_seconds)
        try:
            while await ledger.expire_holds(SWEEP_BATCH) == SWEEP_BATCH:
                pass
        except Exception:  # the store is down, or one hold failed: try again next round
            log.warning("the sweep of expired holds failed; trying again", exc_info=True)


async def start(settings: Settings, address: str | None = None) -> ServiceHandle:
    credentials = server_credentials(settings.tls)  # refuses before any store is touched
    url = require_url(settings.stores.billing_database_url, "METERLINE_BILLING_DATABASE_URL")
    await check_database(url, "METERLINE_BILLING_DATABASE_URL", "account database")
    if settings.migrate_on_start:
        await asyncio.to_thread(migrate, url)
    # SQLAlchemy for the cold paths (accounts, bills, credentials and tokens).
    engine = create_engine_for(url, pool_size=5)
    metrics.track_pool("accounts", engine, metrics.sqlalchemy_usage)
    signer = TokenSigner(token_secret(settings), timedelta(seconds=settings.token_ttl_seconds))
    auth = Authenticator(signer)
    # Money movements and account reads: psycopg, one statement each; the rest SQLAlchemy.
    movements = MovementStore(url, pool_size=10)
    await movements.open()
    # "Account funded" events for the service managers, when there is a Redis to send them.
    stores = settings.stores
    funding = FundingPublisher(stores.redis_url, stores.redis_prefix) if stores.redis_url else None
    try:
        ledger = Ledger(
            engine,
            movements,
            voucher_secret(settings),
            hold_ttl_seconds=settings.hold_ttl_seconds,
        )
    except InvalidArgument as error:
        raise ConfigError(f"METERLINE_HOLD_TTL_SECONDS: {error}") from None
    billing = BillingServicer(
        ledger,
        auth,
        funding.funded if funding is not None else None,
        funding.status_changed if funding is not None else None,
    )
    authority = AuthServicer(Authentication(engine, signer), auth)
    server = await start_server(
        address or settings.endpoints.billing,
        [
            lambda server: billing_pb2_grpc.add_BillingManagerServicer_to_server(billing, server),
            lambda server: auth_pb2_grpc.add_AuthServiceServicer_to_server(authority, server),
        ],
        SERVICE_NAMES,
        credentials,
    )
    handle = ServiceHandle(server, closers=[engine.dispose, movements.close])
    if funding is not None:
        handle.closers.append(funding.close)
    handle.tasks.append(asyncio.create_task(sweep_expired_holds(ledger, settings)))
    probe = DatabaseProbe(url)
    handle.closers.append(probe.close)
    handle.tasks.append(
        asyncio.create_task(follow_store(server, SERVICE_NAMES, probe, "account database"))
    )
    return handle


def main(address: str | None = None) -> None:
    def begin() -> Awaitable[ServiceHandle]:
        # Inside run_until_signalled, so a setting that cannot be used is one line.
        settings = load_settings()
        configure_logging(settings.log_level, settings.log_format)
        if settings.metrics_address:
            serve_metrics(settings.metrics_address)
        configure_tracing(settings.traces, settings.trace_service_name or "meterline-billing")
        return start(settings, address)

    run_until_signalled(begin)
