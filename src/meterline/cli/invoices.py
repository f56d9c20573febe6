"""`meterline invoice generate | list | show | render`: bills of a period, as an operator.
Registered from main.py (`register`), which lends its one error boundary and output
helpers (the `Cli` of gateways.py). Rendering is meterline.invoices' (HTML from a Jinja2
template, PDF by fpdf2), the same the web page uses."""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from google.protobuf.json_format import MessageToDict

from meterline.billing.v1 import billing_pb2
from meterline.cli.gateways import BAD_INPUT, Cli
from meterline.cli.prices import quantity
from meterline.invoices import render_html, render_pdf
from meterline.invoices.view import (
    DEFAULT_LOCALE,
    DEFAULT_TIME_ZONE,
    RenderError,
    check_place,
)
from meterline.kernel.money import format_money
from meterline.kernel.wire import timestamp
from meterline.rating.v1 import types_pb2

_cli: Cli | None = None

invoice_app = typer.Typer(
    help="Bills: issue one for a period, list, show and render them (HTML, PDF).",
    no_args_is_help=True,
)

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]
InvoiceArgument = Annotated[
    str, typer.Argument(help="The bill's number (INV-2026-000123) or its id.")
]


def register(app: typer.Typer, cli: Cli) -> None:
    """Add `invoice`."""
    global _cli
    _cli = cli
    app.add_typer(invoice_app, name="invoice")


def _lent() -> Cli:
    assert _cli is not None, "register() first"
    return _cli


def _data(invoice: billing_pb2.Invoice) -> dict[str, Any]:
    return MessageToDict(
        invoice, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


def month(text: str) -> tuple[datetime, datetime]:
    """'2026-11' as [2026-11-01, 2026-12-01) in UTC."""
    try:
        start = datetime.strptime(text.strip(), "%Y-%m").replace(tzinfo=UTC)
    except ValueError:
        _lent().fail(f"--period {text!r} is not a month: write it as 2026-11", code=BAD_INPUT)
    end = (
        start.replace(year=start.year + 1, month=1)
        if start.month == 12
        else start.replace(month=start.month + 1)
    )
    return start, end


def moment(text: str, option: str) -> datetime:
    """An ISO 8601 date or date and time (UTC unless it names its offset), or 'now'."""
    if text.strip().lower() == "now":
        return datetime.now(UTC)
    try:
        when = datetime.fromisoformat(text.strip())
        # In UTC here: an offset can take a time out of datetime's years ('0001-01-01+01:00').
        return (when if when.tzinfo else when.replace(tzinfo=UTC)).astimezone(UTC)
    except (ValueError, OverflowError):
        _lent().fail(
            f"{option} {text!r} is not a time: write 2026-11-01, 2026-11-01T00:00:00+01:00 or now",
            code=BAD_INPUT,
        )


def _period(period: str | None, start: str | None, until: str | None) -> tuple[datetime, datetime]:
    if period is not None:
        if start is not None or until is not None:
            _lent().fail("give --period, or --from and --until, not both", code=BAD_INPUT)
        return month(period)
    if start is None or until is None:
        _lent().fail("which period? give --period 2026-11, or --from and --until", code=BAD_INPUT)
    return moment(start, "--from"), moment(until, "--until")


def _summary(invoice: billing_pb2.Invoice) -> str:
    def money(micros: int) -> str:
        return format_money(micros, invoice.currency, exact=True)

    start = invoice.period_start.ToDatetime(tzinfo=UTC).isoformat()
    end = invoice.period_end.ToDatetime(tzinfo=UTC).isoformat()
    lines = [
        f"{invoice.number}  {invoice.account_name} ({invoice.account_id})",
        f"  period           {start} to {end}",
        f"  opening balance  {money(invoice.opening_balance_micros):>20}",
        f"  funded           {money(invoice.funded_micros):>20}",
        f"  adjusted         {money(invoice.adjusted_micros):>20}",
        f"  refunded         {money(invoice.refunded_micros):>20}",
        f"  charges          {money(invoice.total_micros):>20}",
        f"  closing balance  {money(invoice.closing_balance_micros):>20}",
    ]
    for charge in invoice.charges:
        name = " ".join(part for part in (charge.service_type, charge.application_id) if part)
        count = len(charge.sessions)
        lines.append(
            f"    {name:28s} {_units(charge.units, charge.unit):>22s} "
            f"{money(charge.amount_micros):>20}  ({count} session{'' if count == 1 else 's'})"
        )
    return "\n".join(lines)


def _units(count: int, unit: str) -> str:
    """A charge's units as the price tables write them ('42 s', '1.5 MB'); a unit name
    the CLI does not know is shown as it came."""
    if not unit:
        return ""
    try:
        return quantity(types_pb2.Unit.Value(unit), count)
    except ValueError:
        return f"{count} {unit}"


@invoice_app.command("generate")
def invoice_generate(
    account_id: Annotated[str, typer.Argument(help="The account.")],
    period: Annotated[
        str | None, typer.Option("--period", help="A calendar month in UTC, e.g. 2026-11.")
    ] = None,
    start: Annotated[
        str | None, typer.Option("--from", help="Start of the period (ISO 8601), inclusive.")
    ] = None,
    until: Annotated[
        str | None,
        typer.Option("--until", help="End of the period (ISO 8601, or now), exclusive."),
    ] = None,
    key: Annotated[
        str | None,
        typer.Option("--idempotency-key", help="Default: one made from the account and period."),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Issue the bill of an account for a period that has ended (or show the one issued
    for it before: one bill per account and period)."""
    cli = _lent()
    begin, end = _period(period, start, until)
    request = billing_pb2.GenerateInvoiceRequest(
        account_id=account_id,
        period_start=timestamp(begin),
        period_end=timestamp(end),
        idempotency_key=key or f"cli-invoice:{account_id}:{begin.isoformat()}:{end.isoformat()}",
    )
    invoice: billing_pb2.Invoice = cli.run(lambda client: client.generate_invoice(request))
    cli.emit(as_json, _data(invoice), _summary(invoice))


@invoice_app.command("list")
def invoice_list(
    account_id: Annotated[str, typer.Argument(help="The account.")],
    as_json: JsonOption = False,
) -> None:
    """An account's bills, newest first."""
    cli = _lent()
    found: list[billing_pb2.Invoice] = cli.run(lambda client: client.invoices(account_id))
    if as_json:
        cli.emit(True, [_data(invoice) for invoice in found], "")
        return
    table = cli.table("number", "period start", "period end", "charges", "closing balance")
    for invoice in found:
        table.add_row(
            invoice.number,
            invoice.period_start.ToDatetime(tzinfo=UTC).isoformat(),
            invoice.period_end.ToDatetime(tzinfo=UTC).isoformat(),
            format_money(invoice.total_micros, invoice.currency, exact=True),
            format_money(invoice.closing_balance_micros, invoice.currency, exact=True),
        )
    cli.print_table(table, f"no bills for account {account_id}")


@invoice_app.command("show")
def invoice_show(invoice_id: InvoiceArgument, as_json: JsonOption = False) -> None:
    """A bill's balances and charges."""
    cli = _lent()
    invoice: billing_pb2.Invoice = cli.run(lambda client: client.invoice(invoice_id))
    cli.emit(as_json, _data(invoice), _summary(invoice))


class Format(enum.StrEnum):
    html = "html"
    pdf = "pdf"


@invoice_app.command("render")
def invoice_render(
    invoice_id: InvoiceArgument,
    out: Annotated[Path, typer.Option("--out", help="The file to write (replaced if it exists).")],
    output_format: Annotated[Format, typer.Option("--format", help="html or pdf.")] = Format.pdf,
    locale: Annotated[
        str, typer.Option("--locale", help="Numbers and dates as in this locale, e.g. de_DE.")
    ] = DEFAULT_LOCALE,
    time_zone: Annotated[
        str, typer.Option("--time-zone", help="Times in this IANA zone, e.g. Europe/Paris.")
    ] = DEFAULT_TIME_ZONE,
    as_json: JsonOption = False,
) -> None:
    """Write a bill as an HTML page or a PDF document for people."""
    cli = _lent()
    if not out.parent.is_dir():
        cli.fail(f"--out {out}: the folder {out.parent} does not exist", code=BAD_INPUT)
    try:
        check_place(locale, time_zone)
    except RenderError as error:
        cli.fail(str(error), code=BAD_INPUT)
    invoice: billing_pb2.Invoice = cli.run(lambda client: client.invoice(invoice_id))
    try:
        if output_format is Format.html:
            data = render_html(invoice, locale=locale, time_zone=time_zone).encode()
        else:
            data = render_pdf(invoice, locale=locale, time_zone=time_zone)
    except RenderError as error:
        cli.fail(str(error), code=BAD_INPUT)
    try:
        out.write_bytes(data)
    except OSError as error:
        cli.fail(f"cannot write {out}: {error.strerror or error}")
    cli.emit(
        as_json,
        {
            "invoice_id": invoice.invoice_id,
            "number": invoice.number,
            "format": output_format.value,
            "out": str(out),
            "bytes": len(data),
        },
        f"{invoice.number} written to {out} ({output_format.value.upper()}, {len(data):,} bytes)",
    )
