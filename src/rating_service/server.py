"""The rating service process: `python -m rating_service` or `meterline serve rating`."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from pathlib import Path

from meterline.kernel import metrics
from meterline.kernel.config import Settings, load_settings, require_url, token_secret
from meterline.kernel.db import DatabaseProbe, create_engine_for, upgrade_schema
from meterline.kernel.grpc_server import Authenticator, start_server
from meterline.kernel.health import follow_store
from meterline.kernel.logs import configure_logging
from meterline.kernel.metrics import serve_metrics
from meterline.kernel.runtime import ServiceHandle, run_until_signalled
from meterline.kernel.startup import check_database
from meterline.kernel.tls import server_credentials
from meterline.kernel.tokens import TokenSigner
from meterline.kernel.tracing import configure_tracing
from meterline.rating.v1 import rating_pb2, rating_pb2_grpc
from rating_service.catalog import TariffCatalog
from rating_service.grpc_api import RatingServicer
from rating_service.storage.models import VERSION_TABLE
from rating_service.storage.tariff_store import TariffStore

MIGRATIONS = Path(__file__).parent / "storage" / "migrations"
SERVICE_NAME = rating_pb2.DESCRIPTOR.services_by_name["RatingService"].full_name


def migrate(database_url: str) -> None:
    upgrade_schema(database_url, MIGRATIONS, VERSION_TABLE)


async def start(settings: Settings, address: str | None = None) -> ServiceHandle:
    credentials = server_credentials(settings.tls)  # refuses before any store is touched
    url = require_url(settings.stores.rating_database_url, "METERLINE_RATING_DATABASE_URL")
    await check_database(url, "METERLINE_RATING_DATABASE_URL", "rating database")
    if settings.migrate_on_start:
        await asyncio.to_thread(migrate, url)
    engine = create_engine_for(url)
    metrics.track_pool("tariffs", engine, metrics.sqlalchemy_usage)
    catalog = TariffCatalog(TariffStore(engine))
    await catalog.refresh()
    servicer = RatingServicer(catalog, Authenticator(TokenSigner(token_secret(settings))))
    server = await start_server(
        address or settings.endpoints.rating,
        [lambda server: rating_pb2_grpc.add_RatingServiceServicer_to_server(servicer, server)],
        [SERVICE_NAME],
        credentials,
    )
    handle = ServiceHandle(server, closers=[engine.dispose])
    handle.tasks.append(asyncio.create_task(catalog.keep_fresh()))
    handle.tasks.append(asyncio.create_task(catalog.listen(url)))
    probe = DatabaseProbe(url)
    handle.closers.append(probe.close)
    handle.tasks.append(
        asyncio.create_task(follow_store(server, [SERVICE_NAME], probe, "tariff database"))
    )
    return handle


def main(address: str | None = None) -> None:
    def begin() -> Awaitable[ServiceHandle]:
        # Inside run_until_signalled, so a setting that cannot be used is one line.
        settings = load_settings()
        configure_logging(settings.log_level, settings.log_format)
        if settings.metrics_address:
            serve_metrics(settings.metrics_address)
        configure_tracing(settings.traces, settings.trace_service_name or "meterline-rating")
        return start(settings, address)

    run_until_signalled(begin)
