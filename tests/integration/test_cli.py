"""The operator CLI against a running stack, as a user types it."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import pytest

from meterline.rating.v1 import types_pb2
from meterline.service.v1 import service_pb2
from tests.support import tls
from tests.support.clients import device, ensure_tariff, new_account, stubs
from tests.support.stack import TOKEN_SECRET, InProcessStack

pytestmark = pytest.mark.integration

EXAMPLES = Path(__file__).resolve().parents[2] / "docs" / "examples"


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


async def test_account_lifecycle(stack: InProcessStack) -> None:
    code, out, err = await meterline(
        stack, "account", "create", "--name", "Grace", "--currency", "EUR", "--json"
    )
    assert code == 0, err
    account_id = json.loads(out)["account_id"]

    code, out, err = await meterline(
        stack, "account", "fund", account_id, "1.00", "--idempotency-key", f"k-{account_id}"
    )
    assert code == 0, err
    assert "balance 1.00 EUR" in out
    # The same key again funds nothing more; another amount with it is refused.
    code, out, _ = await meterline(
        stack, "account", "fund", account_id, "1.00", "--idempotency-key", f"k-{account_id}"
    )
    assert code == 0 and "balance 1.00 EUR" in out
    code, _, err = await meterline(
        stack, "account", "fund", account_id, "2.00", "--idempotency-key", f"k-{account_id}"
    )
    assert code == 1 and "already used" in err

    code, out, err = await meterline(stack, "account", "show", account_id, "--json")
    assert code == 0, err
    shown = json.loads(out)
    assert shown["account"]["balance_micros"] == "1000000"
    assert sum(int(entry["amount_micros"]) for entry in shown["ledger"]) == 0

    code, out, err = await meterline(stack, "credential", "issue", "--account", account_id)
    assert code == 0, err
    assert "client_id" in out and "client_secret" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["account", "fund", "acct_x", "1.2345678"], "at most 6 decimal places"),
        (["account", "fund", "acct_x", "0"], "more than 0"),
        (["account", "show", "acct_missing"], "no account"),
        (["credential", "issue"], "exactly one of"),
        (["account", "create", "--name", "X", "--currency", "euro"], "currency code"),
    ],
)
async def test_bad_input_is_one_clear_line(
    stack: InProcessStack, args: list[str], message: str
) -> None:
    code, _, err = await meterline(stack, *args)
    assert code == 2
    assert message in err
    assert err.startswith("error: ")


async def test_tariff_import_is_all_or_nothing(stack: InProcessStack, tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text(
        "service_type,prefix,unit,price_per_unit,currency\n"
        "VOICE,+61,SECOND,0.01,AUD\n"
        "TELEPATHY,+62,SECOND,0.01,AUD\n"
        "VOICE,+63,SECOND,-0.01,AUD\n"
    )
    code, _, err = await meterline(stack, "tariffs", "import", str(bad))
    assert code == 2
    assert "line 3" in err and "TELEPATHY" in err and "line 4" in err
    code, out, _ = await meterline(stack, "tariffs", "list", "--json")
    assert "+61" not in out

    good = tmp_path / "good.csv"
    good.write_text(bad.read_text().splitlines()[0] + "\nVOICE,+61,SECOND,0.01,AUD\n")
    code, out, err = await meterline(stack, "tariffs", "import", str(good))
    assert code == 0, err
    assert "imported 1" in out
    code, out, _ = await meterline(stack, "tariffs", "list", "--json")
    assert any(tariff["prefix"] == "+61" for tariff in json.loads(out))


async def test_the_example_tariff_sheets_import(stack: InProcessStack) -> None:
    for sheet in ("tariffs.csv", "tariffs.yaml"):
        code, out, err = await meterline(stack, "tariffs", "import", str(EXAMPLES / sheet))
        assert code == 0, err
        assert "imported" in out


async def test_sessions_list_shows_a_running_session(stack: InProcessStack) -> None:
    api = stubs(stack.endpoints)
    try:
        await ensure_tariff(api.rating, "+4420", 10_000)
        account_id = await new_account(api.billing, 10_000_000)
        started = await api.service.StartService(
            service_pb2.StartServiceRequest(
                account_id=account_id, service_type=types_pb2.VOICE, endpoint="+442071234567"
            ),
            metadata=device(account_id),
        )
        code, out, err = await meterline(stack, "sessions", "list", "--json")
        assert code == 0, err
        listed = {session["session_id"]: session for session in json.loads(out)}
        assert started.session_id in listed, out
        assert listed[started.session_id]["account_id"] == account_id
        assert listed[started.session_id]["endpoint"] == "+442071234567"
        await api.service.StopService(
            service_pb2.StopServiceRequest(session_id=started.session_id, used_units=0),
            metadata=device(account_id),
        )
        code, out, err = await meterline(stack, "sessions", "list", "--json")
        assert code == 0, err
        assert started.session_id not in {session["session_id"] for session in json.loads(out)}
    finally:
        await api.close()


async def test_unreachable_services_say_so(stack: InProcessStack) -> None:
    code, _, err = await meterline(
        stack, "--billing-address", "127.0.0.1:1", "account", "show", "acct_x"
    )
    assert code == 1
    assert "cannot reach" in err
