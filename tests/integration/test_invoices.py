"""Bills on the real billing manager and PostgreSQL (claims 56-57): built from the ledger
and the usage summaries of the period, numbered without gaps, immutable, one per account
and period, a device's own only, and rendered as HTML and PDF."""

from __future__ import annotations

import asyncio
import io
import re
import uuid
from datetime import UTC, datetime, timedelta

import grpc
import psycopg
import pypdf
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from billing_manager.storage.invoice_store import InvoiceStore
from meterline.billing.v1 import billing_pb2
from meterline.invoices import render_html, render_pdf
from meterline.kernel.db import create_engine_for, libpq_dsn
from meterline.kernel.money import format_money
from meterline.service.v1 import service_pb2
from tests.support.clients import OPERATOR, Stubs, device, new_account
from tests.support.session_calls import meter, own_device, voice_tariff
from tests.support.session_calls import start as start_session
from tests.support.stores import StoreUrls

pytestmark = pytest.mark.integration

CUSTOMER = (billing_pb2.LEDGER_ACCOUNT_CUSTOMER_AVAILABLE, billing_pb2.LEDGER_ACCOUNT_CUSTOMER_HELD)


def _stamp(moment: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp


async def _now_boundary() -> datetime:
    """A moment strictly between what was written before and what is written after."""
    await asyncio.sleep(0.02)
    moment = datetime.now(UTC)
    await asyncio.sleep(0.02)
    return moment


def _generate(
    account_id: str, start: datetime, end: datetime, key: str = ""
) -> billing_pb2.GenerateInvoiceRequest:
    return billing_pb2.GenerateInvoiceRequest(
        account_id=account_id,
        period_start=_stamp(start),
        period_end=_stamp(end),
        idempotency_key=key or f"bill-{uuid.uuid4().hex}",
    )


async def _reserve(api: Stubs, account_id: str, amount: int, reference: str) -> str:
    hold = await api.billing.Reserve(
        billing_pb2.ReserveRequest(
            account_id=account_id,
            amount_micros=amount,
            idempotency_key=f"res-{uuid.uuid4().hex}",
            reference=reference,
        ),
        metadata=OPERATOR,
    )
    return str(hold.hold_id)


async def _capture(
    api: Stubs, hold_id: str, amount: int, usage: billing_pb2.UsageSummary | None, key: str = ""
) -> billing_pb2.Hold:
    request = billing_pb2.CaptureRequest(
        hold_id=hold_id, amount_micros=amount, idempotency_key=key or f"cap-{hold_id}"
    )
    if usage is not None:
        request.usage.CopyFrom(usage)
    return await api.billing.Capture(request, metadata=OPERATOR)


def _usage(
    session_id: str,
    service_type: str,
    endpoint: str,
    units: int,
    unit: str,
    charged: int,
    start: datetime,
    seconds: int,
    application_id: str = "",
) -> billing_pb2.UsageSummary:
    return billing_pb2.UsageSummary(
        session_id=session_id,
        service_type=service_type,
        endpoint=endpoint,
        application_id=application_id,
        units=units,
        unit=unit,
        start_time=_stamp(start),
        end_time=_stamp(start + timedelta(seconds=seconds)),
        charged_micros=charged,
    )


async def _entries(
    api: Stubs, account_id: str, end: datetime, start: datetime | None = None
) -> list[billing_pb2.LedgerEntry]:
    found: list[billing_pb2.LedgerEntry] = []
    token = ""
    while True:
        request = billing_pb2.ListLedgerEntriesRequest(
            account_id=account_id, page_size=1000, page_token=token, end_time=_stamp(end)
        )
        if start is not None:
            request.start_time.CopyFrom(_stamp(start))
        response = await api.billing.ListLedgerEntries(request, metadata=OPERATOR)
        found.extend(response.entries)
        token = response.next_page_token
        if not token:
            return found


def _balance(entries: list[billing_pb2.LedgerEntry]) -> int:
    return sum(e.amount_micros for e in entries if e.ledger_account in CUSTOMER)


async def _status(call: object) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call  # type: ignore[misc]
    return raised.value


def _pdf_text(data: bytes) -> tuple[int, str]:
    reader = pypdf.PdfReader(io.BytesIO(data))
    return len(reader.pages), "\n".join(page.extract_text() for page in reader.pages)


async def test_a_bill_is_its_periods_ledger_and_service_records(api: Stubs) -> None:
    account_id = await new_account(api.billing, funded_micros=3_000_000)  # before the period
    start = await _now_boundary()

    await api.billing.FundAccount(
        billing_pb2.FundAccountRequest(
            account_id=account_id, amount_micros=5_000_000, payment_reference=uuid.uuid4().hex
        ),
        metadata=OPERATOR,
    )
    vouchers = await api.billing.CreateVouchers(
        billing_pb2.CreateVouchersRequest(count=1, amount_micros=2_500_000, currency="EUR"),
        metadata=OPERATOR,
    )
    await api.billing.RedeemVoucher(
        billing_pb2.RedeemVoucherRequest(account_id=account_id, code=vouchers.codes[0]),
        metadata=device(account_id),
    )
    await api.billing.AdjustAccount(
        billing_pb2.AdjustAccountRequest(
            account_id=account_id,
            amount_micros=-250_000,
            reason="duplicate top-up reversed",
            idempotency_key=uuid.uuid4().hex,
        ),
        metadata=OPERATOR,
    )
    began = datetime.now(UTC) - timedelta(minutes=10)
    # A voice call on two holds (its slices), a second voice call, a file download, an
    # application's session, and a capture without any usage summary.
    call = _usage("ses_call1", "VOICE", "+33123456789", 125, "SECOND", 1_250_001, began, 125)
    for amount in (1_000_000, 250_001):
        hold_id = await _reserve(api, account_id, 1_000_000, "ses_call1")
        await _capture(api, hold_id, amount, call)
    short = _usage("ses_call2", "VOICE", "+4930123", 9, "SECOND", 90_000, began, 9)
    await _capture(api, await _reserve(api, account_id, 100_000, "ses_call2"), 90_000, short)
    download = _usage(
        "ses_dl", "FILE_DOWNLOAD", "files.example.com", 1_500_000, "BYTE", 15_000, began, 4
    )
    await _capture(api, await _reserve(api, account_id, 20_000, "ses_dl"), 15_000, download)
    game = _usage("ses_app", "APPLICATION", "game-42", 3, "EVENT", 300_000, began, 60, "game-42")
    await _capture(api, await _reserve(api, account_id, 300_000, "ses_app"), 300_000, game)
    other_hold = await _reserve(api, account_id, 500_000, "manual-42")
    await _capture(api, other_hold, 400_000, None)
    await api.billing.Refund(
        billing_pb2.RefundRequest(
            hold_id=other_hold,
            amount_micros=100_000,
            reason="goodwill",
            idempotency_key=uuid.uuid4().hex,
        ),
        metadata=OPERATOR,
    )
    released = await _reserve(api, account_id, 70_000, "ses_gone")
    await api.billing.Release(
        billing_pb2.ReleaseRequest(hold_id=released, idempotency_key=f"rel-{released}"),
        metadata=OPERATOR,
    )
    end = await _now_boundary()
    # After the period: not on this bill.
    await api.billing.FundAccount(
        billing_pb2.FundAccountRequest(
            account_id=account_id, amount_micros=1, idempotency_key=uuid.uuid4().hex
        ),
        metadata=OPERATOR,
    )

    invoice = await api.billing.GenerateInvoice(
        _generate(account_id, start, end), metadata=OPERATOR
    )

    captured = 1_250_001 + 90_000 + 15_000 + 300_000 + 400_000
    assert re.fullmatch(r"INV-\d{4}-\d{6}", invoice.number)
    assert invoice.number.startswith(f"INV-{datetime.now(UTC).year}-")
    assert invoice.account_name == "Test"
    assert invoice.currency == "EUR"
    # Against the ledger: opening, the period's revenue, closing.
    assert invoice.opening_balance_micros == 3_000_000
    assert invoice.opening_balance_micros == _balance(await _entries(api, account_id, start))
    period = await _entries(api, account_id, end, start)
    revenue = [
        e
        for e in period
        if e.kind == billing_pb2.TRANSACTION_KIND_CAPTURE
        and e.ledger_account == billing_pb2.LEDGER_ACCOUNT_REVENUE
    ]
    assert invoice.total_micros == captured == sum(e.amount_micros for e in revenue)
    assert sum(line.amount_micros for line in invoice.lines) == captured
    assert {line.transaction_id for line in invoice.lines} == {e.transaction_id for e in revenue}

    def kind_sum(kind: billing_pb2.TransactionKind.ValueType) -> int:
        return sum(
            e.amount_micros for e in period if e.kind == kind and e.ledger_account in CUSTOMER
        )

    assert invoice.funded_micros == 7_500_000 == kind_sum(billing_pb2.TRANSACTION_KIND_FUND)
    assert invoice.adjusted_micros == -250_000 == kind_sum(billing_pb2.TRANSACTION_KIND_ADJUST)
    assert invoice.refunded_micros == 100_000 == kind_sum(billing_pb2.TRANSACTION_KIND_REFUND)
    closing = (
        invoice.opening_balance_micros
        + invoice.funded_micros
        + invoice.adjusted_micros
        + invoice.refunded_micros
        - invoice.total_micros
    )
    assert invoice.closing_balance_micros == closing
    assert closing == _balance(await _entries(api, account_id, end))
    account = await api.billing.GetAccount(
        billing_pb2.GetAccountRequest(account_id=account_id), metadata=OPERATOR
    )
    assert account.balance_micros == closing + 1  # the funding after the period

    # Against the service records (the usage summaries the captures carried).
    charges = {(c.service_type, c.application_id): c for c in invoice.charges}
    assert list(charges) == [
        ("APPLICATION", "game-42"),
        ("FILE_DOWNLOAD", ""),
        ("VOICE", ""),
        ("OTHER", ""),
    ]
    voice = charges[("VOICE", "")]
    assert (voice.unit, voice.units, voice.amount_micros) == ("SECOND", 134, 1_340_001)
    assert [(s.session_id, s.units, s.amount_micros) for s in voice.sessions] == [
        ("ses_call1", 125, 1_250_001),
        ("ses_call2", 9, 90_000),
    ]
    assert voice.sessions[0].endpoint == "+33123456789"
    assert voice.sessions[0].duration.ToTimedelta() == timedelta(seconds=125)
    assert voice.sessions[0].start_time.ToDatetime(tzinfo=UTC) == call.start_time.ToDatetime(
        tzinfo=UTC
    )
    summaries = {u.session_id: u.charged_micros for u in (call, short, download, game)}
    for charge in invoice.charges:
        assert charge.amount_micros == sum(s.amount_micros for s in charge.sessions)
        for session in charge.sessions:
            if charge.service_type != "OTHER":
                assert session.amount_micros == summaries[session.session_id]
    assert charges[("FILE_DOWNLOAD", "")].units == 1_500_000
    assert charges[("FILE_DOWNLOAD", "")].unit == "BYTE"
    assert charges[("APPLICATION", "game-42")].sessions[0].units == 3
    other = charges[("OTHER", "")]
    assert [(s.session_id, s.amount_micros) for s in other.sessions] == [("manual-42", 400_000)]
    assert sum(c.amount_micros for c in invoice.charges) == captured
    assert [
        (billing_pb2.TransactionKind.Name(m.kind), m.amount_micros) for m in invoice.movements
    ] == [
        ("TRANSACTION_KIND_FUND", 5_000_000),
        ("TRANSACTION_KIND_FUND", 2_500_000),
        ("TRANSACTION_KIND_ADJUST", -250_000),
        ("TRANSACTION_KIND_REFUND", 100_000),
    ]
    assert invoice.movements[1].description.startswith("voucher vch_")
    assert invoice.movements[2].description == "duplicate top-up reversed"

    # The same bill again: by a repeat, by another key, by its id and by its number.
    again = await api.billing.GenerateInvoice(
        _generate(account_id, start, end, "another-key-" + uuid.uuid4().hex), metadata=OPERATOR
    )
    assert again == invoice
    for name in (invoice.invoice_id, invoice.number):
        fetched = await api.billing.GetInvoice(
            billing_pb2.GetInvoiceRequest(invoice_id=name), metadata=device(account_id)
        )
        assert fetched == invoice

    # For people: HTML and PDF carry the number and the formatted total.
    total = format_money(invoice.total_micros, "EUR", exact=True, locale="en_GB")
    assert total == "2.055001 EUR"
    html = render_html(invoice)
    assert invoice.number in html and total in html
    assert "game-42" in html and "+33123456789" in html
    pages, text = _pdf_text(render_pdf(invoice))
    assert pages > 0
    assert invoice.number in text and total in text
    german = format_money(invoice.total_micros, "EUR", exact=True, locale="de_DE")
    assert german in _pdf_text(render_pdf(invoice, locale="de_DE", time_zone="Europe/Berlin"))[1]
    assert german in render_html(invoice, locale="de_DE")


async def test_a_retried_capture_keeps_its_usage_summary(api: Stubs) -> None:
    account_id = await new_account(api.billing, funded_micros=1_000_000)
    start = await _now_boundary()
    began = datetime.now(UTC) - timedelta(minutes=1)
    usage = _usage("ses_retry", "VIDEO", "cam.example.com", 30, "SECOND", 300_000, began, 30)
    hold_id = await _reserve(api, account_id, 300_000, "ses_retry")
    await _capture(api, hold_id, 300_000, None, key=f"cap-{hold_id}")
    # The retry carries the summary the first attempt did not get to store.
    await _capture(api, hold_id, 300_000, usage, key=f"cap-{hold_id}")
    # A different summary on a later retry changes nothing: the first one is kept.
    changed = _usage("ses_other", "VOICE", "x", 1, "SECOND", 1, began, 1)
    await _capture(api, hold_id, 300_000, changed, key=f"cap-{hold_id}")
    end = await _now_boundary()
    invoice = await api.billing.GenerateInvoice(
        _generate(account_id, start, end), metadata=OPERATOR
    )
    assert [(c.service_type, [s.session_id for s in c.sessions]) for c in invoice.charges] == [
        ("VIDEO", ["ses_retry"])
    ]
    bad = billing_pb2.UsageSummary(session_id="", service_type="VOICE")
    error = await _status(_capture(api, await _reserve(api, account_id, 1, "r"), 1, bad))
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "usage." in (error.details() or "")


async def test_numbers_have_no_gaps_and_bills_never_change(api: Stubs, stores: StoreUrls) -> None:
    accounts = [await new_account(api.billing, funded_micros=100) for _ in range(3)]
    start = await _now_boundary()
    await _capture(api, await _reserve(api, accounts[0], 10, "ses_x"), 10, None)
    end = await _now_boundary()
    numbers = []
    for index, account_id in enumerate(accounts):
        if index == 1:
            # Failed generations between them: a period still to come, a reused key, and
            # a number taken in a transaction that rolled back.
            error = await _status(
                api.billing.GenerateInvoice(
                    _generate(account_id, start, datetime.now(UTC) + timedelta(hours=1)),
                    metadata=OPERATOR,
                )
            )
            assert error.code() is grpc.StatusCode.FAILED_PRECONDITION
            assert "still to come" in (error.details() or "")
            first_key = f"bill-{accounts[0]}"
            error = await _status(
                api.billing.GenerateInvoice(
                    _generate(account_id, start, end, first_key), metadata=OPERATOR
                )
            )
            assert error.code() is grpc.StatusCode.ALREADY_EXISTS
            engine = create_engine_for(stores.billing_url, pool_size=1)
            try:
                with pytest.raises(RuntimeError):
                    async with engine.begin() as conn:
                        assert (await InvoiceStore().next_number(conn)).startswith("INV-")
                        raise RuntimeError("roll back")
            finally:
                await engine.dispose()
        invoice = await api.billing.GenerateInvoice(
            _generate(account_id, start, end, f"bill-{account_id}"), metadata=OPERATOR
        )
        numbers.append(invoice.number)
    sequence = [int(number.rsplit("-", 1)[1]) for number in numbers]
    assert sequence == list(range(sequence[0], sequence[0] + 3)), numbers

    error = await _status(
        api.billing.GenerateInvoice(_generate(accounts[0], end, start), metadata=OPERATOR)
    )
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT

    # Immutable: the database refuses to change or remove an issued bill.
    for statement in (
        "UPDATE invoices SET total_micros = 0 WHERE account_id = %s",
        "DELETE FROM invoices WHERE account_id = %s",
        *(
            f"{change} invoice_id IN (SELECT invoice_id FROM invoices WHERE account_id = %s)"
            for change in (
                "UPDATE invoice_lines SET amount_micros = 0 WHERE",
                "DELETE FROM invoice_charges WHERE",
                "UPDATE invoice_sessions SET units = 0 WHERE",
            )
        ),
    ):
        with (
            psycopg.connect(libpq_dsn(stores.billing_url)) as conn,
            pytest.raises(psycopg.errors.RaiseException, match="never changes"),
        ):
            conn.execute(statement, (accounts[0],))
    fetched = await api.billing.GetInvoice(
        billing_pb2.GetInvoiceRequest(invoice_id=numbers[0]), metadata=OPERATOR
    )
    assert fetched.number == numbers[0]


async def test_a_period_from_the_epoch_starts_at_the_epoch(api: Stubs) -> None:
    """period_start set to 1970-01-01T00:00:00Z (a zero Timestamp) is that time, not now:
    the account's whole history is billed."""
    account = await new_account(api.billing, funded_micros=100)
    end = await _now_boundary()
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    bill = await api.billing.GenerateInvoice(_generate(account, epoch, end), metadata=OPERATOR)
    assert bill.period_start.ToDatetime(tzinfo=UTC) == epoch
    assert (bill.opening_balance_micros, bill.funded_micros) == (0, 100)
    assert bill.closing_balance_micros == 100


async def test_a_device_sees_only_its_own_bills(api: Stubs) -> None:
    mine = await new_account(api.billing, funded_micros=100)
    theirs = await new_account(api.billing, funded_micros=100)
    first = await _now_boundary()
    second = await _now_boundary()
    third = await _now_boundary()
    bills = [
        await api.billing.GenerateInvoice(_generate(mine, a, b), metadata=OPERATOR)
        for a, b in ((first, second), (second, third))
    ]
    other = await api.billing.GenerateInvoice(_generate(theirs, first, third), metadata=OPERATOR)
    # A period overlapping an issued one is refused: a charge is billed once.
    error = await _status(
        api.billing.GenerateInvoice(_generate(mine, first, third), metadata=OPERATOR)
    )
    assert error.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert f"Bill {bills[0].number} of account" in (error.details() or "")

    listed = await api.billing.ListInvoices(
        billing_pb2.ListInvoicesRequest(account_id=mine), metadata=device(mine)
    )
    assert [i.number for i in listed.invoices] == [bills[1].number, bills[0].number]  # newest first
    paged = await api.billing.ListInvoices(
        billing_pb2.ListInvoicesRequest(account_id=mine, page_size=1), metadata=OPERATOR
    )
    assert [i.number for i in paged.invoices] == [bills[1].number] and paged.next_page_token
    rest = await api.billing.ListInvoices(
        billing_pb2.ListInvoicesRequest(
            account_id=mine, page_size=1, page_token=paged.next_page_token
        ),
        metadata=OPERATOR,
    )
    assert [i.number for i in rest.invoices] == [bills[0].number] and not rest.next_page_token

    for name in (other.invoice_id, other.number, "INV-1999-000001"):
        error = await _status(
            api.billing.GetInvoice(
                billing_pb2.GetInvoiceRequest(invoice_id=name), metadata=device(mine)
            )
        )
        assert error.code() is grpc.StatusCode.NOT_FOUND
        assert "no invoice" in (error.details() or "")
    for account in (theirs, "acct_does_not_exist"):
        error = await _status(
            api.billing.ListInvoices(
                billing_pb2.ListInvoicesRequest(account_id=account), metadata=device(mine)
            )
        )
        assert error.code() is grpc.StatusCode.NOT_FOUND
        assert error.details() == f"There is no account {account!r}."
    error = await _status(
        api.billing.GenerateInvoice(_generate(mine, first, second), metadata=device(mine))
    )
    assert error.code() is grpc.StatusCode.PERMISSION_DENIED
    error = await _status(
        api.billing.ListInvoices(
            billing_pb2.ListInvoicesRequest(account_id=mine, page_token="nonsense"),
            metadata=OPERATOR,
        )
    )
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT


async def test_a_bill_of_real_sessions_matches_their_service_records(api: Stubs) -> None:
    """Sessions started, metered and stopped through the service manager, whose
    settlement sends each capture's usage summary: the bill's sessions are the service
    records."""
    prefix = f"+4{uuid.uuid4().int % 10**6:06d}"
    await voice_tariff(api, prefix, 2_000)
    account_id = await new_account(api.billing, funded_micros=5_000_000)
    who = own_device(account_id)
    start = await _now_boundary()
    records = []
    for used in (42, 7):
        session_id = await start_session(api, account_id, f"{prefix}123", who)
        await meter(api, session_id, who, (1, used))
        record = await api.service.StopService(
            service_pb2.StopServiceRequest(session_id=session_id, used_units=used),
            metadata=OPERATOR,
        )
        records.append(record)
    end = await _now_boundary()
    invoice = await api.billing.GenerateInvoice(
        _generate(account_id, start, end), metadata=OPERATOR
    )
    assert invoice.total_micros == sum(r.charged_micros for r in records) == 98_000
    [voice] = invoice.charges
    assert (voice.service_type, voice.unit, voice.units) == ("VOICE", "SECOND", 49)
    assert {(s.session_id, s.units, s.amount_micros, s.endpoint) for s in voice.sessions} == {
        (r.session_id, 42 if r.charged_micros == 84_000 else 7, r.charged_micros, f"{prefix}123")
        for r in records
    }
