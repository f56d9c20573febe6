"""`meterline voucher ...` (prepaid vouchers) and `meterline account suspend | reactivate |
close`. Registered from main.py (`register`), which lends its one error boundary and
output helpers (the `Cli` of gateways.py)."""

from __future__ import annotations

import csv
import json
import os
import sys
import uuid
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from typing import Annotated, Any

import psycopg
import typer
from google.protobuf.json_format import MessageToDict

from meterline.billing.v1 import billing_pb2
from meterline.cli.gateways import BAD_INPUT, Cli
from meterline.kernel.money import (
    AmountError,
    check_currency,
    format_amount,
    format_money,
    parse_amount,
)
from meterline.kernel.wire import timestamp

_cli: Cli | None = None

voucher_app = typer.Typer(
    help="Prepaid vouchers: make a batch of codes, redeem one.", no_args_is_help=True
)

ledger_app = typer.Typer(help="Audit the ledger.", no_args_is_help=True)

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]


def register(app: typer.Typer, account_app: typer.Typer, cli: Cli) -> None:
    """Add `voucher` and the account status commands."""
    global _cli
    _cli = cli
    app.add_typer(voucher_app, name="voucher")
    app.add_typer(ledger_app, name="ledger")
    for name, status, summary in (
        ("suspend", billing_pb2.ACCOUNT_STATUS_SUSPENDED, _SUSPEND),
        ("reactivate", billing_pb2.ACCOUNT_STATUS_ACTIVE, _REACTIVATE),
        ("close", billing_pb2.ACCOUNT_STATUS_CLOSED, _CLOSE),
    ):
        account_app.command(name, help=summary)(_status_command(status))
    account_app.command("adjust", context_settings=_SIGNED)(account_adjust)
    account_app.command("refund", context_settings=_SIGNED)(account_refund)


# A signed amount is an argument, not an unknown option: `adjust ID -5.00` (and a
# negative refund is refused with a sentence, not click's "No such option").
_SIGNED = {"ignore_unknown_options": True}
ReasonOption = Annotated[
    str, typer.Option("--reason", help="Why, for the customer and the auditor (kept).")
]
KeyOption = Annotated[
    str | None,
    typer.Option("--idempotency-key", help="Repeat it to retry safely (default: new one)."),
]


def _micros(text: str) -> int:
    try:
        return parse_amount(text)
    except AmountError as error:
        _lent().fail(str(error), code=BAD_INPUT)


def _moved(as_json: bool, response: Any, what: str) -> None:
    account = response.account
    amount = format_money(response.transaction.amount_micros, account.currency, exact=True)
    _lent().emit(
        as_json,
        MessageToDict(response, preserving_proto_field_name=True),
        f"{what} {amount}; balance "
        f"{format_money(account.balance_micros, account.currency, exact=True)} "
        f"(transaction {response.transaction.transaction_id})",
    )


def account_adjust(
    account_id: Annotated[str, typer.Argument(help="The account.")],
    amount: Annotated[
        str, typer.Argument(help="Signed amount in currency units: 5.00 credits, -5.00 debits.")
    ],
    reason: ReasonOption,
    key: KeyOption = None,
    as_json: JsonOption = False,
) -> None:
    """Correct an account's balance up or down, with a reason (a new ADJUST transaction)."""
    micros = _micros(amount)
    if micros == 0:
        _lent().fail("the amount must not be 0", code=BAD_INPUT)
    idempotency_key = key or f"cli-{uuid.uuid4().hex}"
    response = _lent().run(
        lambda client: client.adjust(account_id, micros, reason, idempotency_key)
    )
    _moved(as_json, response, "adjusted by")


def account_refund(
    hold_id: Annotated[str, typer.Argument(help="The captured hold.")],
    amount: Annotated[str, typer.Argument(help="Amount in currency units, e.g. 1.20.")],
    reason: ReasonOption,
    key: KeyOption = None,
    as_json: JsonOption = False,
) -> None:
    """Give back part or all of a captured charge, with a reason (a new REFUND
    transaction; never more than the hold captured)."""
    micros = _micros(amount)
    if micros <= 0:
        _lent().fail("the amount must be more than 0", code=BAD_INPUT)
    idempotency_key = key or f"cli-{uuid.uuid4().hex}"
    response = _lent().run(lambda client: client.refund(hold_id, micros, reason, idempotency_key))
    _moved(as_json, response, "refunded")


_SUSPEND = (
    "Suspend an account: no new sessions, holds, fundings or vouchers until it is reactivated."
)
_REACTIVATE = "Reactivate a suspended account."
_CLOSE = "Close an account for good (it must have a zero balance and no open holds)."


def _status_command(status: billing_pb2.AccountStatus.ValueType) -> Any:
    def change(
        account_id: Annotated[str, typer.Argument(help="The account.")],
        as_json: JsonOption = False,
    ) -> None:
        cli = _lent()
        account: billing_pb2.Account = cli.run(
            lambda client: client.set_account_status(account_id, status)
        )
        shown = billing_pb2.AccountStatus.Name(account.status).removeprefix("ACCOUNT_STATUS_")
        cli.emit(
            as_json,
            MessageToDict(account, preserving_proto_field_name=True),
            f"account {account.account_id} is {shown.lower()}",
        )

    return change


def _lent() -> Cli:
    assert _cli is not None, "register() first"
    return _cli


def _expiry(text: str) -> datetime:
    """A date (valid through that day, UTC) or an ISO 8601 date and time (UTC unless it
    names its offset)."""
    try:
        if len(text.strip()) == 10:
            day = datetime.strptime(text.strip(), "%Y-%m-%d").date()
            return datetime.combine(day + timedelta(days=1), time(), tzinfo=UTC)
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        _lent().fail(
            f"--expires {text!r} is not a date: write 2027-12-31 or 2027-12-31T18:00:00+01:00",
            code=BAD_INPUT,
        )
    return when if when.tzinfo else when.replace(tzinfo=UTC)


@voucher_app.command("create")
def voucher_create(
    count: Annotated[int, typer.Option("--count", help="How many codes (1 to 10000).")],
    amount: Annotated[
        str, typer.Option("--amount", help="What each funds, in currency units, e.g. 10.00.")
    ],
    currency: Annotated[
        str, typer.Option("--currency", help="ISO 4217 code; only accounts in it redeem them.")
    ],
    expires: Annotated[
        str | None,
        typer.Option(
            "--expires", help="Last day they can be redeemed (UTC), or an ISO date and time."
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Write the codes to this CSV file instead of printing them."),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Make a batch of prepaid vouchers and show their codes, once: only a keyed hash of
    each is kept."""
    cli = _lent()
    code = currency.strip().upper()
    try:
        micros = parse_amount(amount)
        check_currency(code)
    except AmountError as error:
        cli.fail(str(error), code=BAD_INPUT)
    if micros <= 0:
        cli.fail("the amount must be more than 0", code=BAD_INPUT)
    if not 1 <= count <= 10_000:
        cli.fail("--count must be 1 to 10000", code=BAD_INPUT)
    request = billing_pb2.CreateVouchersRequest(count=count, amount_micros=micros, currency=code)
    expires_at = _expiry(expires) if expires else None
    if expires_at is not None:
        if expires_at <= datetime.now(UTC):
            cli.fail(f"--expires {expires} is in the past", code=BAD_INPUT)
        request.expire_time.CopyFrom(timestamp(expires_at))
    descriptor = None
    if out is not None:
        # Made before the codes exist, so a file that cannot be written costs no batch.
        # Only its owner may read it: each code is money.
        try:
            descriptor = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            cli.fail(
                f"{out} exists; the codes are shown once, so nothing is overwritten",
                code=BAD_INPUT,
            )
        except OSError as error:
            cli.fail(f"--out {out}: {error.strerror or error}", code=BAD_INPUT)
    try:
        response: billing_pb2.CreateVouchersResponse = cli.run(
            lambda client: client.create_vouchers(request)
        )
    except BaseException:
        if descriptor is not None:
            os.close(descriptor)
            assert out is not None
            out.unlink(missing_ok=True)
        raise
    value = format_money(micros, code, exact=True)
    until = expires_at.isoformat() if expires_at else ""
    if out is not None and descriptor is not None:
        with open(descriptor, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["code", "amount", "currency", "expires", "batch_id"])
            for voucher in response.codes:
                writer.writerow([voucher, format_amount(micros), code, until, response.batch_id])
        print(
            f"{len(response.codes)} vouchers of {value} (batch {response.batch_id}) "
            f"written to {out}",
            file=sys.stderr,
        )
        return
    data: dict[str, Any] = MessageToDict(response, preserving_proto_field_name=True)
    text = "\n".join(response.codes)
    cli.emit(as_json, data, text)
    if not as_json:
        print(
            f"{len(response.codes)} vouchers of {value}, batch {response.batch_id}", file=sys.stderr
        )


@voucher_app.command("redeem")
def voucher_redeem(
    account_id: Annotated[str, typer.Argument(help="The account to fund.")],
    code: Annotated[str, typer.Argument(help="The voucher code, as printed.")],
    as_json: JsonOption = False,
) -> None:
    """Redeem a voucher on an account, as an operator (a device redeems its own with the
    RedeemVoucher call)."""
    cli = _lent()
    response: billing_pb2.RedeemVoucherResponse = cli.run(
        lambda client: client.redeem_voucher(account_id, code)
    )
    account = response.account
    funded = format_money(response.transaction.amount_micros, account.currency, exact=True)
    cli.emit(
        as_json,
        MessageToDict(response, preserving_proto_field_name=True),
        (
            f"already redeemed for this account (funded {funded} then); nothing added"
            if response.already_redeemed
            else f"funded {funded}"
        )
        + f"; balance {format_money(account.balance_micros, account.currency, exact=True)} "
        f"(transaction {response.transaction.transaction_id})",
    )


@ledger_app.command("verify")
def ledger_verify(
    database_url: Annotated[
        str | None,
        typer.Option(
            "--database-url",
            help="The account database (default: METERLINE_BILLING_DATABASE_URL, else the "
            "one of the stack `meterline up` runs from the data folder).",
        ),
    ] = None,
    service_database_url: Annotated[
        str | None,
        typer.Option(
            "--service-database-url",
            help="The service database, to check settled sessions against their records "
            "(default: METERLINE_SERVICE_DATABASE_URL, else the running stack's; "
            "none: not checked).",
        ),
    ] = None,
    accounts: Annotated[
        list[str] | None,
        typer.Option("--account", help="Check only this account (repeat for more)."),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Recompute every balance from the ledger entries and check every invariant; exits 1
    naming each mismatch."""
    from billing_manager.storage.ledger_audit import verify
    from meterline.cli.stack import read_state, stack_owner
    from meterline.kernel.config import ConfigError, load_settings

    cli = _lent()
    try:
        settings = load_settings()
    except ConfigError as error:
        cli.fail(str(error), code=BAD_INPUT)
    stores = settings.stores
    if not (database_url or stores.billing_database_url):
        # Like every command, it finds the stack `meterline up` runs from the data folder.
        state = read_state(settings.data_dir) if stack_owner(settings.data_dir) else None
        if state is not None:
            stores = state.stores
    billing_url = database_url or stores.billing_database_url
    if not billing_url:
        cli.fail(
            "no account database: give --database-url, set METERLINE_BILLING_DATABASE_URL, "
            f"or run it where `meterline up` runs (no stack runs from {settings.data_dir})",
            code=BAD_INPUT,
        )
    service_url = (
        stores.service_database_url if service_database_url is None else service_database_url
    )
    try:
        audit = verify(billing_url, service_url, accounts)
    except psycopg.Error as error:
        cli.fail(f"cannot read the ledger: {str(error).strip().splitlines()[0]}")
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "ok": audit.ok,
                    "accounts": audit.accounts,
                    "transactions": audit.transactions,
                    "holds": audit.holds,
                    "sessions": audit.sessions,
                    "mismatches": audit.mismatches,
                },
                indent=2,
            )
        )
    else:
        for mismatch in audit.mismatches:
            typer.echo(f"MISMATCH {mismatch}")
        typer.echo(audit.summary())
    if not audit.ok:
        raise typer.Exit(1)
