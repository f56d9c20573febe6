"""`meterline`: run the stack, and operate accounts, credentials, tariffs and sessions.

Where the services are: --rating-address / --billing-address / --service-address, or
METERLINE_RATING_ADDRESS / METERLINE_BILLING_ADDRESS / METERLINE_SERVICE_ADDRESS
(defaults 127.0.0.1:50051 / 50052 / 50053). Operator calls are signed with
METERLINE_TOKEN_SECRET, or the secret `meterline up` generated in METERLINE_DATA_DIR.
Channels use TLS: the METERLINE_TLS_* settings when any is set, else the CA and client
certificate of the stack `meterline up` runs from METERLINE_DATA_DIR (its stack.json), else
the system's authorities; METERLINE_PLAINTEXT=1 turns TLS off.

One error boundary (`run`): every failure is one line on stderr and exit code 2 (bad
input: an argument, a file, an id that does not exist) or 1 (anything else); a traceback
only with --debug.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import json
import signal
import sys
import threading
import traceback
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar

import grpc
import typer
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message
from rich import box
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn
from rich.table import Table

from meterline.auth.v1 import auth_pb2
from meterline.cli import gateways as gateway_commands
from meterline.cli import invoices as invoice_commands
from meterline.cli import money as money_commands
from meterline.cli import prices
from meterline.cli import watch as watch_commands
from meterline.cli.operator import OperatorClient
from meterline.kernel.config import (
    ConfigError,
    Settings,
    TlsSettings,
    load_settings,
    token_secret,
)
from meterline.kernel.errors import MeterlineError
from meterline.kernel.logs import configure_logging
from meterline.kernel.money import (
    AmountError,
    check_currency,
    format_amount,
    format_money,
    parse_amount,
)
from meterline.kernel.tls import handshake_problem

try:  # typer vendors click from 0.2x on; before, it used click itself
    from typer._click import exceptions as click_errors
except ImportError:  # pragma: no cover
    from click import exceptions as click_errors  # type: ignore[import-not-found,no-redef,unused-ignore]

if TYPE_CHECKING:
    from meterline.cli.components import SigningKey
    from meterline.cli.stack import RunningStack

T = TypeVar("T")

DEFAULT_TARIFFS = Path(__file__).resolve().parents[2] / "rating_service" / "default_tariffs.yaml"
BAD_INPUT = 2
FAILURE = 1
# Answers that mean the request named something wrong, or something that is not there.
_BAD_INPUT_CODES = (
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.OUT_OF_RANGE,
)

app = typer.Typer(
    help="Meterline: real-time metering and prepaid billing over gRPC.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
account_app = typer.Typer(help="Open, fund and inspect accounts.", no_args_is_help=True)
credential_app = typer.Typer(
    help="Issue credentials for devices, gateways, operators.", no_args_is_help=True
)
tariffs_app = typer.Typer(help="Load and list tariffs.", no_args_is_help=True)
sessions_app = typer.Typer(help="See and stop the active sessions.", no_args_is_help=True)
certs_app = typer.Typer(help="Make TLS certificates.", no_args_is_help=True)
component_app = typer.Typer(
    help="Publish signed client components for the SDK's update check.", no_args_is_help=True
)
app.add_typer(account_app, name="account")
app.add_typer(certs_app, name="certs")
app.add_typer(credential_app, name="credential")
app.add_typer(tariffs_app, name="tariffs")
app.add_typer(sessions_app, name="sessions")
app.add_typer(sessions_app, name="session", hidden=True)  # `session stop ID` reads well too
app.add_typer(component_app, name="component")

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]


@dataclasses.dataclass
class GlobalOptions:
    rating_address: str | None = None
    billing_address: str | None = None
    service_address: str | None = None
    debug: bool = False


_options = GlobalOptions()


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"meterline {version('meterline')}")
        raise typer.Exit()


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
    debug: Annotated[
        bool, typer.Option("--debug", help="On an unexpected failure, show its traceback.")
    ] = False,
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    _options.rating_address = rating_address
    _options.billing_address = billing_address
    _options.service_address = service_address
    _options.debug = debug


# -- output and the error boundary --------------------------------------------------------


def _console() -> Console:
    """stdout for people: on a terminal its width; piped, wide enough that a table row
    stays one line."""
    console = Console(soft_wrap=False)
    if not console.is_terminal:
        console = Console(soft_wrap=False, width=250)
    return console


def _one_line(message: str) -> str:
    return "; ".join(part.strip() for part in message.strip().splitlines() if part.strip())


def _report(message: str, code: int) -> None:
    """The one line of a failure on stderr: text, or with --json a JSON object."""
    line = _one_line(message)
    if "--json" in sys.argv[1:]:
        typer.echo(json.dumps({"error": line, "exit_code": code}), err=True)
    else:
        typer.echo(f"error: {line}", err=True)


def _fail(message: str, code: int = FAILURE) -> NoReturn:
    _report(message, code)
    raise typer.Exit(code)


def _fail_with_list(headline: str, items: list[str], code: int) -> NoReturn:
    """The one failure that lists what is wrong under its line: a tariff sheet's bad rows,
    one line each, so that a sheet with many can be mended in one go."""
    if "--json" in sys.argv[1:]:
        typer.echo(json.dumps({"error": headline, "problems": items, "exit_code": code}), err=True)
    else:
        typer.echo("\n".join([f"error: {headline}", *(f"  {item}" for item in items)]), err=True)
    raise typer.Exit(code)


def run() -> None:
    """The console entry point: the CLI inside its one error boundary."""
    try:
        code = app(standalone_mode=False, prog_name="meterline")
        if code == 130:  # typer's answer to Ctrl-C
            code = FAILURE
            _report("interrupted", code)
    except click_errors.NoArgsIsHelpError:
        code = BAD_INPUT  # the help was shown
    except click_errors.UsageError as error:
        where = f" (see `{error.ctx.command_path} --help`)" if error.ctx else ""
        code = BAD_INPUT
        _report(f"{error.format_message()}{where}", code)
    except click_errors.ClickException as error:
        code = error.exit_code
        _report(error.format_message(), code)
    except (typer.Abort, KeyboardInterrupt):
        code = FAILURE
        _report("interrupted", code)
    except Exception as error:
        if _options.debug:
            traceback.print_exc()
        code = FAILURE
        _report(
            f"unexpected failure ({type(error).__name__}: {_one_line(str(error)) or 'no detail'});"
            " run with --debug (`meterline --debug COMMAND ...`) to see where",
            code,
        )
    sys.exit(code if isinstance(code, int) else 0)


def _emit(as_json: bool, data: Any, text: str) -> None:
    if as_json:
        typer.echo(json.dumps(data, indent=2, default=str))
    else:
        typer.echo(text)


def _dict(message: Message) -> dict[str, Any]:
    return MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


def _table(*headers: str) -> Table:
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    for header in headers:
        table.add_column(header, overflow="fold")
    return table


def _print_table(table: Table, empty: str) -> None:
    if table.row_count:
        _console().print(table)
    else:
        typer.echo(empty)


def _shows_progress(as_json: bool) -> bool:
    """Progress bars on a terminal only: not in --json, not when piped."""
    return not as_json and _console().is_terminal


# -- settings, secret, calls ---------------------------------------------------------------


def _settings() -> Settings:
    try:
        settings = load_settings()
    except ConfigError as error:
        _fail(str(error), code=BAD_INPUT)
    endpoints = dataclasses.replace(
        settings.endpoints,
        rating=_options.rating_address or settings.endpoints.rating,
        billing=_options.billing_address or settings.endpoints.billing,
        service=_options.service_address or settings.endpoints.service,
    )
    return dataclasses.replace(settings, endpoints=endpoints)


def _amount(text: str, what: str = "the amount") -> int:
    """A positive amount from text; a negative one is refused with a sentence (the
    commands read amounts as text, so `-5` is an amount, not an unknown option)."""
    try:
        micros = parse_amount(text)
    except AmountError as error:
        _fail(str(error), code=BAD_INPUT)
    if micros < 0:
        _fail(f"{what} {text.strip()} is negative; give it without a minus sign", code=BAD_INPUT)
    return micros


def _client_tls(settings: Settings) -> TlsSettings:
    """The TLS of the CLI's channels: the METERLINE_TLS_* settings when any is given, else
    the client side of the stack `meterline up` runs from the data folder, else TLS
    trusting the system's authorities."""
    if settings.tls.configured:
        return settings.tls
    from meterline.cli.stack import running_stack_tls

    return running_stack_tls(settings.data_dir) or settings.tls


def _run(work: Callable[[OperatorClient], Awaitable[T]]) -> T:
    """Run operator calls, turning every failure into one clear line and an exit code.
    Never makes a token secret: one made here would sign tokens no service accepts."""
    settings = _settings()
    tls = _client_tls(settings)
    try:
        secret = token_secret(settings, create=False)
    except ConfigError as error:
        _fail(str(error), code=BAD_INPUT)

    async def go() -> T:
        client = OperatorClient(settings.endpoints, secret, tls)
        try:
            return await work(client)
        finally:
            await client.close()

    try:
        return asyncio.run(go())
    except ConfigError as error:
        _fail(str(error), code=BAD_INPUT)
    except grpc.aio.AioRpcError as error:
        details = error.details() or error.code().name
        if error.code() is grpc.StatusCode.UNAVAILABLE:
            problem = handshake_problem(details, tls)
            if problem:
                _fail(f"cannot connect to the service: {problem}")
            trailing: Any = error.trailing_metadata() or ()  # the stubs type it loosely
            if "grpc-status-details-bin" in trailing:
                # Reached, and it said why it cannot serve now (its database is down, say).
                _fail(f"the service is unavailable: {details}")
            _fail(
                f"cannot reach the service ({details}); is the stack running "
                "(`meterline up`, `meterline status`) and are the addresses right?"
            )
        if error.code() is grpc.StatusCode.UNAUTHENTICATED:
            _fail(
                f"the services refused the operator token ({details}): they run with another "
                "token secret; run this where you ran `meterline up` (or set "
                "METERLINE_DATA_DIR to its data folder), or set METERLINE_TOKEN_SECRET"
            )
        _fail(details, code=BAD_INPUT if error.code() in _BAD_INPUT_CODES else FAILURE)


# -- the stack ----------------------------------------------------------------------------


class Role(enum.StrEnum):
    rating = "rating"
    billing = "billing"
    service = "service"


@app.command()
def serve(
    role: Annotated[Role, typer.Argument(help="Which service to run.")],
    as_json: JsonOption = False,
) -> None:
    """Run one service in the foreground (also: python -m rating_service | billing_manager |
    service_manager). With --json, a failure to start is reported as one JSON line."""
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
        _fail(str(error), code=BAD_INPUT)


@app.command()
def web(
    address: Annotated[
        str | None,
        typer.Option("--address", help="host:port to listen on (else METERLINE_WEB_ADDRESS)."),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Serve the end users' web page (docs/web.md) in the foreground, over HTTPS with the
    services' certificate (METERLINE_TLS_*, else the development set of `meterline up`).
    With --json, one JSON object on stdout once the page answers (its URL, address and
    pid), and a failure to start as one JSON line on stderr."""
    from meterline.web.server import PageDidNotStart, Serving
    from meterline.web.server import main as web_main

    settings = _settings()
    if address:
        settings = dataclasses.replace(
            settings, web=dataclasses.replace(settings.web, address=address)
        )

    def say_json(serving: Serving) -> None:
        import os

        _emit(
            True,
            {
                "status": "serving",
                "pid": os.getpid(),
                "web_url": serving.web_url,
                "address": serving.address,
                "ca_file": str(serving.ca_file) if serving.ca_file else None,
            },
            "",
        )

    try:
        if as_json:
            web_main(settings, ready=say_json)
        else:
            web_main(settings)
    except ConfigError as error:
        _fail(str(error), code=BAD_INPUT)
    except PageDidNotStart as error:
        _fail(str(error))
    except KeyboardInterrupt:
        pass


class _UpProgress:
    """What `up` says while it starts: a spinner per part on a terminal, lines when piped,
    nothing with --json."""

    def __init__(self, console: Console | None) -> None:
        self._console = console
        self._status: Any = None

    def begin(self, what: str) -> None:
        if self._console is None:
            return
        if self._console.is_terminal:
            self._status = self._console.status(f"starting {what}…")
            self._status.start()
        else:
            self._console.print(f"starting {what}…", highlight=False)

    def ready(self, text: str) -> None:
        if self._status is not None:
            self._status.stop()
            self._status = None
        if self._console is not None:
            self._console.print(f"  ready: {text}", highlight=False)

    def note(self, text: str) -> None:
        if self._console is not None:
            self._console.print(text, highlight=False)


class _Stopped(BaseException):
    """SIGTERM (`meterline down`) while `up` starts or serves."""


def _stop_on_sigterm() -> None:
    def stop(*_: object) -> None:
        raise _Stopped

    signal.signal(signal.SIGTERM, stop)


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
    session and stop; without, serve until Ctrl-C or `meterline down` (or until one of its
    parts stops: then it stops the rest and exits 1). One stack per data folder: its
    processes stop with it, even when it is killed."""
    from meterline.cli.demo import run_demo
    from meterline.cli.stack import LocalStack, StackError

    settings = _settings()
    configure_logging("WARNING")
    console = None if as_json else _console()
    say: Callable[[str], None] = (
        (lambda _: None) if console is None else (lambda text: console.print(text, highlight=False))
    )
    _stop_on_sigterm()
    serving = False
    try:
        with LocalStack(settings, _UpProgress(console)) as running:
            _say_stack(say, running)
            operator = OperatorClient(running.endpoints, running.secret, running.client_tls)
            with _stack_call("loading the default tariffs", running.log_dir):
                loaded = asyncio.run(_load_default_tariffs(operator))
            if loaded:
                say(f"loaded {loaded} default tariffs")
            if demo:
                with _stack_call("the demo session", running.log_dir):
                    result = asyncio.run(
                        run_demo(running.endpoints, running.secret, say, running.client_tls)
                    )
                record = result.record
                _emit(
                    as_json,
                    {
                        "account_id": result.account_id,
                        "session_id": record.session_id,
                        "used_units": record.used_units,
                        "charged_micros": record.charged_micros,
                        "charged": format_amount(record.charged_micros),
                        "balance_micros": result.balance_micros,
                        "balance": format_amount(result.balance_micros),
                        "currency": record.rate.currency,
                        "termination_reason": str(record.termination_reason),
                        "updates": result.updates,
                    },
                    "demo done",
                )
                if not keep_running:
                    return
            elif as_json:
                _emit(True, _stack_json(settings.data_dir, running), "")
            serving = True
            say("serving; Ctrl-C or `meterline down` stops it")
            _serve(running)
    except StackError as error:
        _fail(str(error))
    except (_Stopped, KeyboardInterrupt):
        if not serving:
            _fail("stopped before the stack was up")
    say("stopped")


def _say_stack(say: Callable[[str], None], running: RunningStack) -> None:
    kind = "embedded" if running.embedded else "configured"
    tls = running.client_tls
    security = "WITHOUT TLS (METERLINE_PLAINTEXT=1)" if tls.plaintext else "TLS"
    say(f"stack up ({kind} stores, {security}; logs in {running.log_dir}):")
    for role in ("rating", "billing", "service"):
        say(f"  {role:8s} {getattr(running.endpoints, role)}")
    if running.web_url:
        say(f"  {'web':8s} {running.web_url}")
    if tls.ca_file:
        say(f"clients trust the CA in {tls.ca_file}")


def _stack_json(data_dir: Path, running: RunningStack) -> dict[str, Any]:
    import os

    return {
        "status": "serving",
        "pid": os.getpid(),
        "data_dir": str(data_dir.resolve()),
        "endpoints": dataclasses.asdict(running.endpoints),
        "embedded": running.embedded,
        "processes": running.processes,
        "web_url": running.web_url,
        "ca_file": str(running.client_tls.ca_file) if running.client_tls.ca_file else None,
    }


@contextmanager
def _stack_call(what: str, log_dir: Path) -> Iterator[None]:
    """A call `up` makes to its own stack: a refusal is a StackError naming what failed,
    so the stack stops and the user reads a sentence, not a traceback."""
    from meterline.cli.stack import StackError

    try:
        yield
    except grpc.aio.AioRpcError as error:
        details = error.details() or error.code().name
        raise StackError(
            f"{what} failed ({details}), so the stack is stopped; see the logs in {log_dir} "
            "and start it again with `meterline up`"
        ) from error


def _serve(running: RunningStack) -> None:
    """Until Ctrl-C or `down`; a part that stops (a crash, an OOM kill, its embedded
    PostgreSQL killed) stops the whole stack with a non-zero exit, so that nothing serves
    half a stack and whatever supervises `up` can start it again."""
    from meterline.cli.stack import StackError, stopped_message, stopped_parts

    stop = threading.Event()
    while not stop.wait(1):
        stopped = stopped_parts(running)
        if stopped:
            raise StackError(stopped_message(running, stopped))


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


@app.command()
def status(as_json: JsonOption = False) -> None:
    """Whether a stack runs from the data folder (METERLINE_DATA_DIR): its pid, addresses
    and each service's health. Exit code 0 while one runs, 1 when none does."""
    from meterline.cli.stack import read_state, stack_owner

    data_dir = _settings().data_dir
    pid = stack_owner(data_dir)
    state = read_state(data_dir)
    if pid is None:
        lock = data_dir / "stack.lock"
        stale = state is not None or (lock.exists() and lock.stat().st_size > 0)
        note = " (a stack ended here without stopping; `meterline up` recovers it)" if stale else ""
        _emit(
            as_json,
            {"running": False, "data_dir": str(data_dir.resolve()), "stale": stale},
            f"no stack runs in {data_dir.resolve()}{note}",
        )
        raise typer.Exit(FAILURE)
    if state is None:
        _emit(
            as_json,
            {"running": True, "pid": pid, "serving": False, "data_dir": str(data_dir.resolve())},
            f"a stack (pid {pid}) is starting in {data_dir.resolve()}",
        )
        return
    health = _health(state.endpoints, state.tls)
    if as_json:
        _emit(
            True,
            {
                "running": True,
                "pid": pid,
                "data_dir": str(data_dir.resolve()),
                "started_at": state.started_at,
                "embedded": state.embedded,
                "endpoints": dataclasses.asdict(state.endpoints),
                "health": health,
                "processes": state.processes,
                "web_url": state.web_url,
            },
            "",
        )
        return
    stores = "embedded" if state.embedded else "configured"
    typer.echo(
        f"a stack (pid {pid}) runs in {data_dir.resolve()} since {state.started_at} "
        f"({stores} stores)"
    )
    for role in ("rating", "billing", "service"):
        typer.echo(f"  {role:8s} {getattr(state.endpoints, role):22s} {health[role]}")
    if state.web_url:
        typer.echo(f"  {'web':8s} {state.web_url}")


def _health(endpoints: Any, tls: TlsSettings) -> dict[str, str]:
    """Each service's answer to the standard health check: SERVING, NOT_SERVING or
    UNREACHABLE."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from meterline.kernel.tls import channel_credentials

    credentials = channel_credentials(tls)
    found = {}
    for role in ("rating", "billing", "service"):
        address = getattr(endpoints, role)
        channel = (
            grpc.insecure_channel(address)
            if credentials is None
            else grpc.secure_channel(address, credentials)
        )
        with channel:
            try:
                answer = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=3
                )
                found[role] = health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)
            except grpc.RpcError:
                found[role] = "UNREACHABLE"
    return found


@app.command()
def down(as_json: JsonOption = False) -> None:
    """Stop the stack that runs from the data folder (METERLINE_DATA_DIR): its services,
    then its stores; it is killed if it does not stop within a minute."""
    from meterline.cli.stack import StackError, stop_stack

    data_dir = _settings().data_dir
    try:
        said = stop_stack(data_dir.resolve())
    except StackError as error:
        _fail(str(error))
    _emit(as_json, {"data_dir": str(data_dir.resolve()), "result": said}, said)


# -- certificates --------------------------------------------------------------------------


@certs_app.command("dev")
def certs_dev(
    directory: Annotated[
        Path | None,
        typer.Option(
            "--dir",
            help="Where to write them (default: METERLINE_DATA_DIR/tls, the folder "
            "`meterline up` uses).",
            show_default=False,
        ),
    ] = None,
    names: Annotated[
        list[str] | None,
        typer.Option(
            "--name",
            help="Another DNS name or IP address the server certificate is valid for "
            "(repeat it); localhost, 127.0.0.1 and ::1 always are.",
            show_default=False,
        ),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace existing files.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Make a development CA, a server certificate and a client certificate (for mutual
    TLS or a device) signed by it. For a stack on this machine or a compose project, not
    for production."""
    from meterline.kernel.dev_certificates import (
        CertificatesExist,
        make_dev_certificates,
        server_names,
    )

    target = directory if directory is not None else _settings().data_dir / "tls"
    try:
        made = make_dev_certificates(target, names or (), force=force)
    except CertificatesExist as error:
        _fail(str(error))
    except OSError as error:
        _fail(f"cannot write the certificates to {target}: {error.strerror or error}")
    valid_for = ", ".join(server_names(made.server_cert))
    _emit(
        as_json,
        {
            "ca": str(made.ca),
            "server_cert": str(made.server_cert),
            "server_key": str(made.server_key),
            "client_cert": str(made.client_cert),
            "client_key": str(made.client_key),
            "server_names": server_names(made.server_cert),
        },
        "\n".join(
            [
                f"wrote {made.ca}: the CA; clients trust it (METERLINE_TLS_CA_FILE, "
                "TlsConfig(ca_file=...))",
                f"wrote {made.server_cert}: server certificate for {valid_for} "
                "(METERLINE_TLS_CERT_FILE)",
                f"wrote {made.server_key}: its private key, mode 0600 (METERLINE_TLS_KEY_FILE)",
                f"wrote {made.client_cert}: client certificate, for mutual TLS",
                f"wrote {made.client_key}: its private key, mode 0600",
            ]
        ),
    )


# -- accounts -----------------------------------------------------------------------------

# Amount arguments are read as text, so that `-5` reaches the amount check (a sentence)
# instead of being taken for an option.
_AMOUNT_ARGUMENTS = {"ignore_unknown_options": True}


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
    limit = _amount(credit_limit, "--credit-limit")
    code = currency.strip().upper()
    try:
        check_currency(code)
    except AmountError as error:
        _fail(str(error), code=BAD_INPUT)
    account = _run(lambda client: client.create_account(name, code, limit))
    _emit(as_json, _dict(account), account.account_id)


@account_app.command("fund", context_settings=_AMOUNT_ARGUMENTS)
def account_fund(
    account_id: Annotated[str, typer.Argument(help="The account.")],
    amount: Annotated[str, typer.Argument(help="Decimal amount in currency units, e.g. 1.00.")],
    key: Annotated[
        str | None,
        typer.Option("--idempotency-key", help="Repeat it to retry safely (default: new one)."),
    ] = None,
    payment_reference: Annotated[
        str | None,
        typer.Option(
            "--payment-reference",
            help="An external payment's reference: it funds once (instead of a key).",
        ),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Add prepaid funds to an account."""
    micros = _amount(amount)
    if micros == 0:
        _fail("the amount must be more than 0", code=BAD_INPUT)
    if payment_reference and key:
        _fail("give --idempotency-key or --payment-reference, not both", code=BAD_INPUT)
    idempotency_key = "" if payment_reference else key or f"cli-{uuid.uuid4().hex}"
    response = _run(
        lambda client: client.fund(account_id, micros, idempotency_key, payment_reference or "")
    )
    account = response.account
    _emit(
        as_json,
        _dict(response),
        f"funded {format_money(micros, account.currency, exact=True)}; balance "
        f"{format_money(account.balance_micros, account.currency, exact=True)} "
        f"(transaction {response.transaction.transaction_id})",
    )


@account_app.command("show")
def account_show(
    account_id: Annotated[str, typer.Argument(help="The account.")],
    as_json: JsonOption = False,
) -> None:
    """An account's balance and its ledger."""
    from meterline.billing.v1 import billing_pb2

    async def work(client: OperatorClient) -> tuple[Any, list[Any]]:
        return await client.account(account_id), await client.ledger(account_id)

    account, entries = _run(work)
    if as_json:
        _emit(True, {"account": _dict(account), "ledger": [_dict(e) for e in entries]}, "")
        return
    currency = account.currency

    def money(micros: int) -> str:
        return format_money(micros, currency, exact=True)

    typer.echo(
        "\n".join(
            [
                f"{account.display_name} ({account.account_id}), {currency}",
                f"  balance    {money(account.balance_micros):>18}",
                f"  held       {money(account.held_micros):>18}",
                f"  available  {money(account.available_micros):>18}",
            ]
        )
    )
    # The hold column is where an operator finds the HOLD_ID `account refund` takes.
    table = _table("entry", "time (UTC)", "kind", "ledger account", "amount", "hold")
    for entry in entries:
        table.add_row(
            str(entry.entry_id),
            entry.create_time.ToDatetime().strftime("%Y-%m-%d %H:%M:%S"),
            billing_pb2.TransactionKind.Name(entry.kind).removeprefix("TRANSACTION_KIND_"),
            billing_pb2.LedgerAccount.Name(entry.ledger_account).removeprefix("LEDGER_ACCOUNT_"),
            money(entry.amount_micros),
            entry.hold_id,
        )
    _print_table(table, "no ledger entries")


@account_app.command("list")
def account_list(as_json: JsonOption = False) -> None:
    """Every account with its balance, in order of their ids."""
    from meterline.billing.v1 import billing_pb2

    accounts = _run(lambda client: client.accounts())
    if as_json:
        _emit(True, [_dict(account) for account in accounts], "")
        return
    table = _table("account", "name", "currency", "balance", "held", "available", "status")
    for account in accounts:
        currency = account.currency
        table.add_row(
            account.account_id,
            account.display_name,
            currency,
            format_money(account.balance_micros, currency, exact=True),
            format_money(account.held_micros, currency, exact=True),
            format_money(account.available_micros, currency, exact=True),
            billing_pb2.AccountStatus.Name(account.status).removeprefix("ACCOUNT_STATUS_"),
        )
    _print_table(table, "no accounts")


@account_app.command("plan")
def account_plan(
    account_id: Annotated[str, typer.Argument(help="The account.")],
    plan_id: Annotated[str, typer.Argument(help="The rate plan it rates under.")],
    as_json: JsonOption = False,
) -> None:
    """Make an account rate under a plan (`default` goes back to the default plan)."""

    async def work(client: OperatorClient) -> str:
        await client.account(account_id)  # NOT_FOUND for an account that does not exist
        plans = {plan.rate_plan_id for plan in await client.rate_plans()}
        if plan_id not in plans and plan_id not in ("", prices.DEFAULT_PLAN):
            known = ", ".join(sorted(plans)) or "none yet"
            _fail(
                f"there is no rate plan {plan_id!r} (the plans: {known}); "
                "`meterline tariffs plans` lists them",
                code=BAD_INPUT,
            )
        return await client.assign_plan(account_id, plan_id)

    assigned = _run(work)
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
        str | None,
        typer.Option("--gateway", help="A gateway credential for this registered gateway."),
    ] = None,
    operator: Annotated[bool, typer.Option("--operator", help="An operator credential.")] = False,
    portal: Annotated[
        bool,
        typer.Option(
            "--portal",
            help="With --account: the end user's sign-in for the web page (a user name and "
            "a one-time password).",
        ),
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Create a credential; prints client_id and client_secret (shown only now). With
    --account ID --portal: the same device credential, printed as the user name and
    password the account's end user signs in to the web page with."""
    if portal and not account:
        _fail("--portal goes with --account ACCOUNT_ID: a sign-in is for one account", BAD_INPUT)
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
        _fail(
            "give exactly one of --account ACCOUNT_ID, --gateway NAME or --operator",
            code=BAD_INPUT,
        )

    async def work(client: OperatorClient) -> auth_pb2.CreateCredentialResponse:
        if account:
            await client.account(account)  # NOT_FOUND for an account that does not exist
            return await client.create_credential(
                auth_pb2.PRINCIPAL_KIND_DEVICE, account_id=account
            )
        if gateway:
            registered = {g.gateway_id for g in await client.gateways()}
            if gateway not in registered:
                known = ", ".join(sorted(registered)) or "none"
                _fail(
                    f"there is no gateway {gateway!r} in the registry (registered: {known}); "
                    "`meterline gateway list` lists them",
                    code=BAD_INPUT,
                )
            return await client.create_credential(auth_pb2.PRINCIPAL_KIND_GATEWAY, gateway=gateway)
        return await client.create_credential(auth_pb2.PRINCIPAL_KIND_OPERATOR)

    created = _run(work)
    if portal:
        web_address = _settings().web.address
        _emit(
            as_json,
            {
                "user": created.client_id,
                "password": created.client_secret,
                "account_id": created.account_id,
                "sign_in_url": f"https://{web_address}/sign-in",
            },
            f"user      {created.client_id}\npassword  {created.client_secret}\n"
            f"sign in at https://{web_address}/sign-in (the password is shown only now)",
        )
        return
    _emit(
        as_json,
        _dict(created),
        f"client_id     {created.client_id}\nclient_secret {created.client_secret}",
    )


# -- tariffs ------------------------------------------------------------------------------


@contextmanager
def _bar(show: bool, what: str, total: int | None) -> Iterator[Callable[[int], None]]:
    """A progress bar on the terminal (nothing otherwise); the caller advances it."""
    if not show:
        yield lambda _: None
        return
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        console=_console(),
        transient=True,
    ) as progress:
        task = progress.add_task(what, total=total)
        yield lambda done: progress.update(task, advance=done)


@tariffs_app.command("import")
def tariffs_import(
    file: Annotated[Path, typer.Argument(help="A .csv, .yaml or .yml tariff sheet.")],
    as_json: JsonOption = False,
) -> None:
    """Load a tariff sheet (and the rate plans a YAML sheet defines): every row is checked
    first, then all are written in one transaction, or none."""
    from rating_service.domain.tariff_files import TariffFileError, read_tariff_sheet
    from rating_service.grpc_api import plan_to_wire, tariff_to_wire

    show = _shows_progress(as_json)
    try:
        with _bar(show, f"checking {file.name}", None) as advance:
            sheet = read_tariff_sheet(file, on_row=advance)
    except TariffFileError as error:
        headline = error.message.splitlines()[0].rstrip(":")
        if len(error.problems) == 1:  # the file as a whole: one line says it
            where = headline.rsplit(": ", 1)[0]
            _fail(f"{where}: {error.problems[0]}; nothing imported", code=BAD_INPUT)
        _fail_with_list(headline, error.problems, BAD_INPUT)
    except MeterlineError as error:
        _fail(error.message, code=BAD_INPUT)
    with _bar(show, f"writing {len(sheet.tariffs)} tariffs", None) as advance:
        written = _run(
            lambda client: client.import_tariffs(
                [tariff_to_wire(t) for t in sheet.tariffs], [plan_to_wire(p) for p in sheet.plans]
            )
        )
        advance(written)
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
    as_json: JsonOption = False,
) -> None:
    """Write the tariffs (and, to YAML, the rate plans) to a sheet `tariffs import` reads."""
    from rating_service.domain.tariff_files import write_tariff_sheet
    from rating_service.grpc_api import plan_from_wire, tariff_from_wire

    show = _shows_progress(as_json)

    async def work(client: OperatorClient) -> tuple[list[Any], list[Any]]:
        with _bar(show, "reading tariffs", None) as advance:
            return await client.rate_plans(), await client.tariffs(True, page=advance)

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
        with _bar(show, f"writing {file.name}", len(tariffs)) as advance:
            write_tariff_sheet(
                file,
                [plan_from_wire(p) for p in plans],
                [tariff_from_wire(t) for t in tariffs],
                on_row=advance,
            )
    except MeterlineError as error:
        _fail(error.message, code=BAD_INPUT)
    except OSError as error:
        _fail(f"cannot write {file}: {error.strerror or error}", code=BAD_INPUT)
    _emit(
        as_json,
        {"file": str(file), "tariffs": len(tariffs), "rate_plans": len(plans)},
        f"exported {len(tariffs)} tariffs and {len(plans)} rate plans to {file}",
    )


@tariffs_app.command("plans")
def tariffs_plans(as_json: JsonOption = False) -> None:
    """The rate plans with their time zones and time bands."""
    plans = _run(lambda client: client.rate_plans())
    if as_json:
        _emit(True, [_dict(p) for p in plans], "")
        return
    table = _table("plan", "name", "time zone", "band", "days", "from", "to")
    for plan in plans:
        name = plan.rate_plan_id + (" (default)" if plan.is_default else "")
        table.add_row(name, plan.display_name, plan.time_zone, plan.default_band, "otherwise")
        for band in plan.time_bands:
            table.add_row("", "", "", band.band, band.days, band.start_time, band.end_time)
    _print_table(table, "no rate plans")


@tariffs_app.command("list")
def tariffs_list(
    history: Annotated[
        bool, typer.Option("--history", help="Also versions scheduled or no longer in force.")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """The tariffs in force (with --history, every version), priced as they price: per
    unit size, with increments, minimum, setup fee, time bands and volume tiers."""
    from meterline.rating.v1 import types_pb2

    tariffs = _run(lambda client: client.tariffs(include_history=history))
    if as_json:
        _emit(True, [{**_dict(t), **prices.terms_json(t)} for t in tariffs], "")
        return
    headers = ["plan", "service", "prefix", "price", "billed", "minimum", "setup fee"]
    headers += ["time bands", "volume tiers", "description"]
    if history:
        headers += ["from", "to"]
    table = _table(*headers)
    for t in tariffs:
        terms = prices.columns(t)
        row = [
            terms.plan,
            types_pb2.ServiceType.Name(t.service_type),
            t.prefix or "*",
            terms.price,
            terms.increments,
            terms.minimum,
            terms.setup_fee,
            terms.bands,
            terms.tiers,
            t.description,
        ]
        if history:
            row += [_when(t, "effective_from"), _when(t, "effective_to")]
        table.add_row(*row)
    _print_table(table, "no tariffs")


def _when(message: Any, field: str) -> str:
    if not message.HasField(field):
        return ""
    return str(getattr(message, field).ToDatetime(tzinfo=UTC).strftime("%Y-%m-%d %H:%M"))


# -- sessions and gateways ------------------------------------------------------------------


@sessions_app.command("list")
def sessions_list(
    account: Annotated[str, typer.Option("--account", help="Only this account's.")] = "",
    as_json: JsonOption = False,
) -> None:
    """The active sessions: user, service type, rate (as it prices), endpoint, duration."""
    from meterline.rating.v1 import types_pb2

    sessions = _run(lambda client: client.active_sessions(account))
    if as_json:
        _emit(
            True,
            [
                {**_dict(s), "rate": {**_dict(s.rate), **prices.terms_json(s.rate)}}
                for s in sessions
            ],
            "",
        )
        return
    table = _table(
        "session", "account", "service", "endpoint", "plan", "price", "billed", "time bands",
        "volume tiers", "running", "used",
    )  # fmt: skip
    for s in sessions:
        terms = prices.columns(s.rate)
        running = str(s.duration.ToTimedelta()).split(".")[0]
        table.add_row(
            s.session_id,
            s.account_id,
            types_pb2.ServiceType.Name(s.service_type),
            s.endpoint,
            terms.plan,
            terms.price,
            terms.increments,
            terms.bands,
            terms.tiers,
            running,
            prices.quantity(s.rate.unit, s.used_units),
        )
    _print_table(table, "no active sessions")


@sessions_app.command("stop")
def sessions_stop(
    session_id: Annotated[str, typer.Argument(help="The session.")],
    as_json: JsonOption = False,
) -> None:
    """End a session as an operator: it is settled at the usage last reported, and its
    service record is printed."""
    from meterline.rating.v1 import types_pb2
    from meterline.service.v1 import service_pb2

    record = _run(lambda client: client.stop_session(session_id))
    if as_json:
        _emit(
            True,
            {**_dict(record), "rate": {**_dict(record.rate), **prices.terms_json(record.rate)}},
            "",
        )
        return
    reason = service_pb2.TerminationReason.Name(record.termination_reason)
    price = prices.columns(record.rate)
    # A banded rate is charged at its band's price: name the bands, not the base alone.
    bands = f" ({price.bands})" if price.bands else ""
    typer.echo(
        f"{record.session_id}: {types_pb2.ServiceType.Name(record.service_type)} to "
        f"{record.endpoint}, {prices.quantity(record.rate.unit, record.used_units)}, charged "
        f"{format_money(record.charged_micros, record.rate.currency)} at "
        f"{price.price}{bands}; ended by "
        f"{reason.removeprefix('TERMINATION_REASON_')}"
    )


# -- client components -------------------------------------------------------------------


def _signing_key() -> SigningKey:
    from meterline.cli.components import signing_key

    settings = _settings()
    try:
        # Only an installation's folder gets a signing key made: one made elsewhere would
        # be a key no device pins.
        if not settings.components.signing_key_file:
            token_secret(settings, create=False)
        signer = signing_key(settings)
    except ConfigError as error:
        _fail(str(error), code=BAD_INPUT)
    if signer.created:
        typer.echo(
            f"made the component signing key {signer.path} (key {signer.key_id}); keep it "
            "safe and back it up: devices pin its public half",
            err=True,
        )
    return signer


@component_app.command("publish")
def component_publish(
    file: Annotated[Path, typer.Argument(help="The component file (any format).")],
    version: Annotated[
        str, typer.Option("--version", help="Its version, e.g. 1.4.0 or 1.4.0-rc.1.")
    ],
    name: Annotated[str, typer.Option("--name", help="The component's name.")] = "client",
    platform: Annotated[
        str, typer.Option("--platform", help='What it runs on, e.g. linux-x86_64; "any" for all.')
    ] = "any",
    as_json: JsonOption = False,
) -> None:
    """Sign a component with the installation's key and publish it to the service
    manager. Publishing the same version again with the same file changes nothing; with
    another file it is refused."""
    from meterline.cli.components import publish_requests, signed_manifest

    if not file.is_file():
        _fail(f"{file} is not a file", code=BAD_INPUT)
    signer = _signing_key()
    try:
        manifest = signed_manifest(signer, file, name, platform, version)
    except ConfigError as error:
        _fail(str(error), code=BAD_INPUT)
    response = _run(lambda client: client.publish_component(publish_requests(manifest, file)))
    component = response.component
    what = f"{component.name} {component.version} for {component.platform}"
    _emit(
        as_json,
        {**_dict(component), "created": response.created},
        (f"published {what}" if response.created else f"{what} was already published")
        + f": {component.size_bytes} bytes, sha256 {component.sha256}, signed by key "
        f"{component.signing_key_id}",
    )


@component_app.command("key")
def component_key(
    pem: Annotated[bool, typer.Option("--pem", help="Print it as a PEM PUBLIC KEY block.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Print the public key devices pin to verify components (base64 of its 32 raw bytes,
    or PEM). Makes the installation's signing key on first use."""
    signer = _signing_key()
    _emit(
        as_json,
        {
            "public_key": signer.public_base64,
            "public_key_pem": signer.public_pem,
            "key_id": signer.key_id,
            "key_file": str(signer.path),
        },
        signer.public_pem.strip() if pem else signer.public_base64,
    )


@component_app.command("list")
def component_list(
    name: Annotated[str, typer.Option("--name", help="Only this component.")] = "",
    platform: Annotated[str, typer.Option("--platform", help="Only this platform.")] = "",
    as_json: JsonOption = False,
) -> None:
    """The published components, newest version first."""
    components = _run(lambda client: client.components(name, platform))
    lines = [
        f"{c.name:20s} {c.platform:16s} {c.version:14s} {c.size_bytes:>12d} B  "
        f"{c.publish_time.ToDatetime().strftime('%Y-%m-%d %H:%M:%S')}  "
        f"sha256 {c.sha256[:16]}…  key {c.signing_key_id}"
        for c in components
    ]
    _emit(as_json, [_dict(c) for c in components], "\n".join(lines) or "no components")


gateway_commands.register(
    app, account_app, gateway_commands.Cli(_run, _emit, _fail, _table, _print_table)
)
money_commands.register(
    app, account_app, gateway_commands.Cli(_run, _emit, _fail, _table, _print_table)
)
invoice_commands.register(app, gateway_commands.Cli(_run, _emit, _fail, _table, _print_table))
watch_commands.register(app, watch_commands.Tools(_settings, _client_tls, _fail))

if __name__ == "__main__":  # pragma: no cover
    run()
