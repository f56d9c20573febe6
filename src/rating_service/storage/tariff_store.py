"""Tariffs in PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncEngine

from meterline.kernel.media import ServiceType, Unit
from meterline.kernel.pricing import RateTerms
from rating_service.domain.tariffs import Tariff
from rating_service.storage.models import tariffs


def _tariff(row: Any) -> Tariff:
    return Tariff(
        tariff_id=row.tariff_id,
        service_type=ServiceType(row.service_type),
        prefix=row.prefix,
        unit=Unit(row.unit),
        terms=RateTerms(
            price_per_unit_micros=row.price_per_unit_micros,
            increment_units=row.increment_units,
            minimum_units=row.minimum_units,
            setup_fee_micros=row.setup_fee_micros,
        ),
        currency=row.currency,
        description=row.description,
        updated_at=row.updated_at,
    )


class TariffStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def load_all(self) -> list[Tariff]:
        async with self._engine.connect() as conn:
            rows = await conn.execute(select(tariffs))
            return [_tariff(row) for row in rows]

    async def version(self) -> tuple[int, datetime | None]:
        """Changes whenever a tariff is written: a cheap check for stale caches."""
        async with self._engine.connect() as conn:
            row = (await conn.execute(select(func.count(), func.max(tariffs.c.updated_at)))).one()
            return int(row[0]), row[1]

    async def upsert_many(self, items: Sequence[Tariff]) -> list[Tariff]:
        """Create or replace tariffs by (service_type, prefix), in one transaction."""
        written: list[Tariff] = []
        async with self._engine.begin() as conn:
            for tariff in items:
                values = {
                    "tariff_id": uuid.uuid4().hex,
                    "service_type": tariff.service_type.value,
                    "prefix": tariff.prefix,
                    "unit": tariff.unit.value,
                    "price_per_unit_micros": tariff.terms.price_per_unit_micros,
                    "increment_units": tariff.terms.increment_units,
                    "minimum_units": tariff.terms.minimum_units,
                    "setup_fee_micros": tariff.terms.setup_fee_micros,
                    "currency": tariff.currency,
                    "description": tariff.description,
                }
                inserting = insert(tariffs).values(**values)
                replaced = {
                    key: inserting.excluded[key]
                    for key in values
                    if key not in ("tariff_id", "service_type", "prefix")
                }
                statement = inserting.on_conflict_do_update(
                    constraint="tariffs_service_type_prefix_key",
                    set_={**replaced, "updated_at": func.clock_timestamp()},
                ).returning(tariffs)
                written.append(_tariff((await conn.execute(statement)).one()))
        return written

    async def list_page(
        self, service_type: ServiceType | None, after: tuple[str, str] | None, limit: int
    ) -> list[Tariff]:
        query = select(tariffs).order_by(tariffs.c.service_type, tariffs.c.prefix).limit(limit)
        if service_type is not None:
            query = query.where(tariffs.c.service_type == service_type.value)
        if after is not None:
            query = query.where(
                func.row(tariffs.c.service_type, tariffs.c.prefix) > func.row(*after)
            )
        async with self._engine.connect() as conn:
            return [_tariff(row) for row in await conn.execute(query)]
