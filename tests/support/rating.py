"""Shared helpers for the rating tests: the published Northwind sheet, local and UTC epoch
seconds, and the check that a price's parts add up to it."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from meterline.kernel.pricing import Price
from rating_service.domain.tariff_files import TariffSheet, read_tariff_sheet

PUBLISHED_SHEET = Path(__file__).resolve().parents[1] / "data" / "published_tariffs.yaml"
PUBLISHED_PLAN = "northwind-test"
LONDON = ZoneInfo("Europe/London")


def published_sheet(plan_id: str = PUBLISHED_PLAN) -> TariffSheet:
    """The published sheet, its plan (and its tariffs) renamed to `plan_id`."""
    sheet = read_tariff_sheet(PUBLISHED_SHEET)
    if plan_id == PUBLISHED_PLAN:
        return sheet
    return TariffSheet(
        plans=[dataclasses.replace(plan, plan_id=plan_id) for plan in sheet.plans],
        tariffs=[dataclasses.replace(tariff, plan_id=plan_id) for tariff in sheet.tariffs],
    )


def london(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> int:
    """Epoch seconds of a Europe/London wall-clock time."""
    return int(datetime(year, month, day, hour, minute, second, tzinfo=LONDON).timestamp())


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> int:
    """Epoch seconds of a UTC time."""
    return int(datetime(year, month, day, hour, minute, second, tzinfo=UTC).timestamp())


def assert_parts_add_up(price: Price) -> None:
    """Every part is a non-negative whole number of micros and they sum to the amount."""
    for part in price.parts:
        assert isinstance(part.amount_micros, int) and part.amount_micros >= 0, part
        assert isinstance(part.units, int) and part.units >= 0, part
    assert sum(part.amount_micros for part in price.parts) == price.amount_micros
    assert isinstance(price.amount_micros, int) and price.amount_micros >= 0
