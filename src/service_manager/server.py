"""The service manager process: `python -m service_manager` or `meterline serve service`."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from redis.asyncio import Redis

from meterline.kernel.config import Settings, load_settings, require_url, token_secret
from meterline.kernel.db import create_engine_for, upgrade_schema
from meterline.kernel.grpc_server import Authenticator, start_server
from meterline.kernel.logs import configure_logging
from meterline.kernel.runtime import ServiceHandle, run_until_signalled
from meterline.kernel.tokens import TokenSigner
from meterline.service.v1 import service_pb2, service_pb2_grpc
from service_manager.grpc_api import ServiceManagerServicer
from service_manager.peers import Peers, ServiceToken
from service_manager.sessions import SessionService
from service_manager.storage.models import VERSION_TABLE
from service_manager.storage.presence import Presence

log = logging.getLogger(__name__)
MIGRATIONS = Path(__file__).parent / "storage" / "migrations"
SERVICE_NAME = service_pb2.DESCRIPTOR.services_by_name["ServiceManager"].full_name


def migrate(database_url: str) -> None:
    upgrade_schema(database_url, MIGRATIONS, VERSION_TABLE)


async def expire_idle_sessions(sessions: SessionService, every_seconds: float) -> None:
    while True:
        await asyncio.sleep(every_seconds)
        try:
            await sessions.expire_idle()
        except Exception:  # a blip of a store or peer must not stop the sweeper
            log.exception("liveness sweep failed; trying again next round")


async def start(settings: Settings, address: str | None = None) -> ServiceHandle:
    url = require_url(settings.stores.service_database_url, "METERLINE_SERVICE_DATABASE_URL")
    redis_url = require_url(settings.stores.redis_url, "METERLINE_REDIS_URL")
    if settings.migrate_on_start:
        await asyncio.to_thread(migrate, url)
    engine = create_engine_for(url, pool_size=20)
    redis = Redis.from_url(redis_url)
    signer = TokenSigner(token_secret(settings))
    peers = Peers(settings.endpoints.billing, settings.endpoints.rating, ServiceToken(signer))
    sessions = SessionService(
        engine, peers, Presence(redis, settings.stores.redis_prefix), settings.quota, signer
    )
    servicer = ServiceManagerServicer(sessions, Authenticator(signer))
    server = await start_server(
        address or settings.endpoints.service,
        [lambda server: service_pb2_grpc.add_ServiceManagerServicer_to_server(servicer, server)],
        [SERVICE_NAME],
    )
    handle = ServiceHandle(
        server, closers=[sessions.close, engine.dispose, redis.aclose, peers.close]
    )
    sweep_every = max(settings.quota.validity_seconds / 4, 0.5)
    handle.tasks.append(asyncio.create_task(expire_idle_sessions(sessions, sweep_every)))
    return handle


def main(address: str | None = None) -> None:
    settings = load_settings()
    configure_logging(settings.log_level)
    run_until_signalled(lambda: start(settings, address))
