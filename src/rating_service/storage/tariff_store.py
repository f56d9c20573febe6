"""Rate plans, tariff versions and account assignments in PostgreSQL. Every write
notifies CHANGES_CHANNEL, so every rating instance reloads its cache.

Every method runs again once if its pooled connection was dropped (a database restart,
`db.run_on_connection` / `db.run_in_transaction`). The writes are safe to repeat even when
the first try may have committed: a version whose terms are already in force changes
nothing, and plans and assignments are upserts."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, func, literal, select, text, union_all, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from meterline.kernel.bands import rule_from_json, rule_to_json
from meterline.kernel.db import run_in_transaction, run_on_connection
from meterline.kernel.errors import InvalidArgument, NotFound
from meterline.kernel.media import ServiceType, Unit
from meterline.kernel.pricing import terms_from_json, terms_to_json
from rating_service.domain.plans import RatePlan, new_plan
from rating_service.domain.tariffs import Tariff
from rating_service.storage.models import CHANGES_CHANNEL, account_plans, rate_plans, tariffs

# How far in the past a new version may start: a clock-skew allowance, not a way to
# reprice usage already rated.
PAST_ALLOWANCE = timedelta(seconds=60)


def _tariff(row: Any) -> Tariff:
    return Tariff(
        tariff_id=row.tariff_id,
        service_type=ServiceType(row.service_type),
        prefix=row.prefix,
        unit=Unit(row.unit),
        terms=terms_from_json(row._mapping),
        currency=row.currency,
        description=row.description,
        updated_at=row.updated_at,
        plan_id=row.plan_id,
        effective_from=row.effective_from,
        effective_to=row.effective_to,
    )


def _plan(row: Any) -> RatePlan:
    rules = [rule_from_json(band) for band in row.time_bands]
    return new_plan(
        row.plan_id, row.display_name, row.time_zone, row.default_band, rules, row.is_default
    )


def _plan_values(plan: RatePlan) -> dict[str, Any]:
    return {
        "plan_id": plan.plan_id,
        "display_name": plan.display_name,
        "time_zone": plan.schedule.time_zone,
        "default_band": plan.schedule.default_band,
        "time_bands": [rule_to_json(rule) for rule in plan.schedule.rules],
        "is_default": plan.is_default,
    }


def _same_terms(stored: Tariff, given: Tariff) -> bool:
    return (
        stored.terms == given.terms
        and stored.unit == given.unit
        and stored.currency == given.currency
        and stored.description == given.description
    )


def _key(tariff: Tariff) -> tuple[str, str, str]:
    return (tariff.plan_id, tariff.service_type.value, tariff.prefix)


def _start(tariff: Tariff) -> datetime:
    return tariff.effective_from or datetime.min.replace(tzinfo=UTC)


class _WritePlan:
    """The rows an import inserts and changes, decided in memory against the versions
    already stored (and those added earlier in the same import)."""

    def __init__(self, now: datetime) -> None:
        self.now = now
        self.inserts: list[dict[str, Any]] = []
        self.replaces: list[dict[str, Any]] = []
        self.closes: dict[str, datetime] = {}

    def add(self, versions: list[Tariff], tariff: Tariff, number: int) -> Tariff:
        now = self.now
        start = tariff.effective_from
        # Something already rated usage under this key: a version in force or ended.
        has_past = any(v.effective_from is None or v.effective_from <= now for v in versions)
        if has_past and start is None:
            start = now
        if has_past and start is not None and start < now - PAST_ALLOWANCE:
            raise InvalidArgument(
                f"tariff {number}: effective_from {start.isoformat()} is in the past; a new "
                "version applies from now on and never reprices usage already rated.",
                reason="EFFECTIVE_FROM_IN_THE_PAST",
            )
        versions.sort(key=_start)
        same = [v for v in versions if v.effective_from == start]
        later = [
            v.effective_from
            for v in versions
            if v.effective_from is not None and (start is None or v.effective_from > start)
        ]
        earlier = [
            v
            for v in versions
            if start is not None and (v.effective_from is None or v.effective_from < start)
        ]
        current = same[0] if same else (earlier[-1] if earlier else None)
        if current is not None and _same_terms(current, tariff):
            return current  # importing what is already in force changes nothing
        new = replace(
            tariff,
            tariff_id=same[0].tariff_id if same else uuid.uuid4().hex,
            effective_from=start,
            effective_to=min(later) if later else None,
            updated_at=now,
        )
        if same:
            # A version not yet in force may be replaced; one in force may not.
            if start is None or start <= now:
                raise InvalidArgument(
                    f"tariff {number}: a version starting then is already in force; give a "
                    "later effective_from.",
                    reason="VERSION_IN_FORCE",
                )
            self.replaces.append(_row_values(new))
            versions[versions.index(same[0])] = new
            return new
        if earlier and start is not None:
            closed = replace(earlier[-1], effective_to=start)
            self.closes[closed.tariff_id] = start
            versions[versions.index(earlier[-1])] = closed
        self.inserts.append(_row_values(new))
        versions.append(new)
        return new

    async def execute(self, conn: AsyncConnection) -> None:
        inserted = {row["tariff_id"] for row in self.inserts}
        closes = [
            {"b_id": tariff_id, "b_to": moment}
            for tariff_id, moment in self.closes.items()
            if tariff_id not in inserted
        ]
        if closes:
            await conn.execute(
                update(tariffs)
                .where(tariffs.c.tariff_id == bindparam("b_id"))
                .values(effective_to=bindparam("b_to"), updated_at=self.now),
                closes,
            )
        for values in self.replaces:
            await conn.execute(
                update(tariffs).where(tariffs.c.tariff_id == values["tariff_id"]).values(**values)
            )
        if self.inserts:
            # A version closed later in the same import is inserted already closed.
            for row in self.inserts:
                if row["tariff_id"] in self.closes:
                    row["effective_to"] = self.closes[row["tariff_id"]]
            await conn.execute(insert(tariffs), self.inserts)


def _row_values(tariff: Tariff) -> dict[str, Any]:
    return {
        "tariff_id": tariff.tariff_id,
        "service_type": tariff.service_type.value,
        "prefix": tariff.prefix,
        "unit": tariff.unit.value,
        **terms_to_json(tariff.terms),
        "currency": tariff.currency,
        "description": tariff.description,
        "plan_id": tariff.plan_id,
        "effective_from": tariff.effective_from,
        "effective_to": tariff.effective_to,
        "updated_at": tariff.updated_at,
    }


class TariffStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def load(self) -> tuple[list[Tariff], list[RatePlan], dict[str, str]]:
        return await run_on_connection(self._engine, self._load)

    async def _load(
        self, conn: AsyncConnection
    ) -> tuple[list[Tariff], list[RatePlan], dict[str, str]]:
        found = [_tariff(row) for row in await conn.execute(select(tariffs))]
        plans = [_plan(row) for row in await conn.execute(select(rate_plans))]
        assigned = {
            row.account_id: row.plan_id for row in await conn.execute(select(account_plans))
        }
        return found, plans, assigned

    async def version(self) -> tuple[Any, ...]:
        """Changes whenever anything is written: a cheap check for stale caches."""
        parts = [
            select(literal(name), func.count(), func.max(table.c.updated_at))
            for name, table in (
                ("tariffs", tariffs),
                ("plans", rate_plans),
                ("accounts", account_plans),
            )
        ]

        async def read(conn: AsyncConnection) -> tuple[Any, ...]:
            return tuple(tuple(row) for row in await conn.execute(union_all(*parts)))

        return await run_on_connection(self._engine, read)

    async def _notify(self, conn: AsyncConnection) -> None:
        await conn.execute(text("SELECT pg_notify(:channel, '')"), {"channel": CHANGES_CHANNEL})

    async def write_tariffs(
        self, items: Sequence[Tariff], plans: Sequence[RatePlan] = ()
    ) -> list[Tariff]:
        """Write the plans, then add a version of each tariff, in one transaction: all or
        none. The versions of the plans written to are read (and locked) once, decided on
        in memory and written in bulk, so a sheet of 100,000 tariffs takes seconds."""
        return await run_in_transaction(
            self._engine, lambda conn: self._write_tariffs(conn, items, plans), repeatable=True
        )

    async def _write_tariffs(
        self, conn: AsyncConnection, items: Sequence[Tariff], plans: Sequence[RatePlan]
    ) -> list[Tariff]:
        for plan in plans:
            await self._write_plan(conn, plan)
        now = (await conn.execute(select(func.clock_timestamp()))).scalar_one()
        known_plans = set((await conn.execute(select(rate_plans.c.plan_id))).scalars())
        for number, tariff in enumerate(items, start=1):
            if tariff.plan_id not in known_plans:
                raise NotFound(
                    f"tariff {number}: there is no rate plan {tariff.plan_id!r}; create it first.",
                    reason="RATE_PLAN_NOT_FOUND",
                )
        rows = await conn.execute(
            select(tariffs)
            .where(tariffs.c.plan_id.in_({tariff.plan_id for tariff in items}))
            .with_for_update()
        )
        versions: dict[tuple[str, str, str], list[Tariff]] = {}
        for row in rows:
            stored = _tariff(row)
            versions.setdefault(_key(stored), []).append(stored)
        changes = _WritePlan(now)
        written = [
            changes.add(versions.setdefault(_key(tariff), []), tariff, number)
            for number, tariff in enumerate(items, start=1)
        ]
        await changes.execute(conn)
        await self._notify(conn)
        return written

    async def list_page(
        self,
        service_type: ServiceType | None,
        plan_id: str,
        include_history: bool,
        offset: int,
        limit: int,
    ) -> list[Tariff]:
        query = (
            select(tariffs)
            .order_by(
                tariffs.c.plan_id,
                tariffs.c.service_type,
                tariffs.c.prefix,
                tariffs.c.effective_from.asc().nulls_first(),
                tariffs.c.tariff_id,
            )
            .offset(offset)
            .limit(limit)
        )
        if service_type is not None:
            query = query.where(tariffs.c.service_type == service_type.value)
        if plan_id:
            query = query.where(tariffs.c.plan_id == plan_id)
        if not include_history:
            query = query.where(
                tariffs.c.effective_from.is_(None) | (tariffs.c.effective_from <= func.now()),
                tariffs.c.effective_to.is_(None) | (tariffs.c.effective_to > func.now()),
            )

        async def read(conn: AsyncConnection) -> list[Tariff]:
            return [_tariff(row) for row in await conn.execute(query)]

        return await run_on_connection(self._engine, read)

    async def write_plan(self, plan: RatePlan) -> RatePlan:
        async def work(conn: AsyncConnection) -> RatePlan:
            written = await self._write_plan(conn, plan)
            await self._notify(conn)
            return written

        return await run_in_transaction(self._engine, work, repeatable=True)

    async def _write_plan(self, conn: AsyncConnection, plan: RatePlan) -> RatePlan:
        values = _plan_values(plan)
        if plan.is_default:
            await conn.execute(
                update(rate_plans)
                .where(rate_plans.c.plan_id != plan.plan_id, rate_plans.c.is_default)
                .values(is_default=False, updated_at=func.clock_timestamp())
            )
        statement = insert(rate_plans).values(**values, updated_at=func.clock_timestamp())
        row = (
            await conn.execute(
                statement.on_conflict_do_update(
                    index_elements=["plan_id"],
                    set_={**values, "updated_at": func.clock_timestamp()},
                ).returning(rate_plans)
            )
        ).one()
        if not plan.is_default:
            defaults = (
                await conn.execute(select(func.count()).where(rate_plans.c.is_default))
            ).scalar_one()
            if not defaults:
                raise InvalidArgument(
                    "This would leave no default plan; mark another plan default first.",
                    reason="NO_DEFAULT_PLAN",
                )
        return _plan(row)

    async def plans(self) -> list[RatePlan]:
        async def read(conn: AsyncConnection) -> list[RatePlan]:
            rows = await conn.execute(select(rate_plans).order_by(rate_plans.c.plan_id))
            return [_plan(row) for row in rows]

        return await run_on_connection(self._engine, read)

    async def assign(self, account_id: str, plan_id: str) -> None:
        await run_in_transaction(
            self._engine, lambda conn: self._assign(conn, account_id, plan_id), repeatable=True
        )

    async def _assign(self, conn: AsyncConnection, account_id: str, plan_id: str) -> None:
        if plan_id:
            exists = (
                await conn.execute(select(func.count()).where(rate_plans.c.plan_id == plan_id))
            ).scalar_one()
            if not exists:
                raise NotFound(f"There is no rate plan {plan_id!r}.", reason="RATE_PLAN_NOT_FOUND")
            statement = insert(account_plans).values(account_id=account_id, plan_id=plan_id)
            await conn.execute(
                statement.on_conflict_do_update(
                    index_elements=["account_id"],
                    set_={"plan_id": plan_id, "updated_at": func.clock_timestamp()},
                )
            )
        else:
            await conn.execute(
                account_plans.delete().where(account_plans.c.account_id == account_id)
            )
        await self._notify(conn)
