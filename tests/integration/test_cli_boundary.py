"""The CLI's one error boundary, as an operator meets it: every failure one line on stderr
with exit code 2 (bad input) or 1, never a traceback; read commands that never make a
secret; the commands an operator looks for (--version, account list, sessions stop,
gateway list); and prices shown as they are priced."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import pytest
import typer

from meterline.cli.main import app
from meterline.rating.v1 import types_pb2
from meterline.service.v1 import service_pb2
from tests.integration.test_cli import EXAMPLES, meterline
from tests.support.clients import device, stubs
from tests.support.stack import InProcessStack

pytestmark = pytest.mark.integration


async def cli_in(folder: Path, *args: str, **env: str) -> tuple[int, str, str]:
    """The CLI run in `folder` with no METERLINE_ setting but `env`: an operator who is
    not where the stack runs."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("METERLINE_")}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "meterline.cli.main",
        *args,
        cwd=folder,
        env={**clean, **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def one_line(err: str) -> str:
    """The failure's one line: no traceback, no usage panel."""
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: "), err
    return lines[0]


@pytest.mark.parametrize(
    ("args", "code", "words"),
    [
        (["account", "fund", "acct_x", "-5"], 2, "negative"),
        (["account", "fund", "acct_x", "-0.01", "--json"], 2, "negative"),
        (["account", "create", "--name", "X", "--currency", "XYZ"], 2, "ISO 4217"),
        (
            ["account", "create", "--name", "X", "--currency", "EUR", "--credit-limit", "-1"],
            2,
            "negative",
        ),
        (["account", "fund", "acct_nope", "1.00"], 2, "no account"),
        (["account", "plan", "acct_nope", "default"], 2, "no account"),
        (["credential", "issue", "--account", "acct_nope"], 2, "no account"),
        (["credential", "issue", "--gateway", "no-such-gateway"], 2, "no gateway"),
        (["sessions", "stop", "sess_nope"], 2, "no session"),
        (["account", "fund"], 2, "Missing argument"),
        (["account", "fund", "acct_x", "1.00", "--nonsense"], 2, "unexpected extra argument"),
        (["account", "show", "acct_x", "--nonsense"], 2, "No such option"),
        (["tariffs", "import", "/nonexistent/sheet.csv"], 2, "cannot read"),
    ],
)
async def test_a_failure_is_one_line_and_its_exit_code(
    stack: InProcessStack, args: list[str], code: int, words: str
) -> None:
    got, out, err = await meterline(stack, *args)
    assert got == code, err
    assert out == ""
    if "--json" in args:
        assert "Traceback" not in err and len(err.splitlines()) == 1
        assert words in json.loads(err)["error"]
    else:
        assert words in one_line(err)


async def test_a_latin_1_sheet_is_one_line(stack: InProcessStack, tmp_path: Path) -> None:
    sheet = tmp_path / "latin1.csv"
    sheet.write_bytes(
        "service_type,prefix,unit,price_per_unit,currency,description\n"
        "VOICE,+33,SECOND,0.01,EUR,Côte d'Azur\n".encode("latin-1")
    )
    code, out, err = await meterline(stack, "tariffs", "import", str(sheet))
    assert (code, out) == (2, "")
    line = one_line(err)
    assert "not UTF-8" in line and "latin1.csv" in line


async def test_a_read_command_in_the_wrong_folder_makes_no_secret(tmp_path: Path) -> None:
    code, out, err = await cli_in(tmp_path, "account", "show", "acct_x")
    assert (code, out) == (2, "")
    line = one_line(err)
    assert "no Meterline installation here" in line and "meterline up" in line
    assert not (tmp_path / ".meterline").exists()  # nothing made, no secret
    code, _, err = await cli_in(tmp_path, "component", "key")
    assert code == 2 and "no Meterline installation here" in one_line(err)
    assert not (tmp_path / ".meterline").exists()


async def test_a_short_token_secret_file_is_reported_as_that(tmp_path: Path) -> None:
    (tmp_path / ".meterline").mkdir()
    (tmp_path / ".meterline" / "token-secret").write_text("short\n")
    code, _, err = await cli_in(tmp_path, "sessions", "list")
    assert code == 2
    line = one_line(err)
    assert "token-secret holds 5 characters" in line
    assert "METERLINE_TOKEN_SECRET" not in line  # it is not the variable that is wrong


async def test_version_and_json_everywhere(tmp_path: Path) -> None:
    code, out, err = await cli_in(tmp_path, "--version")
    assert code == 0, err
    assert out.startswith("meterline ")
    # `tariffs export x.yaml --json` used to be "No such option": it is an option now.
    code, _, err = await cli_in(tmp_path, "tariffs", "export", "x.yaml", "--json")
    assert code == 2 and "no Meterline installation here" in json.loads(err)["error"]


def test_every_command_takes_json() -> None:
    def leaves(command: object, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], object]]:
        commands = getattr(command, "commands", None)
        if not isinstance(commands, dict):
            return [(path, command)]
        return [leaf for name, sub in commands.items() for leaf in leaves(sub, (*path, name))]

    found = leaves(typer.main.get_command(app))
    assert len(found) > 20
    missing = [
        " ".join(path)
        for path, command in found
        if not any("--json" in param.opts for param in getattr(command, "params", []))
    ]
    assert not missing, f"these commands take no --json: {missing}"


async def test_a_service_without_a_database_url_is_one_sentence(tmp_path: Path) -> None:
    for package in ("rating_service", "billing_manager", "service_manager"):
        clean = {k: v for k, v in os.environ.items() if not k.startswith("METERLINE_")}
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            package,
            cwd=tmp_path,
            env={**clean, "METERLINE_PLAINTEXT": "1", "METERLINE_TOKEN_SECRET": "s" * 40},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        _, err = await asyncio.wait_for(process.communicate(), timeout=60)
        assert process.returncode == 2, err
        assert "DATABASE_URL is not set" in one_line(err.decode())


async def test_account_list_gateways_list_and_sessions_stop(stack: InProcessStack) -> None:
    code, out, err = await meterline(
        stack, "account", "create", "--name", "Lovelace", "--currency", "EUR", "--json"
    )
    assert code == 0, err
    account_id = json.loads(out)["account_id"]
    code, out, err = await meterline(stack, "account", "fund", account_id, "2.50")
    assert code == 0, err
    assert "balance 2.50 EUR" in out

    code, out, err = await meterline(stack, "account", "list")
    assert code == 0, err
    (row,) = [line for line in out.splitlines() if line.startswith(account_id)]
    assert row.split()[1:5] == ["Lovelace", "EUR", "2.50", "EUR"]
    code, out, err = await meterline(stack, "account", "list", "--json")
    assert code == 0, err
    listed = {account["account_id"]: account for account in json.loads(out)}
    assert listed[account_id]["balance_micros"] == "2500000"

    code, out, err = await meterline(stack, "gateway", "list", "--json")
    assert code == 0, err
    assert "local" in {gateway["gateway_id"] for gateway in json.loads(out)}
    code, out, err = await meterline(stack, "credential", "issue", "--gateway", "local")
    assert code == 0, err

    api = stubs(stack.endpoints)
    try:
        code, _, err = await meterline(stack, "tariffs", "import", str(EXAMPLES / "tariffs.yaml"))
        assert code == 0, err
        code, _, err = await meterline(stack, "account", "plan", account_id, "business")
        assert code == 0, err
        started = await api.service.StartService(
            service_pb2.StartServiceRequest(
                account_id=account_id, service_type=types_pb2.VOICE, endpoint="+442071234567"
            ),
            metadata=device(account_id),
        )
        code, out, err = await meterline(stack, "sessions", "list", "--account", account_id)
        assert code == 0, err
        (row,) = [line for line in out.splitlines() if line.startswith(started.session_id)]
        assert "business" in row
        assert "0.60 EUR per minute" in row and "PEAK 0.90 EUR, WEEKEND 0.30 EUR" in row
        code, out, err = await meterline(stack, "sessions", "list", "--json")
        assert code == 0, err
        (rate,) = [s["rate"] for s in json.loads(out) if s["session_id"] == started.session_id]
        assert (rate["unit_size"], rate["rate_plan_id"], rate["increment_units"]) == (
            60,
            "business",
            1,
        )
        assert {band["band"] for band in rate["band_prices"]} == {"PEAK", "WEEKEND"}

        code, out, err = await meterline(stack, "sessions", "stop", started.session_id)
        assert code == 0, err
        assert out.startswith(f"{started.session_id}: VOICE to +442071234567")
        assert "charged 0.00 EUR" in out and "ended by OPERATOR" in out
        code, out, err = await meterline(stack, "sessions", "list", "--json")
        assert started.session_id not in {s["session_id"] for s in json.loads(out)}
    finally:
        await api.close()


async def test_tariffs_are_listed_as_they_are_priced(stack: InProcessStack) -> None:
    code, _, err = await meterline(stack, "tariffs", "import", str(EXAMPLES / "tariffs.yaml"))
    assert code == 0, err
    code, out, err = await meterline(stack, "tariffs", "list")
    assert code == 0, err
    rows = {
        tuple(line.split()[:3]): line for line in out.splitlines() if line.startswith("business ")
    }
    london = rows[("business", "VOICE", "+4420")]
    assert "0.60 EUR per minute" in london and "per 1 s" in london
    assert "PEAK 0.90 EUR, WEEKEND 0.30 EUR" in london
    uk = rows[("business", "VOICE", "+44")]
    assert "0.80 EUR per minute" in uk and "first 30 s, then per 6 s" in uk and "0.05 EUR" in uk
    download = rows[("business", "FILE_DOWNLOAD", "example.com")]
    assert "0.50 EUR per GB" in download
    assert "up to 1 GB 0.50 EUR, then 0.20 EUR" in download

    code, out, err = await meterline(stack, "tariffs", "list", "--json")
    assert code == 0, err
    (voice,) = [
        t
        for t in json.loads(out)
        if (t["rate_plan_id"], t["service_type"], t["prefix"]) == ("business", "VOICE", "+44")
    ]
    assert voice["unit_size"] == 60 and voice["price_per_unit_micros"] == 800_000
    assert (voice["first_increment_units"], voice["increment_units"]) == (30, 6)
    assert voice["setup_fee_micros"] == 50_000 and voice["price"] == "0.80 EUR per minute"
    (download_json,) = [
        t
        for t in json.loads(out)
        if (t["rate_plan_id"], t["prefix"]) == ("business", "example.com")
    ]
    assert download_json["unit_size"] == 10**9
    assert download_json["tiers"] == [
        {"up_to_units": 10**9, "price_per_unit_micros": 500_000},
        {"up_to_units": 0, "price_per_unit_micros": 200_000},
    ]
