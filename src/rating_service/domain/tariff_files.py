"""Reading tariff sheets (CSV or YAML). Every row is checked and every error reported
with its line number before anything is written: an import is all or nothing."""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any

import yaml

from meterline.kernel import money
from meterline.kernel.errors import InvalidArgument, MeterlineError
from meterline.kernel.media import ServiceType, Unit
from meterline.kernel.pricing import RateTerms
from rating_service.domain.tariffs import Tariff, validate_tariff

COLUMNS = (
    "service_type",
    "prefix",
    "unit",
    "price_per_unit",
    "increment_units",
    "minimum_units",
    "setup_fee",
    "currency",
    "description",
)
_WHOLE = re.compile(r"-?[0-9]+")
REQUIRED = ("service_type", "unit", "price_per_unit", "currency")


class TariffFileError(InvalidArgument):
    """A tariff sheet with errors; `problems` lists each with its line number."""

    def __init__(self, path: str, problems: list[str]) -> None:
        lines = "\n".join(f"  {problem}" for problem in problems)
        super().__init__(f"{path}: {len(problems)} error(s), nothing imported:\n{lines}")
        self.problems = problems


def _whole(value: Any, field: str, default: int) -> int:
    if value is None or str(value).strip() == "":
        return default
    text = str(value).strip()
    if not _WHOLE.fullmatch(text):
        raise InvalidArgument(f"{field} must be a whole number, not {text!r}")
    return int(text)


def _amount(value: Any, field: str, default: int = 0) -> int:
    if value is None or str(value).strip() == "":
        return default
    if isinstance(value, float):
        # An unquoted YAML number: write it out in full (0.00001, not 1e-05).
        value = format(Decimal(repr(value)), "f")
    try:
        return money.parse_amount(str(value))
    except money.AmountError as exc:
        raise InvalidArgument(f"{field}: {exc}") from exc


def _prefix(value: Any) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        # YAML reads +44 as 44 and 0044 as 36: a number is never what was meant.
        raise InvalidArgument(f'prefix {value!r} was read as a number; quote it (prefix: "+44")')
    return value.strip()


def tariff_from_row(row: Mapping[str, Any]) -> Tariff:
    """One sheet row; prices are decimal amounts in currency units ("0.01")."""
    if None in row:
        raise InvalidArgument("the row has more values than the header has columns")
    unknown = set(row) - set(COLUMNS)
    if unknown:
        raise InvalidArgument(f"unknown column(s): {', '.join(sorted(map(str, unknown)))}")
    missing = [name for name in REQUIRED if row.get(name) in (None, "")]
    if missing:
        raise InvalidArgument(f"missing {', '.join(missing)}")
    try:
        service_type = ServiceType(str(row["service_type"]).strip().upper())
    except ValueError as exc:
        choices = ", ".join(kind.value for kind in ServiceType)
        raise InvalidArgument(
            f"service_type {row['service_type']!r} is not one of {choices}"
        ) from exc
    try:
        unit = Unit(str(row["unit"]).strip().upper())
    except ValueError as exc:
        choices = ", ".join(unit.value for unit in Unit)
        raise InvalidArgument(f"unit {row['unit']!r} is not one of {choices}") from exc
    tariff = Tariff(
        tariff_id="",
        service_type=service_type,
        prefix=_prefix(row.get("prefix")),
        unit=unit,
        terms=RateTerms(
            price_per_unit_micros=_amount(row["price_per_unit"], "price_per_unit"),
            increment_units=_whole(row.get("increment_units"), "increment_units", 1),
            minimum_units=_whole(row.get("minimum_units"), "minimum_units", 0),
            setup_fee_micros=_amount(row.get("setup_fee"), "setup_fee"),
        ),
        currency=str(row["currency"]).strip().upper(),
        description=str(row.get("description") or "").strip(),
    )
    return validate_tariff(tariff)


def _rows(path: Path, text: str) -> list[tuple[int, Mapping[str, Any]]]:
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            document = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise TariffFileError(str(path), [f"not valid YAML: {exc}"]) from exc
        items = document.get("tariffs") if isinstance(document, dict) else None
        if not isinstance(items, list):
            raise TariffFileError(str(path), ["expected a top-level 'tariffs:' list"])
        # YAML gives no line per item; number them as items, 1-based.
        return [(number, item) for number, item in enumerate(items, start=1)]
    if path.suffix.lower() == ".csv":
        reader = csv.DictReader(io.StringIO(text))
        return [(reader.line_num, row) for row in reader]
    raise TariffFileError(str(path), ["the file must end in .csv, .yaml or .yml"])


def read_tariff_file(path: Path) -> list[Tariff]:
    """All tariffs of a sheet, or a TariffFileError listing every bad row."""
    try:
        text = path.read_text(encoding="utf-8-sig")  # a BOM from spreadsheet exports is fine
    except OSError as exc:
        raise TariffFileError(str(path), [f"cannot read it: {exc.strerror}"]) from exc
    label = "item" if path.suffix.lower() in (".yaml", ".yml") else "line"
    tariffs: list[Tariff] = []
    problems: list[str] = []
    seen: dict[tuple[ServiceType, str], int] = {}
    for number, row in _rows(path, text):
        if not isinstance(row, Mapping):
            problems.append(f"{label} {number}: expected a mapping of column to value")
            continue
        try:
            tariff = tariff_from_row(row)
        except MeterlineError as exc:
            problems.append(f"{label} {number}: {exc.message}")
            continue
        key = (tariff.service_type, tariff.prefix)
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
    return tariffs
