"""`meterline voucher ...` and `meterline account fund --payment-reference` against a
running stack, as an operator types them."""

from __future__ import annotations

import asyncio
import csv
import dataclasses
import fcntl
import json
import os
import stat
import sys
import uuid
from pathlib import Path

import psycopg
import pytest

from meterline.billing.v1 import billing_pb2
from meterline.kernel.db import libpq_dsn
from meterline.kernel.processes import free_port
from tests.integration.test_cli import meterline
from tests.support.clients import OPERATOR, Stubs
from tests.support.stack import InProcessStack

pytestmark = pytest.mark.integration


async def _account(stack: InProcessStack) -> str:
    code, out, err = await meterline(
        stack, "account", "create", "--name", "Voucher user", "--currency", "EUR", "--json"
    )
    assert code == 0, err
    return str(json.loads(out)["account_id"])


async def test_vouchers_made_into_a_csv_and_redeemed(stack: InProcessStack, tmp_path: Path) -> None:
    sheet = tmp_path / "vouchers.csv"
    code, _, err = await meterline(
        stack,
        *("voucher", "create", "--count", "3", "--amount", "10.00", "--currency", "EUR"),
        *("--expires", "2099-12-31", "--out", str(sheet)),
    )
    assert code == 0, err
    assert "3 vouchers of" in err
    assert stat.S_IMODE(sheet.stat().st_mode) == 0o600
    rows = list(csv.DictReader(sheet.open()))
    assert len(rows) == 3
    assert {(row["amount"], row["currency"]) for row in rows} == {("10.00", "EUR")}
    assert rows[0]["expires"].startswith("2100-01-01T00:00:00")

    # Never overwritten: the codes in it are shown once.
    code, _, err = await meterline(
        stack,
        *("voucher", "create", "--count", "1", "--amount", "1", "--currency", "EUR"),
        *("--out", str(sheet)),
    )
    assert code == 2 and "exists" in err

    account_id = await _account(stack)
    code, out, err = await meterline(stack, "voucher", "redeem", account_id, rows[0]["code"])
    assert code == 0, err
    assert "funded 10.00" in out and "balance 10.00" in out
    # Again on the same account: a safe repeat, and the output says nothing was added.
    code, out, err = await meterline(stack, "voucher", "redeem", account_id, rows[0]["code"])
    assert code == 0, err
    assert "already redeemed for this account" in out and "nothing added" in out
    assert "balance 10.00" in out
    code, _, err = await meterline(
        stack, "voucher", "redeem", await _account(stack), rows[0]["code"]
    )
    assert code == 1 and "already redeemed" in err


async def test_codes_printed_and_bad_batches_refused(stack: InProcessStack) -> None:
    code, out, err = await meterline(
        stack, "voucher", "create", "--count", "2", "--amount", "5", "--currency", "eur"
    )
    assert code == 0, err
    assert len(out.split()) == 2
    for args in (
        ("--count", "0", "--amount", "5", "--currency", "EUR"),
        ("--count", "1", "--amount", "0", "--currency", "EUR"),
        ("--count", "1", "--amount", "5", "--currency", "XXQ"),
        ("--count", "1", "--amount", "5", "--currency", "EUR", "--expires", "2001-01-01"),
        ("--count", "1", "--amount", "5", "--currency", "EUR", "--expires", "soon"),
    ):
        code, _, err = await meterline(stack, "voucher", "create", *args)
        assert code == 2, (args, err)


async def test_a_payment_reference_funds_once(stack: InProcessStack) -> None:
    account_id = await _account(stack)
    reference = f"psp-{uuid.uuid4().hex}"
    for _ in range(2):
        code, out, err = await meterline(
            stack, "account", "fund", account_id, "3.00", "--payment-reference", reference
        )
        assert code == 0, err
        assert "balance 3.00" in out


async def test_account_suspend_reactivate_close(stack: InProcessStack) -> None:
    account_id = await _account(stack)
    code, out, err = await meterline(stack, "account", "suspend", account_id)
    assert (code, out.strip()) == (0, f"account {account_id} is suspended"), err
    code, _, err = await meterline(stack, "account", "fund", account_id, "1.00")
    assert code == 1 and "suspended" in err
    code, out, err = await meterline(stack, "account", "reactivate", account_id)
    assert (code, out.strip()) == (0, f"account {account_id} is active"), err
    code, _, err = await meterline(stack, "account", "fund", account_id, "1.00")
    assert code == 0, err
    code, _, err = await meterline(stack, "account", "close", account_id)
    assert code == 1 and "cannot be closed" in err
    empty = await _account(stack)
    code, out, err = await meterline(stack, "account", "close", empty, "--json")
    assert code == 0, err
    assert json.loads(out)["status"] == "ACCOUNT_STATUS_CLOSED"


async def test_account_adjust_and_refund(stack: InProcessStack, api: Stubs) -> None:
    account_id = await _account(stack)
    code, out, err = await meterline(
        stack, "account", "adjust", account_id, "2.00", "--reason", "goodwill"
    )
    assert code == 0, err
    assert "balance 2.00" in out
    code, out, err = await meterline(
        stack, "account", "adjust", account_id, "-0.50", "--reason", "correction", "--json"
    )
    assert code == 0, err
    assert json.loads(out)["transaction"]["reference"] == "correction"
    code, _, err = await meterline(stack, "account", "adjust", account_id, "-9.00", "--reason", "x")
    assert code == 1 and "Insufficient funds" in err

    hold = await api.billing.Reserve(
        billing_pb2.ReserveRequest(
            account_id=account_id, amount_micros=1_000_000, idempotency_key=uuid.uuid4().hex
        ),
        metadata=OPERATOR,
    )
    await api.billing.Capture(
        billing_pb2.CaptureRequest(
            hold_id=hold.hold_id, amount_micros=600_000, idempotency_key=uuid.uuid4().hex
        ),
        metadata=OPERATOR,
    )
    code, out, err = await meterline(
        stack, "account", "refund", hold.hold_id, "0.60", "--reason", "dropped call"
    )
    assert code == 0, err
    assert "refunded" in out and "balance 1.50" in out
    code, _, err = await meterline(
        stack, "account", "refund", hold.hold_id, "0.01", "--reason", "again"
    )
    assert code == 1 and "cannot be more" in err
    code, _, err = await meterline(
        stack, "account", "refund", hold.hold_id, "-0.10", "--reason", "negative"
    )
    assert code == 2 and "must be more than 0" in err, err
    # `account show` is where the operator finds the HOLD_ID a refund takes.
    code, out, err = await meterline(stack, "account", "show", account_id)
    assert code == 0, err
    assert "hold" in out.splitlines()[4] and hold.hold_id in out


async def test_a_csv_that_cannot_be_written_costs_no_batch(
    stack: InProcessStack, tmp_path: Path
) -> None:
    """The file is made before the codes exist: a folder that is not there is bad input
    (one line, exit 2), and no batch is made whose codes nobody could ever see."""
    before = await _voucher_count(stack)
    code, _, err = await meterline(
        stack,
        *("voucher", "create", "--count", "2", "--amount", "1", "--currency", "EUR"),
        *("--out", str(tmp_path / "missing" / "batch.csv")),
    )
    assert code == 2, err
    assert err.startswith("error: --out ") and len(err.strip().splitlines()) == 1, err
    assert await _voucher_count(stack) == before
    # A batch that is never made (no billing manager there) leaves no empty file behind.
    sheet = tmp_path / "unmade.csv"
    code, _, err = await meterline(
        stack,
        *("--billing-address", f"127.0.0.1:{free_port()}", "voucher", "create"),
        *("--count", "2", "--amount", "1", "--currency", "EUR", "--out", str(sheet)),
    )
    assert code == 1, err
    assert not sheet.exists()


async def _voucher_count(stack: InProcessStack) -> int:
    url = libpq_dsn(stack.settings.stores.billing_database_url)
    async with await psycopg.AsyncConnection.connect(url) as conn:
        row = await (await conn.execute("SELECT count(*) FROM vouchers")).fetchone()
    assert row is not None
    return int(row[0])


async def test_ledger_verify_finds_the_running_stacks_database(
    stack: InProcessStack, tmp_path: Path
) -> None:
    """Run where `meterline up` runs, `ledger verify` needs no URL: it reads the stack's
    databases from its stack.json, as every command finds the stack's CA there."""
    account_id = await _account(stack)
    stores = stack.settings.stores
    (tmp_path / "stack.json").write_text(
        json.dumps(
            {
                "pid": os.getpid(),
                "endpoints": dataclasses.asdict(stack.endpoints),
                "stores": dataclasses.asdict(stores),
                "embedded": False,
                "tls": {"plaintext": True},
            }
        )
    )
    clean = {k: v for k, v in os.environ.items() if not k.startswith("METERLINE_")}
    # Scoped to this test's account: the test stack's ledger is shared with other tests,
    # some of which break it on purpose.
    verify = (
        *(sys.executable, "-m", "meterline.cli.main", "ledger", "verify", "--json"),
        *("--account", account_id),
    )

    async def run() -> tuple[int, str, str]:
        process = await asyncio.create_subprocess_exec(
            *verify,
            env={**clean, "METERLINE_DATA_DIR": str(tmp_path)},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(process.communicate(), timeout=120)
        assert process.returncode is not None
        return process.returncode, out.decode(), err.decode()

    # No stack holds the folder: its stack.json may be stale, so it is not used.
    code, _, err = await run()
    assert code == 2 and "no account database" in err, err
    with (tmp_path / "stack.lock").open("w") as lock:
        lock.write(f"{os.getpid()}\n{{}}")
        lock.flush()
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        code, out, err = await run()
    assert code == 0, err
    audit = json.loads(out)
    assert audit["ok"] is True and audit["accounts"] >= 1
