"""Tariff sheets (CSV or YAML): reading them with every error reported by its line (CSV)
or item (YAML) number before anything is written, and writing them for export.

Columns (CSV header / YAML keys of each tariff), prices in decimal currency units:
  service_type     VOICE, VIDEO, INSTANT_MESSAGING, WEB_BROWSING, FILE_DOWNLOAD, APPLICATION
  prefix           endpoint prefix, domain or application id; empty = the plan's fallback
  unit             SECOND, BYTE, MESSAGE, EVENT
  price_per_unit   price per unit_size units (outside named bands)
  unit_size        how many units the price is for: a number, or MINUTE, HOUR, KB, MB, GB,
                   TB (powers of 1000), KiB, MiB, GiB, TiB (powers of 1024); default 1
  increment        first/next billing increments: 60/60, 30/6, 1/1 (or one number)
  minimum_units    usage below this is billed as this many units
  setup_fee        charged once per record that uses a unit
  currency         ISO 4217 code
  rate_plan        the plan; default "default"
  effective_from   ISO 8601 time the version takes effect (default: now)
  price_<BAND>     price in a named time band, e.g. price_PEAK, price_WEEKEND
  tiers            volume tiers, "1GB:0.50;*:0.20" (up to 1 GB at 0.50, the rest at 0.20)
  description      free text
YAML sheets may also hold `rate_plans:` (id, name, time_zone, default_band, bands:
[{band, days, from, to}]) and give band prices as `band_prices: {PEAK: "0.02"}` and
tiers as `tiers: [{up_to: 1GB, price: "0.50"}, {up_to: "*", price: "0.20"}]`.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import yaml

from meterline.kernel import money
from meterline.kernel.bands import (
    BandRule,
    format_clock,
    format_days,
    parse_clock,
    parse_days,
    validate_band_name,
)
from meterline.kernel.errors import InvalidArgument, MeterlineError
from meterline.kernel.media import ServiceType, Unit
from meterline.kernel.pricing import RateTerms, VolumeTier
from rating_service.domain.plans import DEFAULT_PLAN_ID, RatePlan, new_plan
from rating_service.domain.tariffs import Tariff, validate_tariff

COLUMNS = (
    "service_type",
    "prefix",
    "unit",
    "price_per_unit",
    "unit_size",
    "increment",
    "increment_units",
    "minimum_units",
    "setup_fee",
    "currency",
    "rate_plan",
    "effective_from",
    "tiers",
    "band_prices",
    "description",
)
REQUIRED = ("service_type", "unit", "price_per_unit", "currency")
BAND_COLUMN = "price_"
_WHOLE = re.compile(r"-?[0-9]+")
_SIZE = re.compile(r"([0-9]+)?\s*([A-Za-z]*)")
UNIT_SIZES = {
    "": 1,
    "MINUTE": 60,
    "HOUR": 3600,
    "KB": 10**3,
    "MB": 10**6,
    "GB": 10**9,
    "TB": 10**12,
    "KIB": 2**10,
    "MIB": 2**20,
    "GIB": 2**30,
    "TIB": 2**40,
}


class TariffFileError(InvalidArgument):
    """A tariff sheet with errors; `problems` lists each with its line number."""

    def __init__(self, path: str, problems: list[str]) -> None:
        lines = "\n".join(f"  {problem}" for problem in problems)
        super().__init__(f"{path}: {len(problems)} error(s), nothing imported:\n{lines}")
        self.problems = problems


@dataclass(frozen=True)
class TariffSheet:
    plans: list[RatePlan]
    tariffs: list[Tariff]


def _text(value: Any) -> str:
    return "" if value is None else str(value).strip()


def _whole(value: Any, field: str, default: int) -> int:
    text = _text(value)
    if not text:
        return default
    if not _WHOLE.fullmatch(text):
        raise InvalidArgument(f"{field} must be a whole number, not {text!r}")
    return int(text)


def _amount(value: Any, field: str, default: int = 0) -> int:
    if _text(value) == "":
        return default
    if isinstance(value, float):
        # An unquoted YAML number: write it out in full (0.00001, not 1e-05).
        value = format(Decimal(repr(value)), "f")
    try:
        return money.parse_amount(str(value))
    except money.AmountError as exc:
        raise InvalidArgument(f"{field}: {exc}") from exc


def parse_size(value: Any, field: str = "unit_size") -> int:
    """ "MB" -> 1_000_000, "2GiB" -> 2 * 2**30, "1000" -> 1000."""
    text = _text(value)
    match = _SIZE.fullmatch(text)
    if not text or match is None or match.group(2).upper() not in UNIT_SIZES:
        sizes = ", ".join(name for name in UNIT_SIZES if name)
        raise InvalidArgument(f"{field} {text!r}: give a number or one of {sizes}")
    count = int(match.group(1)) if match.group(1) else 1
    return count * UNIT_SIZES[match.group(2).upper()]


def _increments(row: Mapping[str, Any]) -> tuple[int, int]:
    """(first, next) from `increment` ("30/6") or the older `increment_units`."""
    text = _text(row.get("increment"))
    if not text:
        return 0, _whole(row.get("increment_units"), "increment_units", 1)
    first, slash, following = text.partition("/")
    if not _WHOLE.fullmatch(first.strip()) or (slash and not _WHOLE.fullmatch(following.strip())):
        raise InvalidArgument(f"increment {text!r}: write first/next, e.g. 60/60, 30/6 or 1/1")
    if not slash or int(first) == int(following):
        return 0, int(following or first)  # 60/60 is the same as 60
    return int(first), int(following)


def _prefix(value: Any) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        # YAML reads +44 as 44 and 0044 as 36: a number is never what was meant.
        raise InvalidArgument(f'prefix {value!r} was read as a number; quote it (prefix: "+44")')
    return value.strip()


def _moment(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    text = _text(value)
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError as exc:
        raise InvalidArgument(
            f"effective_from {text!r}: write an ISO 8601 time, e.g. 2027-01-01T00:00:00+00:00"
        ) from exc
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _tiers(value: Any) -> tuple[VolumeTier, ...]:
    if value is None or value == "" or value == []:
        return ()
    if isinstance(value, str):
        items = []
        for part in value.split(";"):
            limit, colon, price = part.partition(":")
            if not colon:
                raise InvalidArgument(
                    f"tiers {value!r}: write up_to:price;..., e.g. 1GB:0.50;*:0.20"
                )
            items.append({"up_to": limit, "price": price})
    elif isinstance(value, list):
        items = value
    else:
        raise InvalidArgument("tiers must be a list of {up_to, price} or a 'up_to:price;...' text")
    tiers = []
    for item in items:
        if not isinstance(item, Mapping):
            raise InvalidArgument("each tier needs up_to and price")
        limit = _text(item.get("up_to"))
        up_to = 0 if limit in ("*", "0", "") else parse_size(limit, "a tier's up_to")
        tiers.append(VolumeTier(up_to, _amount(item.get("price"), "a tier's price")))
    return tuple(tiers)


def _band_prices(row: Mapping[str, Any]) -> tuple[tuple[str, int], ...]:
    prices: dict[str, int] = {}
    given = row.get("band_prices")
    if isinstance(given, Mapping):
        for band, price in given.items():
            prices[validate_band_name(str(band))] = _amount(price, f"the {band} price")
    elif given not in (None, ""):
        raise InvalidArgument("band_prices must map band names to prices")
    for column, price in row.items():
        if (
            isinstance(column, str)
            and column.startswith(BAND_COLUMN)
            and column not in COLUMNS
            and _text(price)
        ):
            band = validate_band_name(column.removeprefix(BAND_COLUMN))
            prices[band] = _amount(price, column)
    return tuple(prices.items())


def tariff_from_row(row: Mapping[str, Any]) -> Tariff:
    """One sheet row; prices are decimal amounts in currency units ("0.01")."""
    if None in row:
        raise InvalidArgument("the row has more values than the header has columns")
    unknown = {
        str(column)
        for column in row
        if column not in COLUMNS and not str(column).startswith(BAND_COLUMN)
    }
    if unknown:
        raise InvalidArgument(f"unknown column(s): {', '.join(sorted(unknown))}")
    missing = [name for name in REQUIRED if _text(row.get(name)) == ""]
    if missing:
        raise InvalidArgument(f"missing {', '.join(missing)}")
    try:
        service_type = ServiceType(_text(row["service_type"]).upper())
    except ValueError as exc:
        choices = ", ".join(kind.value for kind in ServiceType)
        raise InvalidArgument(
            f"service_type {row['service_type']!r} is not one of {choices}"
        ) from exc
    try:
        unit = Unit(_text(row["unit"]).upper())
    except ValueError as exc:
        choices = ", ".join(unit.value for unit in Unit)
        raise InvalidArgument(f"unit {row['unit']!r} is not one of {choices}") from exc
    first, following = _increments(row)
    tariff = Tariff(
        tariff_id="",
        service_type=service_type,
        prefix=_prefix(row.get("prefix")),
        unit=unit,
        terms=RateTerms(
            price_per_unit_micros=_amount(row["price_per_unit"], "price_per_unit"),
            increment_units=following,
            first_increment_units=first,
            minimum_units=_whole(row.get("minimum_units"), "minimum_units", 0),
            setup_fee_micros=_amount(row.get("setup_fee"), "setup_fee"),
            unit_size=parse_size(row.get("unit_size") or "1"),
            band_prices=_band_prices(row),
            tiers=_tiers(row.get("tiers")),
        ),
        currency=_text(row["currency"]).upper(),
        description=_text(row.get("description")),
        plan_id=_text(row.get("rate_plan")) or DEFAULT_PLAN_ID,
        effective_from=_moment(row.get("effective_from")),
    )
    return validate_tariff(tariff)


def plan_from_item(item: Mapping[str, Any]) -> RatePlan:
    unknown = set(item) - {"id", "name", "time_zone", "default_band", "bands", "is_default"}
    if unknown:
        raise InvalidArgument(f"unknown key(s): {', '.join(sorted(map(str, unknown)))}")
    bands = item.get("bands") or []
    if not isinstance(bands, list):
        raise InvalidArgument("bands must be a list of {band, days, from, to}")
    rules = []
    for band in bands:
        if not isinstance(band, Mapping) or {"band", "days", "from", "to"} - set(band):
            raise InvalidArgument("each band needs band, days, from and to")
        rules.append(
            BandRule(
                band=validate_band_name(str(band["band"])),
                days=parse_days(str(band["days"])),
                start_minute=parse_clock(str(band["from"])),
                end_minute=parse_clock(str(band["to"])),
            )
        )
    return new_plan(
        _text(item.get("id")),
        _text(item.get("name")),
        _text(item.get("time_zone")) or "UTC",
        _text(item.get("default_band")) or "STANDARD",
        rules,
        bool(item.get("is_default", False)),
    )


def _yaml_document(path: Path, text: str) -> dict[str, Any]:
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise TariffFileError(str(path), [f"not valid YAML: {exc}"]) from exc
    if not isinstance(document, dict) or not isinstance(document.get("tariffs"), list):
        raise TariffFileError(str(path), ["expected a top-level 'tariffs:' list"])
    return document


def read_tariff_sheet(path: Path, on_row: Callable[[int], None] | None = None) -> TariffSheet:
    """All plans and tariffs of a sheet, or a TariffFileError listing every bad row;
    `on_row(1)` is called as each row has been checked (a progress bar's hook)."""
    try:
        text = path.read_text(encoding="utf-8-sig")  # a BOM from spreadsheet exports is fine
    except OSError as exc:
        raise TariffFileError(str(path), [f"cannot read it: {exc.strerror}"]) from exc
    except UnicodeDecodeError as exc:
        raise TariffFileError(
            str(path),
            [
                f"it is not UTF-8 text (byte {exc.start} is {exc.object[exc.start]:#04x}); "
                'save the sheet as UTF-8 ("CSV UTF-8" in a spreadsheet) and import it again'
            ],
        ) from exc
    suffix = path.suffix.lower()
    plans: list[RatePlan] = []
    problems: list[str] = []
    if suffix in (".yaml", ".yml"):
        document = _yaml_document(path, text)
        label = "item"
        rows = list(enumerate(document["tariffs"], start=1))
        plan_items = document.get("rate_plans") or []
        if not isinstance(plan_items, list):
            problems.append("rate_plans must be a list")
            plan_items = []
        for number, item in enumerate(plan_items, start=1):
            try:
                if not isinstance(item, Mapping):
                    raise InvalidArgument("expected a mapping")
                plans.append(plan_from_item(item))
            except MeterlineError as exc:
                problems.append(f"rate plan {number}: {exc.message}")
    elif suffix == ".csv":
        reader = csv.DictReader(io.StringIO(text))
        label = "line"
        rows = [(reader.line_num, row) for row in reader]
    else:
        raise TariffFileError(str(path), ["the file must end in .csv, .yaml or .yml"])
    tariffs: list[Tariff] = []
    seen: dict[tuple[str, ServiceType, str, datetime | None], int] = {}
    for number, row in rows:
        if on_row is not None:
            on_row(1)
        if not isinstance(row, Mapping):
            problems.append(f"{label} {number}: expected a mapping of column to value")
            continue
        try:
            tariff = tariff_from_row(row)
        except MeterlineError as exc:
            problems.append(f"{label} {number}: {exc.message}")
            continue
        key = (tariff.plan_id, tariff.service_type, tariff.prefix, tariff.effective_from)
        if key in seen:
            problems.append(
                f"{label} {number}: {tariff.service_type} prefix {tariff.prefix!r} repeats "
                f"{label} {seen[key]}"
            )
            continue
        seen[key] = number
        tariffs.append(tariff)
    if not tariffs and not problems:
        problems.append("the file holds no tariffs")
    if problems:
        raise TariffFileError(str(path), problems)
    return TariffSheet(plans, tariffs)


def read_tariff_file(path: Path) -> list[Tariff]:
    return read_tariff_sheet(path).tariffs


def _tariff_item(tariff: Tariff) -> dict[str, Any]:
    terms = tariff.terms
    item: dict[str, Any] = {
        "rate_plan": tariff.plan_id,
        "service_type": tariff.service_type.value,
        "prefix": tariff.prefix,
        "unit": tariff.unit.value,
        "price_per_unit": money.format_amount(terms.price_per_unit_micros),
        "unit_size": str(terms.unit_size),
        "increment": (
            f"{terms.first_increment_units}/{terms.increment_units}"
            if terms.first_increment_units
            else str(terms.increment_units)
        ),
        "minimum_units": terms.minimum_units,
        "setup_fee": money.format_amount(terms.setup_fee_micros),
        "currency": tariff.currency,
        "description": tariff.description,
    }
    if tariff.effective_from is not None and tariff.effective_from > datetime.now(UTC):
        # Only a scheduled version keeps its start: one in force re-imports as "in force".
        item["effective_from"] = tariff.effective_from.isoformat()
    if terms.band_prices:
        item["band_prices"] = {band: money.format_amount(p) for band, p in terms.band_prices}
    if terms.tiers:
        item["tiers"] = [
            {
                "up_to": str(tier.up_to_units or "*"),
                "price": money.format_amount(tier.price_per_unit_micros),
            }
            for tier in terms.tiers
        ]
    return item


def write_tariff_sheet(
    path: Path,
    plans: list[RatePlan],
    tariffs: list[Tariff],
    on_row: Callable[[int], None] | None = None,
) -> None:
    """Export: a sheet `read_tariff_sheet` reads back to the same plans and tariffs;
    `on_row(1)` is called as each tariff has been put in (a progress bar's hook)."""
    items = []
    for tariff in tariffs:
        items.append(_tariff_item(tariff))
        if on_row is not None:
            on_row(1)
    if path.suffix.lower() in (".yaml", ".yml"):
        document = {
            "rate_plans": [
                {
                    "id": plan.plan_id,
                    "name": plan.display_name,
                    "time_zone": plan.schedule.time_zone,
                    "default_band": plan.schedule.default_band,
                    "is_default": plan.is_default,
                    "bands": [
                        {
                            "band": rule.band,
                            "days": format_days(rule.days),
                            "from": format_clock(rule.start_minute),
                            "to": format_clock(rule.end_minute),
                        }
                        for rule in plan.schedule.rules
                    ],
                }
                for plan in plans
            ],
            "tariffs": items,
        }
        path.write_text(yaml.safe_dump(document, sort_keys=False, allow_unicode=True))
        return
    if path.suffix.lower() != ".csv":
        raise InvalidArgument("export to a .csv, .yaml or .yml file")
    bands = sorted({band for t in tariffs for band, _ in t.terms.band_prices})
    header = [c for c in COLUMNS if c not in ("increment_units", "band_prices")]
    header += [f"{BAND_COLUMN}{band}" for band in bands]
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=header)
        writer.writeheader()
        for item in items:
            row = {key: value for key, value in item.items() if key in header}
            for band, price in item.pop("band_prices", {}).items():
                row[f"{BAND_COLUMN}{band}"] = price
            if "tiers" in item:
                row["tiers"] = ";".join(f"{t['up_to']}:{t['price']}" for t in item["tiers"])
            writer.writerow(row)
