"""The service manager process: `python -m service_manager` or `meterline serve service`.
Builds the parts over the stores and peers, starts the gRPC server and the background
loops (usage batches, presence writer, ownership check, liveness sweep)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import secrets
import socket
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path

from redis.asyncio import Redis
from redis.exceptions import RedisError

from meterline.kernel.config import Settings, load_settings, require_url, token_secret
from meterline.kernel.db import upgrade_schema
from meterline.kernel.errors import MeterlineError
from meterline.kernel.grpc_server import Authenticator, start_server
from meterline.kernel.health import follow_store
from meterline.kernel.logs import configure_logging
from meterline.kernel.runtime import ServiceHandle, run_until_signalled
from meterline.kernel.tokens import TokenSigner
from meterline.service.v1 import service_pb2, service_pb2_grpc
from service_manager.app.expiry import Expiry
from service_manager.app.gateway_reports import ReportGatewayUsage
from service_manager.app.gateways import GatewayChooser
from service_manager.app.limits import StreamLimits
from service_manager.app.live import LiveSessions
from service_manager.app.metering import Metering, UsageBatcher
from service_manager.app.parts import ServiceManagerParts
from service_manager.app.quota import Quota
from service_manager.app.settlement import Settlement
from service_manager.app.start import StartSession
from service_manager.app.stop import StopSession
from service_manager.domain.sessions import TerminationReason
from service_manager.grpc_api import ServiceManagerServicer
from service_manager.peers import Peers, ServiceToken
from service_manager.storage.models import VERSION_TABLE
from service_manager.storage.presence import RedisPresence
from service_manager.storage.session_store import PostgresSessionStore
from service_manager.storage.subscriptions import RedisSubscriptions

log = logging.getLogger(__name__)
MIGRATIONS = Path(__file__).parent / "storage" / "migrations"
SERVICE_NAME = service_pb2.DESCRIPTOR.services_by_name["ServiceManager"].full_name
VERIFY_EVERY_SECONDS = 2.0


def migrate(database_url: str) -> None:
    upgrade_schema(database_url, MIGRATIONS, VERSION_TABLE)


async def every(seconds: float, what: str, work: Callable[[], Awaitable[object]]) -> None:
    """Run `work` every `seconds`; a blip of a store or peer must not stop the loop."""
    failing = False
    while True:
        await asyncio.sleep(seconds)
        try:
            await work()
            failing = False
        except (MeterlineError, RedisError, OSError) as error:
            if not failing:
                log.warning("%s failed; trying again next round: %s", what, error)
            failing = True
        except Exception:
            log.exception("%s failed; trying again next round", what)


async def start(settings: Settings, address: str | None = None) -> ServiceHandle:
    url = require_url(settings.stores.service_database_url, "METERLINE_SERVICE_DATABASE_URL")
    redis_url = require_url(settings.stores.redis_url, "METERLINE_REDIS_URL")
    if settings.migrate_on_start:
        await asyncio.to_thread(migrate, url)
    owner_id = f"{socket.gethostname()[:40]}-{secrets.token_hex(4)}"
    store = PostgresSessionStore(url, pool_size=20)
    await store.open()
    redis = Redis.from_url(redis_url, socket_connect_timeout=3, socket_timeout=5)
    signer = TokenSigner(token_secret(settings))
    peers = Peers(settings.endpoints.billing, settings.endpoints.rating, ServiceToken(signer))
    engine = settings.engine
    validity = timedelta(seconds=settings.quota.validity_seconds)

    live = LiveSessions()
    presence = RedisPresence(redis, settings.stores.redis_prefix)
    subscriptions = RedisSubscriptions(redis, settings.stores.redis_prefix)
    quota = Quota(store, peers, live, settings.quota, engine.reserve_ahead_at)
    batcher = UsageBatcher(store, live, engine.usage_flush_ms / 1000)
    metering = Metering(store, peers, quota, presence, live, owner_id, engine.max_sequence_gap)
    settlement = Settlement(store, peers, quota, presence, live, batcher, owner_id)
    metering.cut_off = settlement.cut_off

    async def abandon(session_id: str) -> None:
        try:
            await settlement.settle(session_id, 0, TerminationReason.START_FAILED)
        except MeterlineError as error:
            log.warning("session %s: failed start not settled yet: %s", session_id, error)

    starter = StartSession(
        store,
        peers,
        peers,
        quota,
        GatewayChooser(store),
        presence,
        signer,
        owner_id,
        validity,
        abandon,
    )
    parts = ServiceManagerParts(
        start=starter,
        metering=metering,
        stop=StopSession(store, settlement),
        gateway_usage=ReportGatewayUsage(store, metering, settlement),
        presence=presence,
        subscriptions=subscriptions,
        meter_streams=StreamLimits(
            engine.max_meter_streams_per_caller,
            "usage streams",
            "METERLINE_MAX_METER_STREAMS_PER_CALLER",
        ),
        watches=StreamLimits(
            engine.max_watches_per_caller, "watch streams", "METERLINE_MAX_WATCHES_PER_CALLER"
        ),
    )
    expiry = Expiry(store, settlement, presence, validity)
    servicer = ServiceManagerServicer(parts, Authenticator(signer))
    server = await start_server(
        address or settings.endpoints.service,
        [lambda server: service_pb2_grpc.add_ServiceManagerServicer_to_server(servicer, server)],
        [SERVICE_NAME],
    )

    async def drain() -> None:
        """On shutdown: the usage of every live session goes in before the stores close."""
        with contextlib.suppress(MeterlineError):
            await batcher.flush()
        with contextlib.suppress(RedisError):
            await presence.flush()

    async def probe() -> None:
        await store.probe()
        await redis.ping()

    handle = ServiceHandle(
        server,
        closers=[
            redis.aclose,
            store.close,
            peers.close,
            subscriptions.close,
            quota.close,
            starter.close,
            drain,
        ],
    )
    sweep_every = max(settings.quota.validity_seconds / 4, 0.5)
    handle.tasks.extend(
        [
            asyncio.create_task(batcher.run()),
            asyncio.create_task(presence.run()),
            asyncio.create_task(every(VERIFY_EVERY_SECONDS, "ownership check", batcher.verify)),
            asyncio.create_task(every(sweep_every, "liveness sweep", expiry.sweep)),
            asyncio.create_task(every(1.0, "presence check", expiry.keep_presence)),
            asyncio.create_task(follow_store(server, [SERVICE_NAME], probe)),
        ]
    )
    # Long-lived objects made so far need not be scanned by every collection, and the
    # usage path makes many short-lived ones: collect the youngest less often.
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)
    return handle


def main(address: str | None = None) -> None:
    settings = load_settings()
    configure_logging(settings.log_level)
    run_until_signalled(lambda: start(settings, address))
