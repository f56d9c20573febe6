"""The active tariffs held in memory, so that rating does no database round trip."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from datetime import datetime

from meterline.kernel.errors import InvalidArgument
from meterline.kernel.media import ServiceType
from rating_service.domain.tariffs import Tariff, TariffIndex, validate_tariff
from rating_service.storage.tariff_store import TariffStore

log = logging.getLogger(__name__)


class TariffCatalog:
    def __init__(self, store: TariffStore) -> None:
        self._store = store
        self.index = TariffIndex()
        self._version: tuple[int, datetime | None] | None = None

    async def refresh(self) -> None:
        version = await self._store.version()
        self.index = TariffIndex(await self._store.load_all())
        self._version = version
        log.info("loaded %d tariffs", len(self.index))

    async def refresh_if_changed(self) -> None:
        if await self._store.version() != self._version:
            await self.refresh()

    async def keep_fresh(self, interval_seconds: float = 2.0) -> None:
        """Pick up tariffs written through another instance."""
        while True:
            await asyncio.sleep(interval_seconds)
            try:
                await self.refresh_if_changed()
            except Exception:  # a database blip must not stop the refresher
                log.exception("tariff refresh failed; keeping the tariffs already loaded")

    async def list_page(
        self, service_type: ServiceType | None, after: tuple[str, str] | None, limit: int
    ) -> list[Tariff]:
        return await self._store.list_page(service_type, after, limit)

    async def upsert(self, tariffs: Sequence[Tariff]) -> list[Tariff]:
        """Validate all, then write all in one transaction, then reload."""
        seen: set[tuple[str, str]] = set()
        for tariff in tariffs:
            validate_tariff(tariff)
            key = (tariff.service_type.value, tariff.prefix)
            if key in seen:
                raise InvalidArgument(
                    f"{tariff.service_type} prefix {tariff.prefix!r} appears twice in one import."
                )
            seen.add(key)
        written = await self._store.upsert_many(tariffs)
        await self.refresh()
        return written
