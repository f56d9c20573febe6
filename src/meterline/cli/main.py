"""`meterline`: run the stack, and operate accounts, credentials, tariffs and sessions.

Where the services are: --rating-address / --billing-address / --service-address, or
METERLINE_RATING_ADDRESS / METERLINE_BILLING_ADDRESS / METERLINE_SERVICE_ADDRESS
(defaults 127.0.0.1:50051 / 50052 / 50053). Operator calls are signed with
METERLINE_TOKEN_SECRET, or the secret `meterline up` generated in METERLINE_DATA_DIR.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import json
import sys
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import grpc
import typer
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message

from meterline.auth.v1 import auth_pb2
from meterline.cli.operator import OperatorClient
from meterline.kernel.config import ConfigError, Settings, load_settings, token_secret
from meterline.kernel.errors import MeterlineError
from meterline.kernel.logs import configure_logging
from meterline.kernel.money import AmountError, format_amount, parse_amount

T = TypeVar("T")

DEFAULT_TARIFFS = Path(__file__).resolve().parents[2] / "rating_service" / "default_tariffs.yaml"

app = typer.Typer(
    help="Meterline: real-time metering and prepaid billing over gRPC.",
    no_args_is_help=True,
    add_completion=False,
)
account_app = typer.Typer(help="Open, fund and inspect accounts.", no_args_is_help=True)
credential_app = typer.Typer(
    help="Issue credentials for devices, gateways, operators.", no_args_is_help=True
)
tariffs_app = typer.Typer(help="Load and list tariffs.", no_args_is_help=True)
sessions_app = typer.Typer(help="See the active sessions.", no_args_is_help=True)
app.add_typer(account_app, name="account")
app.add_typer(credential_app, name="credential")
app.add_typer(tariffs_app, name="tariffs")
app.add_typer(sessions_app, name="sessions")

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]


@dataclasses.dataclass
class GlobalOptions:
    rating_address: str | None = None
    billing_address: str | None = None
    service_address: str | None = None


_options = GlobalOptions()


@app.callback()
def main(
    rating_address: Annotated[
        str | None, typer.Option(help="host:port of the rating service.", show_default=False)
    ] = None,
    billing_address: Annotated[
        str | None, typer.Option(help="host:port of the billing manager.", show_default=False)
    ] = None,
    service_address: Annotated[
        str | None, typer.Option(help="host:port of the service manager.", show_default=False)
    ] = None,
) -> None:
    _options.rating_address = rating_address
    _options.billing_address = billing_address
    _options.service_address = service_address


def _settings() -> Settings:
    try:
        settings = load_settings()
    except ConfigError as error:
        _fail(str(error), code=2)
    endpoints = dataclasses.replace(
        settings.endpoints,
        rating=_options.rating_address or settings.endpoints.rating,
        billing=_options.billing_address or settings.endpoints.billing,
        service=_options.service_address or settings.endpoints.service,
    )
    return dataclasses.replace(settings, endpoints=endpoints)


def _fail(message: str, code: int = 1) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _amount(text: str) -> int:
    try:
        return parse_amount(text)
    except AmountError as error:
        _fail(str(error), code=2)


def _run(work: Callable[[OperatorClient], Awaitable[T]]) -> T:
    """Run operator calls, turning every failure into one clear line and an exit code."""
    settings = _settings()
    try:
        secret = token_secret(settings)
    except ConfigError as error:
        _fail(str(error), code=2)

    async def go() -> T:
        client = OperatorClient(settings.endpoints, secret)
        try:
            return await work(client)
        finally:
            await client.close()

    try:
        return asyncio.run(go())
    except grpc.aio.AioRpcError as error:
        if error.code() is grpc.StatusCode.UNAVAILABLE:
            _fail(
                f"cannot reach the service ({error.details()}); is the stack running "
                "(`meterline up`) and are the addresses right?"
            )
        bad_input = error.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND)
        _fail(error.details() or error.code().name, code=2 if bad_input else 1)


def _emit(as_json: bool, data: Any, text: str) -> None:
    if as_json:
        typer.echo(json.dumps(data, indent=2, default=str))
    else:
        typer.echo(text)


def _dict(message: Message) -> dict[str, Any]:
    return MessageToDict(message, preserving_proto_field_name=True)


# -- the stack ----------------------------------------------------------------------------


class Role(enum.StrEnum):
    rating = "rating"
    billing = "billing"
    service = "service"


@app.command()
def serve(role: Annotated[Role, typer.Argument(help="Which service to run.")]) -> None:
    """Run one service in the foreground (also: python -m rating_service | billing_manager |
    service_manager)."""
    settings = _settings()
    address = {
        Role.rating: settings.endpoints.rating,
        Role.billing: settings.endpoints.billing,
        Role.service: settings.endpoints.service,
    }[role]
    try:
        if role is Role.rating:
            from rating_service.server import main as serve_main
        elif role is Role.billing:
            from billing_manager.server import main as serve_main
        else:
            from service_manager.server import main as serve_main
        serve_main(address)
    except ConfigError as error:
        _fail(str(error), code=2)


@app.command()
def up(
    demo: Annotated[bool, typer.Option(help="Run a demo session once the stack is up.")] = False,
    keep_running: Annotated[
        bool, typer.Option(help="With --demo: keep the stack running after the demo.")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Start the whole stack: PostgreSQL and Redis (the configured ones, or embedded ones
    from the wheels when no URL is set) and the three services. With --demo, run a demo
    session and stop; without, serve until Ctrl-C."""
    from meterline.cli.demo import run_demo
    from meterline.cli.stack import LocalStack, StackError

    settings = _settings()
    configure_logging("WARNING")
    say: Callable[[str], None] = (lambda _: None) if as_json else typer.echo
    try:
        with LocalStack(settings) as running:
            kind = "embedded" if running.embedded else "configured"
            say(f"stack up ({kind} stores; logs in {running.log_dir}):")
            for role in ("rating", "billing", "service"):
                say(f"  {role:8s} {getattr(running.endpoints, role)}")
            loaded = asyncio.run(
                _load_default_tariffs(OperatorClient(running.endpoints, running.secret))
            )
            if loaded:
                say(f"loaded {loaded} default tariffs")
            if demo:
                result = asyncio.run(run_demo(running.endpoints, running.secret, say))
                _emit(
                    as_json,
                    {
                        "account_id": result.account_id,
                        "session_id": result.record.session_id,
                        "used_units": result.record.used_units,
                        "charged_micros": result.record.charged_micros,
                        "charged": result.record.charged,
                        "balance_micros": result.balance_micros,
                        "balance": format_amount(result.balance_micros),
                        "termination_reason": str(result.record.termination_reason),
                        "updates": result.updates,
                    },
                    "demo done",
                )
                if not keep_running:
                    return
            say("serving; press Ctrl-C to stop")
            _wait_for_interrupt()
    except StackError as error:
        _fail(str(error))


def _wait_for_interrupt() -> None:
    import signal
    import threading

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        while not stop.wait(1):
            pass
    except KeyboardInterrupt:
        pass


async def _load_default_tariffs(client: OperatorClient) -> int:
    """Load the packaged default tariff set into an empty rating database."""
    from rating_service.domain.tariff_files import read_tariff_file
    from rating_service.grpc_api import tariff_to_wire

    try:
        if await client.tariffs():
            return 0
        tariffs = read_tariff_file(DEFAULT_TARIFFS)
        return await client.import_tariffs([tariff_to_wire(t) for t in tariffs])
    finally:
        await client.close()


# -- accounts -----------------------------------------------------------------------------


@account_app.command("create")
def account_create(
    name: Annotated[str, typer.Option("--name", help="A name for people.")],
    currency: Annotated[str, typer.Option("--currency", help="ISO 4217 code, e.g. EUR.")],
    credit_limit: Annotated[
        str, typer.Option("--credit-limit", help="How far below zero it may go, e.g. 10.00.")
    ] = "0",
    as_json: JsonOption = False,
) -> None:
    """Open an account (prepaid unless --credit-limit is given)."""
    limit = _amount(credit_limit)
    if limit < 0:
        _fail("--credit-limit cannot be negative", code=2)
    account = _run(lambda client: client.create_account(name, currency.upper(), limit))
    _emit(as_json, _dict(account), account.account_id)


@account_app.command("fund")
def account_fund(
    account_id: Annotated[str, typer.Argument(help="The account.")],
    amount: Annotated[str, typer.Argument(help="Decimal amount in currency units, e.g. 1.00.")],
    key: Annotated[
        str | None,
        typer.Option("--idempotency-key", help="Repeat it to retry safely (default: new one)."),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Add prepaid funds to an account."""
    micros = _amount(amount)
    if micros <= 0:
        _fail("the amount must be more than 0", code=2)
    idempotency_key = key or f"cli-{uuid.uuid4().hex}"
    response = _run(lambda client: client.fund(account_id, micros, idempotency_key))
    account = response.account
    _emit(
        as_json,
        _dict(response),
        f"funded {format_amount(micros)} {account.currency}; balance "
        f"{format_amount(account.balance_micros)} {account.currency} "
        f"(transaction {response.transaction.transaction_id})",
    )


@account_app.command("show")
def account_show(
    account_id: Annotated[str, typer.Argument(help="The account.")],
    as_json: JsonOption = False,
) -> None:
    """An account's balance and its ledger."""

    async def work(client: OperatorClient) -> tuple[Any, list[Any]]:
        return await client.account(account_id), await client.ledger(account_id)

    account, entries = _run(work)
    if as_json:
        _emit(True, {"account": _dict(account), "ledger": [_dict(e) for e in entries]}, "")
        return
    currency = account.currency
    lines = [
        f"{account.display_name} ({account.account_id}), {currency}",
        f"  balance    {format_amount(account.balance_micros):>14}",
        f"  held       {format_amount(account.held_micros):>14}",
        f"  available  {format_amount(account.available_micros):>14}",
        "ledger:",
    ]
    from meterline.billing.v1 import billing_pb2

    for entry in entries:
        side = billing_pb2.LedgerAccount.Name(entry.ledger_account).removeprefix("LEDGER_ACCOUNT_")
        kind = billing_pb2.TransactionKind.Name(entry.kind).removeprefix("TRANSACTION_KIND_")
        when = entry.create_time.ToDatetime().strftime("%Y-%m-%d %H:%M:%S")
        lines.append(
            f"  {entry.entry_id:6d} {when} {kind:8s} {side:19s} "
            f"{format_amount(entry.amount_micros):>14}"
        )
    typer.echo("\n".join(lines))


@account_app.command("plan")
def account_plan(
    account_id: Annotated[str, typer.Argument(help="The account.")],
    plan_id: Annotated[str, typer.Argument(help="The rate plan it rates under.")],
    as_json: JsonOption = False,
) -> None:
    """Make an account rate under a plan (`default` goes back to the default plan)."""
    assigned = _run(lambda client: client.assign_plan(account_id, plan_id))
    _emit(
        as_json,
        {"account_id": account_id, "rate_plan_id": assigned},
        f"{account_id} rates under plan {assigned}",
    )


# -- credentials ---------------------------------------------------------------------------


@credential_app.command("issue")
def credential_issue(
    account: Annotated[
        str | None, typer.Option("--account", help="A device credential bound to this account.")
    ] = None,
    gateway: Annotated[
        str | None, typer.Option("--gateway", help="A gateway credential with this name.")
    ] = None,
    operator: Annotated[bool, typer.Option("--operator", help="An operator credential.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Create a credential; prints client_id and client_secret (shown only now)."""
    chosen = [
        flag
        for flag, given in (
            ("--account", account),
            ("--gateway", gateway),
            ("--operator", operator),
        )
        if given
    ]
    if len(chosen) != 1:
        _fail("give exactly one of --account ACCOUNT_ID, --gateway NAME or --operator", code=2)
    if account:
        kind, args = auth_pb2.PRINCIPAL_KIND_DEVICE, {"account_id": account}
    elif gateway:
        kind, args = auth_pb2.PRINCIPAL_KIND_GATEWAY, {"gateway": gateway}
    else:
        kind, args = auth_pb2.PRINCIPAL_KIND_OPERATOR, {}
    created = _run(lambda client: client.create_credential(kind, **args))
    _emit(
        as_json,
        _dict(created),
        f"client_id     {created.client_id}\nclient_secret {created.client_secret}",
    )


# -- tariffs ------------------------------------------------------------------------------


@tariffs_app.command("import")
def tariffs_import(
    file: Annotated[Path, typer.Argument(help="A .csv, .yaml or .yml tariff sheet.")],
    as_json: JsonOption = False,
) -> None:
    """Load a tariff sheet (and the rate plans a YAML sheet defines): every row is checked
    first, then all are written in one transaction, or none."""
    from rating_service.domain.tariff_files import read_tariff_sheet
    from rating_service.grpc_api import plan_to_wire, tariff_to_wire

    try:
        sheet = read_tariff_sheet(file)
    except MeterlineError as error:
        _fail(error.message, code=2)
    written = _run(
        lambda client: client.import_tariffs(
            [tariff_to_wire(t) for t in sheet.tariffs], [plan_to_wire(p) for p in sheet.plans]
        )
    )
    _emit(
        as_json,
        {"written": written, "rate_plans": len(sheet.plans)},
        f"imported {written} tariffs"
        + (f" and {len(sheet.plans)} rate plans" if sheet.plans else "")
        + f" from {file}",
    )


@tariffs_app.command("export")
def tariffs_export(
    file: Annotated[Path, typer.Argument(help="A .csv, .yaml or .yml file to write.")],
    history: Annotated[
        bool,
        typer.Option(
            "--history",
            help="Also versions scheduled or no longer in force (for audit: ended versions "
            "do not import again).",
        ),
    ] = False,
) -> None:
    """Write the tariffs (and, to YAML, the rate plans) to a sheet `tariffs import` reads."""
    from rating_service.domain.tariff_files import write_tariff_sheet
    from rating_service.grpc_api import plan_from_wire, tariff_from_wire

    async def work(client: OperatorClient) -> tuple[list[Any], list[Any]]:
        return await client.rate_plans(), await client.tariffs(include_history=True)

    plans, tariffs = _run(work)
    if not history:
        # In force and scheduled: what restores this state when imported again.
        now = datetime.now(UTC)
        tariffs = [
            t
            for t in tariffs
            if not t.HasField("effective_to") or t.effective_to.ToDatetime(tzinfo=UTC) > now
        ]
    try:
        write_tariff_sheet(
            file, [plan_from_wire(p) for p in plans], [tariff_from_wire(t) for t in tariffs]
        )
    except (MeterlineError, OSError) as error:
        _fail(getattr(error, "message", str(error)), code=2)
    typer.echo(f"exported {len(tariffs)} tariffs and {len(plans)} rate plans to {file}")


@tariffs_app.command("plans")
def tariffs_plans(as_json: JsonOption = False) -> None:
    """The rate plans with their time zones and time bands."""
    plans = _run(lambda client: client.rate_plans())
    lines = []
    for plan in plans:
        default = " (default)" if plan.is_default else ""
        lines.append(f"{plan.rate_plan_id}{default}: {plan.display_name}, {plan.time_zone}")
        lines.append(f"  otherwise {plan.default_band}")
        for band in plan.time_bands:
            lines.append(f"  {band.band:10s} {band.days:28s} {band.start_time}-{band.end_time}")
    _emit(as_json, [_dict(p) for p in plans], "\n".join(lines))


@tariffs_app.command("list")
def tariffs_list(
    history: Annotated[
        bool, typer.Option("--history", help="Also versions scheduled or no longer in force.")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """The tariffs in force (with --history, every version)."""
    from meterline.rating.v1 import types_pb2

    tariffs = _run(lambda client: client.tariffs(include_history=history))
    lines = [
        f"{types_pb2.ServiceType.Name(t.service_type):18s} {t.prefix or '*':16s} "
        f"{format_amount(t.price_per_unit_micros):>10} {t.currency}/{types_pb2.Unit.Name(t.unit)}"
        f" per {t.increment_units}, min {t.minimum_units}, setup "
        f"{format_amount(t.setup_fee_micros)}  {t.description}"
        for t in tariffs
    ]
    _emit(as_json, [_dict(t) for t in tariffs], "\n".join(lines) or "no tariffs")


# -- sessions -----------------------------------------------------------------------------


@sessions_app.command("list")
def sessions_list(
    account: Annotated[str, typer.Option("--account", help="Only this account's.")] = "",
    as_json: JsonOption = False,
) -> None:
    """The active sessions: user, service type, rate, endpoint, duration."""
    from meterline.rating.v1 import types_pb2

    sessions = _run(lambda client: client.active_sessions(account))
    lines = [
        f"{s.session_id}  {s.account_id}  {types_pb2.ServiceType.Name(s.service_type):10s} "
        f"{s.endpoint:16s} {format_amount(s.rate.price_per_unit_micros)} {s.rate.currency}"
        f"/{types_pb2.Unit.Name(s.rate.unit)}  {s.duration.ToTimedelta()}  {s.used_units} used"
        for s in sessions
    ]
    _emit(as_json, [_dict(s) for s in sessions], "\n".join(lines) or "no active sessions")


def run() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
