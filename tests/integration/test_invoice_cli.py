"""`meterline invoice generate | list | show | render` against a running stack, as an
operator types them."""

from __future__ import annotations

import asyncio
import io
import json
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pypdf
import pytest

from meterline.billing.v1 import billing_pb2
from tests.integration.test_cli import meterline
from tests.support.clients import OPERATOR, Stubs, new_account
from tests.support.stack import InProcessStack

pytestmark = pytest.mark.integration


async def test_generate_list_show_and_render(
    stack: InProcessStack, api: Stubs, tmp_path: Path
) -> None:
    account_id = await new_account(api.billing, funded_micros=2_000_000)
    start = datetime.now(UTC).isoformat()
    await asyncio.sleep(0.02)
    hold = await api.billing.Reserve(
        billing_pb2.ReserveRequest(
            account_id=account_id,
            amount_micros=500_000,
            idempotency_key=uuid.uuid4().hex,
            reference="ses_cli",
        ),
        metadata=OPERATOR,
    )
    usage = billing_pb2.UsageSummary(
        session_id="ses_cli",
        service_type="VOICE",
        endpoint="+3312345",
        units=42,
        unit="SECOND",
        charged_micros=420_000,
    )
    usage.start_time.GetCurrentTime()
    usage.end_time.GetCurrentTime()
    await api.billing.Capture(
        billing_pb2.CaptureRequest(
            hold_id=hold.hold_id,
            amount_micros=420_000,
            idempotency_key=uuid.uuid4().hex,
            usage=usage,
        ),
        metadata=OPERATOR,
    )
    await asyncio.sleep(0.02)

    code, out, err = await meterline(
        stack, "invoice", "generate", account_id, "--from", start, "--until", "now", "--json"
    )
    assert code == 0, err
    issued = json.loads(out)
    number = issued["number"]
    assert number.startswith("INV-")
    assert issued["total_micros"] == "420000"  # int64 is a string in proto JSON
    assert issued["charges"][0]["service_type"] == "VOICE"

    code, out, err = await meterline(stack, "invoice", "list", account_id, "--json")
    assert code == 0, err
    assert [bill["number"] for bill in json.loads(out)] == [number]
    code, out, err = await meterline(stack, "invoice", "list", account_id)
    assert code == 0, err
    assert number in out and "0.42 EUR" in out

    code, out, err = await meterline(stack, "invoice", "show", number)
    assert code == 0, err
    assert number in out and "0.42 EUR" in out and "1.58 EUR" in out  # charges, closing
    # Units as the price tables write them, not the enum's name.
    assert "42 s" in out and "(1 session)" in out and "SECOND" not in out

    html = tmp_path / "bill.html"
    code, out, err = await meterline(
        stack, "invoice", "render", number, "--format", "html", "--out", str(html)
    )
    assert code == 0, err
    assert f"{number} written to {html}" in out
    page = html.read_text()
    assert number in page and "0.42 EUR" in page and "+3312345" in page

    pdf = tmp_path / "bill.pdf"
    code, out, err = await meterline(
        stack,
        *("invoice", "render", issued["invoice_id"], "--format", "pdf", "--out", str(pdf)),
        *("--locale", "de_DE", "--time-zone", "Europe/Berlin", "--json"),
    )
    assert code == 0, err
    assert json.loads(out)["bytes"] == pdf.stat().st_size
    reader = pypdf.PdfReader(io.BytesIO(pdf.read_bytes()))
    text = "\n".join(p.extract_text() for p in reader.pages)
    assert len(reader.pages) > 0
    assert number in text and "0,42 EUR" in text


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (("generate", "ACCOUNT", "--period", "2026/11"), 2, "is not a month"),
        (("generate", "ACCOUNT"), 2, "which period?"),
        (("generate", "ACCOUNT", "--period", "2026-11", "--from", "now"), 2, "not both"),
        (("generate", "ACCOUNT", "--from", "yesterday", "--until", "now"), 2, "is not a time"),
        (("generate", "A", "--from", "0001-01-01T00:00+01:00", "--until", "now"), 2, "not a time"),
        (("generate", "acct_missing", "--period", "2020-01"), 2, "no account"),
        (("show", "INV-1999-000001"), 2, "no invoice"),
        (("render", "x", "--out", "/nonexistent/dir/bill.pdf"), 2, "does not exist"),
        # Checked before the bill is fetched (there is no bill INV-1999-000001).
        (("render", "INV-1999-000001", "--out", "b.pdf", "--locale", "xx_YY"), 2, "not a locale"),
        (
            ("render", "INV-1999-000001", "--out", "b.pdf", "--time-zone", "Mars/Base"),
            2,
            "not a time zone",
        ),
    ],
)
async def test_bad_input_is_one_line_and_exit_2(
    stack: InProcessStack, args: tuple[str, ...], code: int, message: str
) -> None:
    exit_code, _, err = await meterline(stack, "invoice", *args)
    assert exit_code == code, err
    assert message in err
    assert len(err.strip().splitlines()) == 1


async def test_a_month_still_to_come_is_refused(stack: InProcessStack, api: Stubs) -> None:
    account_id = await new_account(api.billing)
    exit_code, _, err = await meterline(
        stack, "invoice", "generate", account_id, "--period", "2099-12"
    )
    assert exit_code == 1
    assert "still to come" in err and len(err.strip().splitlines()) == 1
    exit_code, out, err = await meterline(
        stack, "invoice", "generate", account_id, "--period", "2020-12", "--json"
    )
    assert exit_code == 0, err
    bill = json.loads(out)
    assert bill["period_start"] == "2020-12-01T00:00:00Z"
    assert bill["period_end"] == "2021-01-01T00:00:00Z"
