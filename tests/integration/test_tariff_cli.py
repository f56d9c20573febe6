"""`meterline tariffs ...` and `meterline account plan` with the published Northwind sheet,
as an operator types them, against the in-process stack. Each test imports the sheet
under a plan id of its own: the run's rating database is shared by every test."""

from __future__ import annotations

import asyncio
import csv
import dataclasses
import json
import os
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from meterline.rating.v1 import rating_pb2, types_pb2
from rating_service.domain.tariff_files import read_tariff_sheet
from tests.support import tls
from tests.support.clients import OPERATOR, Stubs, new_account
from tests.support.rating import PUBLISHED_PLAN, PUBLISHED_SHEET, published_sheet, utc
from tests.support.stack import TOKEN_SECRET, InProcessStack

pytestmark = pytest.mark.integration

PUBLISHED_TARIFFS = len(published_sheet().tariffs)


async def meterline(stack: InProcessStack, *args: str) -> tuple[int, str, str]:
    env = {
        **os.environ,
        "METERLINE_TOKEN_SECRET": TOKEN_SECRET,
        "METERLINE_RATING_ADDRESS": stack.endpoints.rating,
        "METERLINE_BILLING_ADDRESS": stack.endpoints.billing,
        "METERLINE_SERVICE_ADDRESS": stack.endpoints.service,
        **tls.client_environment(),
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "meterline.cli.main",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def unique(prefix: str = "nw-cli") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def northwind_sheet(tmp_path: Path, plan_id: str) -> Path:
    """The published sheet with its plan renamed to `plan_id`."""
    path = tmp_path / f"{plan_id}.yaml"
    path.write_text(PUBLISHED_SHEET.read_text().replace(PUBLISHED_PLAN, plan_id))
    return path


async def import_northwind(stack: InProcessStack, tmp_path: Path) -> str:
    plan_id = unique()
    code, out, err = await meterline(
        stack, "tariffs", "import", str(northwind_sheet(tmp_path, plan_id))
    )
    assert code == 0, err
    assert f"imported {PUBLISHED_TARIFFS} tariffs and 1 rate plans" in out
    return plan_id


async def listed_tariffs(stack: InProcessStack, plan_id: str) -> list[dict[str, Any]]:
    code, out, err = await meterline(stack, "tariffs", "list", "--history", "--json")
    assert code == 0, err
    return [t for t in json.loads(out) if t.get("rate_plan_id") == plan_id]


def only_plan(exported: Path, plan_id: str, target: Path) -> dict[str, Any]:
    """The exported YAML sheet cut down to one plan and its tariffs, written to target."""
    document = yaml.safe_load(exported.read_text())
    document["rate_plans"] = [p for p in document["rate_plans"] if p["id"] == plan_id]
    document["tariffs"] = [t for t in document["tariffs"] if t["rate_plan"] == plan_id]
    target.write_text(yaml.safe_dump(document, sort_keys=False))
    return document


async def london_call_amount(api: Stubs, plan_id: str) -> int:
    """Wednesday 14 July 2027 17:59 BST, 240 s to +4420: 60 s PEAK + 180 s OFF_PEAK."""
    rated = await api.rating.RateUsage(
        rating_pb2.RateUsageRequest(
            service_type=types_pb2.VOICE,
            endpoint="+442079460000",
            units=240,
            start_time={"seconds": utc(2027, 7, 14, 16, 59)},
            rate_plan_id=plan_id,
        ),
        metadata=OPERATOR,
    )
    return int(rated.amount_micros)


async def test_the_published_sheet_imports_and_its_plan_is_listed(
    stack: InProcessStack, tmp_path: Path, api: Stubs
) -> None:
    plan_id = unique()
    code, out, err = await meterline(
        stack, "tariffs", "import", str(northwind_sheet(tmp_path, plan_id)), "--json"
    )
    assert code == 0, err
    assert json.loads(out) == {"written": PUBLISHED_TARIFFS, "rate_plans": 1}

    code, out, err = await meterline(stack, "tariffs", "plans", "--json")
    assert code == 0, err
    (plan,) = [p for p in json.loads(out) if p["rate_plan_id"] == plan_id]
    assert plan["display_name"] == "Northwind Telecom (test)"
    assert (plan["time_zone"], plan["default_band"]) == ("Europe/London", "OFF_PEAK")
    assert plan["time_bands"] == [
        {"band": "PEAK", "days": "MON,TUE,WED,THU,FRI", "start_time": "08:00", "end_time": "18:00"},
        {"band": "WEEKEND", "days": "SAT,SUN", "start_time": "00:00", "end_time": "24:00"},
    ]
    assert plan["is_default"] is False  # the CLI's JSON carries every field

    code, out, err = await meterline(stack, "tariffs", "plans")
    assert code == 0, err
    (row,) = [line for line in out.splitlines() if line.startswith(plan_id)]
    assert row.split()[:5] == [plan_id, "Northwind", "Telecom", "(test)", "Europe/London"]

    listed = await listed_tariffs(stack, plan_id)
    # Both versions of +44 are listed: the one in force and the 2030 one.
    assert len(listed) == PUBLISHED_TARIFFS
    assert await london_call_amount(api, plan_id) == 360_000  # 180000 PEAK + 180000 OFF_PEAK


async def test_an_exported_yaml_sheet_imports_again(
    stack: InProcessStack, tmp_path: Path, api: Stubs
) -> None:
    plan_id = await import_northwind(stack, tmp_path)
    exported = tmp_path / "out.yaml"
    code, out, err = await meterline(stack, "tariffs", "export", str(exported))
    assert code == 0, err
    assert out.startswith("exported ") and str(exported) in out

    # The whole installation is exported; other tests' plans are cut out here.
    mine = tmp_path / "mine.yaml"
    document = only_plan(exported, plan_id, mine)
    assert [p["time_zone"] for p in document["rate_plans"]] == ["Europe/London"]
    assert len(document["tariffs"]) == PUBLISHED_TARIFFS
    uk = [t for t in document["tariffs"] if t["service_type"] == "VOICE" and t["prefix"] == "+44"]
    assert [t.get("effective_from") for t in uk] == [None, "2030-01-01T00:00:00+00:00"]
    assert [t["band_prices"] for t in uk] == [
        {"PEAK": "0.30", "WEEKEND": "0.06"},
        {"PEAK": "0.24", "WEEKEND": "0.05"},
    ]
    # It reads back to the published tariffs (first increments spelled out: 1 -> 1/1).
    original = published_sheet(plan_id)
    again = read_tariff_sheet(mine)
    assert again.plans == original.plans
    assert _normalized(again.tariffs) == _normalized(original.tariffs)

    code, out, err = await meterline(stack, "tariffs", "import", str(mine))
    assert code == 0, err
    assert f"imported {PUBLISHED_TARIFFS} tariffs and 1 rate plans" in out
    assert len(await listed_tariffs(stack, plan_id)) == PUBLISHED_TARIFFS
    assert await london_call_amount(api, plan_id) == 360_000


async def test_an_export_imports_again_after_a_price_change(
    stack: InProcessStack, tmp_path: Path
) -> None:
    plan_id = await import_northwind(stack, tmp_path)
    # A second import is a price change: new versions of every key, in force from now.
    code, _, err = await meterline(
        stack, "tariffs", "import", str(northwind_sheet(tmp_path, plan_id))
    )
    assert code == 0, err
    exported, mine = tmp_path / "out.yaml", tmp_path / "mine.yaml"
    code, _, err = await meterline(stack, "tariffs", "export", str(exported))
    assert code == 0, err
    only_plan(exported, plan_id, mine)
    code, out, err = await meterline(stack, "tariffs", "import", str(mine))
    assert code == 0, err
    assert f"imported {PUBLISHED_TARIFFS} tariffs" in out


async def test_a_csv_export_has_a_column_per_band(stack: InProcessStack, tmp_path: Path) -> None:
    plan_id = await import_northwind(stack, tmp_path)
    exported = tmp_path / "out.csv"
    code, out, err = await meterline(stack, "tariffs", "export", str(exported))
    assert code == 0, err
    with exported.open(newline="") as handle:
        reader = csv.DictReader(handle)
        header = reader.fieldnames or []
        rows = [row for row in reader if row["rate_plan"] == plan_id]
    assert {"price_PEAK", "price_WEEKEND", "tiers", "increment", "effective_from"} <= set(header)
    assert len(rows) == PUBLISHED_TARIFFS

    def row(service_type: str, prefix: str) -> list[dict[str, str]]:
        return [r for r in rows if (r["service_type"], r["prefix"]) == (service_type, prefix)]

    assert [(r["price_PEAK"], r["price_WEEKEND"]) for r in row("VOICE", "+44")] == [
        ("0.30", "0.06"),
        ("0.24", "0.05"),
    ]
    (london,) = row("VOICE", "+4420")
    assert (london["price_PEAK"], london["price_per_unit"], london["increment"]) == (
        "0.18",
        "0.06",
        "1",  # 1/1 is written as its one increment
    )
    (mobile,) = row("VOICE", "+447")
    assert (mobile["price_PEAK"], mobile["increment"], mobile["setup_fee"]) == ("", "30/6", "0.10")
    (web,) = row("WEB_BROWSING", "northwind.example")
    assert (web["tiers"], web["unit_size"]) == ("1000000000:0.01;*:0.004", "1000000")

    # My plan's rows, on their own, read back to the published tariffs and import again.
    mine = tmp_path / "mine.csv"
    with mine.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=header)
        writer.writeheader()
        writer.writerows(rows)
    assert _normalized(read_tariff_sheet(mine).tariffs) == _normalized(
        published_sheet(plan_id).tariffs
    )
    code, out, err = await meterline(stack, "tariffs", "import", str(mine))
    assert code == 0, err
    assert f"imported {PUBLISHED_TARIFFS} tariffs from" in out


async def test_a_malformed_yaml_sheet_names_every_bad_item_and_imports_nothing(
    stack: InProcessStack, tmp_path: Path
) -> None:
    plan_id, good_one, good_two = unique(), "+8801" + uuid.uuid4().hex[:6], "+8802"
    good_two += uuid.uuid4().hex[:6]
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        f"""
rate_plans:
  - {{id: {plan_id}, name: Bad, time_zone: Mars/Olympus_Mons, default_band: OFF_PEAK}}
tariffs:
  - {{rate_plan: default, service_type: VOICE, prefix: "{good_one}", unit: SECOND,
      price_per_unit: "0.01", currency: GBP}}
  - {{service_type: TELEPATHY, prefix: "+44", unit: SECOND, price_per_unit: "0.01",
      currency: GBP}}
  - {{rate_plan: default, service_type: VOICE, prefix: "{good_two}", unit: SECOND,
      price_per_unit: "0.01", currency: GBP}}
  - {{service_type: VOICE, prefix: +44, unit: SECOND, price_per_unit: "0.01", currency: GBP}}
  - {{service_type: WEB_BROWSING, prefix: a.example, unit: BYTE, price_per_unit: "0.01",
      tiers: "1GB-0.50", currency: GBP}}
  - {{service_type: VOICE, prefix: "+45", unit: SECOND, increment: 30/x,
      price_per_unit: "0.01", currency: GBP}}
  - {{service_type: VOICE, prefix: "+46", unit: SECOND, price_per_unit: "-0.01",
      currency: GBP}}
"""
    )
    code, out, err = await meterline(stack, "tariffs", "import", str(bad))
    assert code == 2
    assert out == ""
    assert err.startswith("error: ")
    assert "6 error(s), nothing imported" in err
    expected = {
        "rate plan 1": "Mars/Olympus_Mons",
        "item 2": "TELEPATHY",
        "item 4": "read as a number",
        "item 5": "tiers",
        "item 6": "increment",
        "item 7": "negative",
    }
    lines = err.splitlines()
    for label, words in expected.items():
        (line,) = [line for line in lines if line.strip().startswith(f"{label}:")]
        assert words in line, line
    assert not any(line.strip().startswith(("item 1:", "item 3:")) for line in lines)

    code, out, err = await meterline(stack, "tariffs", "list", "--json")
    assert code == 0, err
    prefixes = {tariff.get("prefix", "") for tariff in json.loads(out)}
    assert not {good_one, good_two} & prefixes
    code, out, err = await meterline(stack, "tariffs", "plans", "--json")
    assert code == 0, err
    assert plan_id not in {plan["rate_plan_id"] for plan in json.loads(out)}


async def test_a_malformed_csv_sheet_names_every_bad_line_and_imports_nothing(
    stack: InProcessStack, tmp_path: Path
) -> None:
    good_one, good_two = "+8803" + uuid.uuid4().hex[:6], "+8804" + uuid.uuid4().hex[:6]
    bad = tmp_path / "bad.csv"
    bad.write_text(
        "service_type,prefix,unit,price_per_unit,unit_size,increment,tiers,currency,price_PEAK\n"
        f"VOICE,{good_one},SECOND,0.01,MINUTE,1/1,,GBP,0.02\n"
        "VOICE,+61,SECOND,0.01,FORTNIGHT,1/1,,GBP,\n"
        "VOICE,+62,SECOND,0.01,MINUTE,1/1,,GBP,lots\n"
        f"VOICE,{good_two},SECOND,0.01,MINUTE,60/60,,GBP,\n"
        "FILE_DOWNLOAD,b.example,BYTE,0.01,GiB,1/1,*:0.20;1GB:0.50,GBP,\n"
        "VOICE,+63,SECOND,0.01,MINUTE,1/1,,EUROS,\n"
    )
    code, out, err = await meterline(stack, "tariffs", "import", str(bad))
    assert code == 2
    assert "4 error(s), nothing imported" in err
    expected = {
        "line 3": "FORTNIGHT",
        "line 4": "price_PEAK",
        "line 6": "tier",
        "line 7": "currency",
    }
    lines = err.splitlines()
    for label, words in expected.items():
        (line,) = [line for line in lines if line.strip().startswith(f"{label}:")]
        assert words in line, line
    assert not any(line.strip().startswith(("line 2:", "line 5:")) for line in lines)
    code, out, err = await meterline(stack, "tariffs", "list", "--json")
    assert code == 0, err
    assert not {good_one, good_two} & {tariff.get("prefix", "") for tariff in json.loads(out)}


async def test_account_plan(stack: InProcessStack, tmp_path: Path, api: Stubs) -> None:
    plan_id = await import_northwind(stack, tmp_path)
    account_id = await new_account(api.billing)

    async def rated_plan() -> str:
        rate = await api.rating.GetRate(
            rating_pb2.GetRateRequest(
                service_type=types_pb2.VOICE, endpoint="+447700900123", account_id=account_id
            ),
            metadata=OPERATOR,
        )
        return str(rate.rate_plan_id)

    code, out, err = await meterline(stack, "account", "plan", account_id, plan_id)
    assert code == 0, err
    assert out.strip() == f"{account_id} rates under plan {plan_id}"
    assert await rated_plan() == plan_id

    code, out, err = await meterline(stack, "account", "plan", account_id, plan_id, "--json")
    assert code == 0, err
    assert json.loads(out) == {"account_id": account_id, "rate_plan_id": plan_id}

    code, out, err = await meterline(stack, "account", "plan", account_id, unique("no-plan"))
    assert code == 2
    assert "no rate plan" in err
    assert await rated_plan() == plan_id  # unchanged

    code, out, err = await meterline(stack, "account", "plan", account_id, "default")
    assert code == 0, err
    assert out.strip() == f"{account_id} rates under plan default"

    # An account that does not exist is refused, not given a plan.
    code, out, err = await meterline(stack, "account", "plan", unique("acct_nope"), plan_id)
    assert (code, out) == (2, "")
    assert "no account" in err and len(err.splitlines()) == 1


def _normalized(tariffs: list[Any]) -> list[Any]:
    """Tariffs in key order, with the first increment spelled out (0 means 'same as the
    next')."""
    spelled = [
        dataclasses.replace(
            tariff,
            terms=dataclasses.replace(
                tariff.terms,
                first_increment_units=tariff.terms.first_increment_units
                or tariff.terms.increment_units,
            ),
        )
        for tariff in tariffs
    ]
    return sorted(
        spelled,
        key=lambda t: (t.service_type.value, t.prefix, t.effective_from is not None),
    )
