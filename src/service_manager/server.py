"""The service manager process: `python -m service_manager` or `meterline serve service`.
Builds the parts over the stores and peers, starts the gRPC server and the background
loops (usage batches, presence writer, ownership check, liveness sweep, the gateway
notices' listener and retention, the funding events)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import secrets
import socket
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from redis.asyncio import Redis
from redis.exceptions import RedisError

from meterline.kernel import metrics
from meterline.kernel.config import Settings, load_settings, require_url, token_secret
from meterline.kernel.db import upgrade_schema
from meterline.kernel.errors import MeterlineError
from meterline.kernel.grpc_server import Authenticator, start_server
from meterline.kernel.health import follow_store
from meterline.kernel.logs import configure_logging
from meterline.kernel.metrics import serve_metrics
from meterline.kernel.peer_targets import peer_target
from meterline.kernel.pg_pool import PooledDatabase
from meterline.kernel.runtime import ServiceHandle, run_until_signalled
from meterline.kernel.startup import check_database, check_redis
from meterline.kernel.tickets import TicketSigner, ticket_key
from meterline.kernel.tls import channel_credentials, server_credentials
from meterline.kernel.tokens import TokenSigner
from meterline.kernel.tracing import configure_tracing
from meterline.service.v1 import service_pb2, service_pb2_grpc
from service_manager.app.components import ComponentCatalog
from service_manager.app.expiry import Expiry
from service_manager.app.gateway_reports import ReportGatewayUsage
from service_manager.app.gateways import GatewayAdmin, GatewayChooser
from service_manager.app.identities import IdentityAdmin
from service_manager.app.limits import StreamLimits
from service_manager.app.live import LiveSessions
from service_manager.app.metering import Metering, UsageBatcher
from service_manager.app.notices import GatewayNotices, GatewayWatch
from service_manager.app.parts import ServiceManagerParts
from service_manager.app.quota import Quota
from service_manager.app.settlement import Settlement
from service_manager.app.start import StartSession
from service_manager.app.stop import StopSession
from service_manager.domain.sessions import TerminationReason
from service_manager.grpc_api import ServiceManagerServicer
from service_manager.peers import Peers, ServiceToken
from service_manager.storage.component_store import PostgresComponentStore
from service_manager.storage.models import VERSION_TABLE
from service_manager.storage.notice_log import PostgresNoticeLog
from service_manager.storage.presence import RedisPresence
from service_manager.storage.record_queries import ServiceRecordQueries
from service_manager.storage.registry import PostgresGatewayRegistry, PostgresIdentities
from service_manager.storage.session_store import PostgresSessionStore
from service_manager.storage.subscriptions import RedisSubscriptions
from service_manager.storage.watched import WatchedAccounts

log = logging.getLogger(__name__)
MIGRATIONS = Path(__file__).parent / "storage" / "migrations"
SERVICE_NAME = service_pb2.DESCRIPTOR.services_by_name["ServiceManager"].full_name
VERIFY_EVERY_SECONDS = 2.0
PRUNE_NOTICES_EVERY_SECONDS = 60.0


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
    # Both refuse bad TLS settings before any store is touched.
    credentials = server_credentials(settings.tls)
    peer_credentials = channel_credentials(settings.tls)
    url = require_url(settings.stores.service_database_url, "METERLINE_SERVICE_DATABASE_URL")
    redis_url = require_url(settings.stores.redis_url, "METERLINE_REDIS_URL")
    # So is a peer list that cannot be used (Peers below would find it only after the
    # migrations).
    peer_target(settings.endpoints.billing_target, "METERLINE_BILLING_PEERS")
    peer_target(settings.endpoints.rating_target, "METERLINE_RATING_PEERS")
    await check_database(url, "METERLINE_SERVICE_DATABASE_URL", "service database")
    await check_redis(redis_url, "METERLINE_REDIS_URL")
    if settings.migrate_on_start:
        await asyncio.to_thread(migrate, url)
    owner_id = f"{socket.gethostname()[:40]}-{secrets.token_hex(4)}"
    store = PostgresSessionStore(url, pool_size=20)
    await store.open()
    component_store = PostgresComponentStore(url)
    await component_store.open()
    # The registry, identities and notices: a few connections of their own, and one that
    # LISTENs for notices.
    registry_db = PooledDatabase(url, "gateway registry", min_size=1, max_size=4)
    await registry_db.open()
    registry = PostgresGatewayRegistry(registry_db)
    identities = IdentityAdmin(PostgresIdentities(registry_db))
    notice_log = PostgresNoticeLog(registry_db, url)
    notice_log.start()
    tickets = TicketSigner(ticket_key(settings))
    redis = Redis.from_url(redis_url, socket_connect_timeout=3, socket_timeout=5)
    metrics.track_pool("redis", redis, metrics.redis_usage)
    signer = TokenSigner(token_secret(settings))
    peers = Peers(
        settings.endpoints.billing_target,
        settings.endpoints.rating_target,
        ServiceToken(signer),
        peer_credentials,
        settings.endpoints.peer_health_checks,
    )
    engine = settings.engine
    validity = timedelta(seconds=settings.quota.validity_seconds)
    liveness = timedelta(seconds=settings.gateways.liveness_seconds)
    retention = timedelta(seconds=settings.gateways.notice_retention_seconds)

    live = LiveSessions()
    metrics.ACTIVE_SESSIONS.set_function(lambda: len(live))
    watched = WatchedAccounts(redis, settings.stores.redis_prefix)
    presence = RedisPresence(redis, settings.stores.redis_prefix, watched)
    subscriptions = RedisSubscriptions(redis, settings.stores.redis_prefix, watched)
    quota = Quota(store, peers, live, settings.quota, engine.reserve_ahead_at)
    batcher = UsageBatcher(store, live, engine.usage_flush_ms / 1000)
    notices = GatewayNotices(notice_log)
    metering = Metering(
        store,
        peers,
        quota,
        presence,
        live,
        owner_id,
        engine.max_sequence_gap,
        notices,
        settings.quota.low_balance_micros,
    )
    settlement = Settlement(store, peers, quota, presence, live, batcher, owner_id, notices)
    metering.cut_off = settlement.cut_off

    async def abandon(session_id: str) -> None:
        try:
            await settlement.settle(session_id, 0, TerminationReason.START_FAILED)
        except MeterlineError as error:
            log.warning("session %s: failed start not settled yet: %s", session_id, error)

    chooser = GatewayChooser(registry, liveness)
    gateways = GatewayAdmin(registry, chooser)
    starter = StartSession(
        store,
        peers,
        peers,
        quota,
        chooser,
        presence,
        tickets,
        owner_id,
        validity,
        abandon,
        identities,
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
        gateways=gateways,
        identities=identities,
        gateway_watch=GatewayWatch(notice_log, registry, gateways, liveness),
        ticket_key=tickets.public,
    )
    expiry = Expiry(store, settlement, presence, validity)
    components = ComponentCatalog(component_store, settings.components.max_bytes)
    servicer = ServiceManagerServicer(
        parts, Authenticator(signer), components, ServiceRecordQueries(registry_db)
    )
    server = await start_server(
        address or settings.endpoints.service,
        [lambda server: service_pb2_grpc.add_ServiceManagerServicer_to_server(servicer, server)],
        [SERVICE_NAME],
        credentials,
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
            component_store.close,
            registry_db.close,
            notice_log.close,
            peers.close,
            subscriptions.close,
            quota.close,
            starter.close,
            notices.close,
            drain,
        ],
    )

    async def prune_notices() -> None:
        pruned = await notice_log.prune(datetime.now(UTC) - retention)
        if pruned:
            log.info("deleted %d gateway notices older than the retention", pruned)

    sweep_every = max(settings.quota.validity_seconds / 4, 0.5)
    handle.tasks.extend(
        [
            asyncio.create_task(batcher.run()),
            asyncio.create_task(presence.run()),
            asyncio.create_task(every(VERIFY_EVERY_SECONDS, "ownership check", batcher.verify)),
            asyncio.create_task(every(sweep_every, "liveness sweep", expiry.sweep)),
            asyncio.create_task(every(1.0, "presence check", expiry.keep_presence)),
            asyncio.create_task(follow_store(server, [SERVICE_NAME], probe)),
            asyncio.create_task(
                subscriptions.follow_funding(metering.on_funded, settlement.account_stopped)
            ),
            asyncio.create_task(
                every(PRUNE_NOTICES_EVERY_SECONDS, "notice pruning", prune_notices)
            ),
        ]
    )
    # Long-lived objects made so far need not be scanned by every collection, and the
    # usage path makes many short-lived ones: collect the youngest less often.
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)
    return handle


def main(address: str | None = None) -> None:
    def begin() -> Awaitable[ServiceHandle]:
        # Inside run_until_signalled, so a setting that cannot be used is one line.
        settings = load_settings()
        configure_logging(settings.log_level, settings.log_format)
        if settings.metrics_address:
            serve_metrics(settings.metrics_address)
        configure_tracing(settings.traces, settings.trace_service_name or "meterline-service")
        return start(settings, address)

    run_until_signalled(begin)
