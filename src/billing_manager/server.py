"""The billing manager process: `python -m billing_manager` or `meterline serve billing`.
It also hosts AuthService."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

from billing_manager.authentication import Authentication
from billing_manager.grpc_api import AuthServicer, BillingServicer
from billing_manager.ledger import Ledger
from billing_manager.storage.models import VERSION_TABLE
from meterline.auth.v1 import auth_pb2, auth_pb2_grpc
from meterline.billing.v1 import billing_pb2, billing_pb2_grpc
from meterline.kernel.config import Settings, load_settings, require_url, token_secret
from meterline.kernel.db import DatabaseProbe, create_engine_for, upgrade_schema
from meterline.kernel.grpc_server import Authenticator, start_server
from meterline.kernel.health import follow_store
from meterline.kernel.logs import configure_logging
from meterline.kernel.runtime import ServiceHandle, run_until_signalled
from meterline.kernel.tokens import TokenSigner

MIGRATIONS = Path(__file__).parent / "storage" / "migrations"
SERVICE_NAMES = (
    billing_pb2.DESCRIPTOR.services_by_name["BillingManager"].full_name,
    auth_pb2.DESCRIPTOR.services_by_name["AuthService"].full_name,
)


def migrate(database_url: str) -> None:
    upgrade_schema(database_url, MIGRATIONS, VERSION_TABLE)


async def start(settings: Settings, address: str | None = None) -> ServiceHandle:
    url = require_url(settings.stores.billing_database_url, "METERLINE_BILLING_DATABASE_URL")
    if settings.migrate_on_start:
        await asyncio.to_thread(migrate, url)
    engine = create_engine_for(url, pool_size=20)
    signer = TokenSigner(token_secret(settings), timedelta(seconds=settings.token_ttl_seconds))
    auth = Authenticator(signer)
    billing = BillingServicer(Ledger(engine), auth)
    authority = AuthServicer(Authentication(engine, signer), auth)
    server = await start_server(
        address or settings.endpoints.billing,
        [
            lambda server: billing_pb2_grpc.add_BillingManagerServicer_to_server(billing, server),
            lambda server: auth_pb2_grpc.add_AuthServiceServicer_to_server(authority, server),
        ],
        SERVICE_NAMES,
    )
    handle = ServiceHandle(server, closers=[engine.dispose])
    probe = DatabaseProbe(url)
    handle.closers.append(probe.close)
    handle.tasks.append(
        asyncio.create_task(follow_store(server, SERVICE_NAMES, probe, "account database"))
    )
    return handle


def main(address: str | None = None) -> None:
    settings = load_settings()
    configure_logging(settings.log_level)
    run_until_signalled(lambda: start(settings, address))
