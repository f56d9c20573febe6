"""The active tariffs, plans and account assignments held in memory, so that rating
does no database round trip (and goes on while the database is down). Every instance
reloads when PostgreSQL notifies it of a write (LISTEN/NOTIFY), and checks for missed
changes periodically."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import psycopg

from meterline.kernel.db import CONNECT_TIMEOUT_SECONDS, libpq_dsn
from meterline.kernel.errors import InvalidArgument
from meterline.kernel.media import ServiceType
from meterline.kernel.store_errors import one_line, store_outage
from rating_service.domain.plans import RatePlan, validate_plan_id
from rating_service.domain.tariffs import Tariff, TariffIndex, normalize_key, validate_tariff
from rating_service.storage.models import CHANGES_CHANNEL
from rating_service.storage.tariff_store import TariffStore

log = logging.getLogger(__name__)

# The listener's reconnection backoff: doubled after each failed try, up to the cap.
LISTEN_RETRY_FIRST_SECONDS = 0.5
LISTEN_RETRY_MAX_SECONDS = 5.0


def _log_failure(what: str, error: Exception) -> None:
    """A database outage is expected now and then: one line. Anything else: the traceback."""
    if store_outage(error) is not None:
        log.warning("%s: %s", what, one_line(error))
    else:
        log.exception("%s", what, exc_info=error)


class TariffCatalog:
    def __init__(self, store: TariffStore) -> None:
        self._store = store
        self.index = TariffIndex()
        self._version: tuple[Any, ...] | None = None
        self._lock = asyncio.Lock()

    async def refresh(self) -> None:
        async with self._lock:
            version = await self._store.version()
            tariffs, plans, assigned = await self._store.load()
            self.index = TariffIndex(tariffs, plans, assigned)
            self._version = version
        log.info("loaded %d tariffs in %d plans", len(self.index), len(self.index.plans))

    async def refresh_if_changed(self) -> None:
        if await self._store.version() != self._version:
            await self.refresh()

    async def keep_fresh(self, interval_seconds: float = 30.0) -> None:
        """Safety net for a missed notification."""
        while True:
            await asyncio.sleep(interval_seconds)
            try:
                await self.refresh_if_changed()
            except Exception as error:  # a database blip must not stop the refresher
                _log_failure("tariff refresh failed; keeping the tariffs already loaded", error)

    async def listen(self, database_url: str) -> None:
        """Reload on every change notification. When the connection drops (a database
        restart), reconnect with backoff, then reload what changed meanwhile."""
        delay = LISTEN_RETRY_FIRST_SECONDS
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    libpq_dsn(database_url),
                    autocommit=True,
                    connect_timeout=CONNECT_TIMEOUT_SECONDS,
                ) as conn:
                    await conn.execute(f"LISTEN {CHANGES_CHANNEL}")
                    if delay > LISTEN_RETRY_FIRST_SECONDS:
                        log.info("tariff change listener reconnected")
                    delay = LISTEN_RETRY_FIRST_SECONDS
                    await self.refresh_if_changed()  # catch up on what came while away
                    async for _ in conn.notifies():
                        # The writing instance has reloaded already; others reload now.
                        await self.refresh_if_changed()
            except asyncio.CancelledError:
                raise
            except Exception as error:
                _log_failure(f"tariff change listener lost; reconnecting in {delay:g} s", error)
                await asyncio.sleep(delay)
                delay = min(delay * 2, LISTEN_RETRY_MAX_SECONDS)

    async def list_page(
        self,
        service_type: ServiceType | None,
        plan_id: str,
        include_history: bool,
        offset: int,
        limit: int,
    ) -> list[Tariff]:
        return await self._store.list_page(service_type, plan_id, include_history, offset, limit)

    async def upsert(
        self, tariffs: Sequence[Tariff], plans: Sequence[RatePlan] = ()
    ) -> list[Tariff]:
        """Validate all, then write the plans and the tariffs in one transaction, then
        reload."""
        seen: set[tuple[str, str, str, object]] = set()
        prepared = []
        for number, tariff in enumerate(tariffs, start=1):
            try:
                tariff = validate_tariff(tariff)
                validate_plan_id(tariff.plan_id)
            except InvalidArgument as error:
                raise InvalidArgument(f"tariff {number}: {error.message}") from error
            key = normalize_key(tariff.service_type, tariff.prefix)
            identity = (tariff.plan_id, tariff.service_type.value, key, tariff.effective_from)
            if identity in seen:
                raise InvalidArgument(
                    f"tariff {number}: {tariff.service_type} {key!r} of plan "
                    f"{tariff.plan_id!r} appears twice with the same effective_from."
                )
            seen.add(identity)
            prepared.append(_with_key(tariff, key))
        written = await self._store.write_tariffs(prepared, plans)
        await self.refresh()
        return written

    async def upsert_plan(self, plan: RatePlan) -> RatePlan:
        written = await self._store.write_plan(plan)
        await self.refresh()
        return written

    async def plans(self) -> list[RatePlan]:
        return await self._store.plans()

    async def assign(self, account_id: str, plan_id: str) -> None:
        if not account_id.strip():
            raise InvalidArgument("account_id is empty.")
        if len(account_id) > 64:
            raise InvalidArgument("account_id is longer than 64 characters.")
        await self._store.assign(account_id, plan_id)
        await self.refresh()


def _with_key(tariff: Tariff, key: str) -> Tariff:
    return replace(tariff, prefix=key)
