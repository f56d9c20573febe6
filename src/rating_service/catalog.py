"""The active tariffs, plans and account assignments held in memory, so that rating
does no database round trip. Every instance reloads when PostgreSQL notifies it of a
write (LISTEN/NOTIFY), and checks for missed changes periodically."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import psycopg

from meterline.kernel.db import libpq_dsn
from meterline.kernel.errors import InvalidArgument
from meterline.kernel.media import ServiceType
from rating_service.domain.plans import RatePlan, validate_plan_id
from rating_service.domain.tariffs import Tariff, TariffIndex, normalize_key, validate_tariff
from rating_service.storage.models import CHANGES_CHANNEL
from rating_service.storage.tariff_store import TariffStore

log = logging.getLogger(__name__)


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
            except Exception:  # a database blip must not stop the refresher
                log.exception("tariff refresh failed; keeping the tariffs already loaded")

    async def listen(self, database_url: str) -> None:
        """Reload on every change notification, reconnecting when the connection drops."""
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    libpq_dsn(database_url), autocommit=True
                ) as conn:
                    await conn.execute(f"LISTEN {CHANGES_CHANNEL}")
                    await self.refresh_if_changed()  # catch up on what came while away
                    async for _ in conn.notifies():
                        # The writing instance has reloaded already; others reload now.
                        await self.refresh_if_changed()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("lost the tariff change listener; reconnecting")
                await asyncio.sleep(2)

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
