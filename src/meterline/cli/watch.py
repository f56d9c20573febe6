"""`meterline client watch`: an end user's account, live, in the terminal, signed in with
the device (or portal) credential of that account. Built on the SDK only
(`MeterlineClient.balance`, `active_services`, `watch_account`, `redeem_voucher`): it is
the example of docs/live-view.md for device makers' own screens.

The screen (rich `Live`, redrawn in place on every event and twice a second for the
clocks): balance and available credit, each running session's charge, usage, duration
and time left, the last notices; `r` opens the voucher prompt (type the code, Enter
redeems, Esc cancels), `q` or Ctrl-C leaves (exit 0, the terminal as it was). With
--json, one JSON object per line instead: a snapshot, then one per event."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import signal
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.live import Live

from client_sdk import (
    AccountEvent,
    AuthenticationFailed,
    ClientConfig,
    MeterlineClient,
    MeterlineClientError,
    ServersUnavailable,
)
from meterline.cli.demo import sdk_tls
from meterline.cli.live_view import LiveView, event_json
from meterline.kernel.config import Settings, TlsSettings

BAD_INPUT = 2
TICK = 0.5
"""Seconds between redraws without events (durations and times left count on)."""


@dataclass(frozen=True)
class Tools:
    """What main.py lends: its settings (addresses), the CLI's TLS and its error boundary."""

    settings: Callable[[], Settings]
    client_tls: Callable[[Settings], TlsSettings]
    fail: Callable[..., NoReturn]


_tools: Tools | None = None

client_app = typer.Typer(
    help="What an end user's device sees: its account, live.", no_args_is_help=True
)


def register(app: typer.Typer, tools: Tools) -> None:
    """Add `client` (with `watch`)."""
    global _tools
    _tools = tools
    app.add_typer(client_app, name="client")


def _use() -> Tools:
    assert _tools is not None, "meterline.cli.watch.register was not called"
    return _tools


def _now() -> datetime:
    return datetime.now(UTC)


@client_app.command("watch")
def watch(
    client_id: Annotated[
        str | None,
        typer.Option(
            "--client-id",
            envvar="METERLINE_CLIENT_ID",
            help="The device or portal credential's id (`meterline credential issue "
            "--account ...`).",
            show_default=False,
        ),
    ] = None,
    client_secret: Annotated[
        str | None,
        typer.Option(
            "--client-secret",
            envvar="METERLINE_CLIENT_SECRET",
            help="Its secret (better in METERLINE_CLIENT_SECRET than on the command line).",
            show_default=False,
        ),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the event stream as JSON lines.")
    ] = False,
) -> None:
    """The account of a device credential, live: balance, each running service's charge,
    usage, duration and time left, and the last notices; `r` redeems a voucher, `q` or
    Ctrl-C leaves. With --json, one JSON object per line (a snapshot, then each event)."""
    tools = _use()
    if not client_id or not client_secret:
        tools.fail(
            "give the credential: --client-id and --client-secret, or METERLINE_CLIENT_ID "
            "and METERLINE_CLIENT_SECRET (`meterline credential issue --account ACCOUNT_ID` "
            "makes one)",
            code=BAD_INPUT,
        )
    settings = tools.settings()
    try:
        config = ClientConfig(
            service_addresses=[settings.endpoints.service],
            auth_addresses=[settings.endpoints.billing],
            client_id=client_id,
            client_secret=client_secret,
            tls=sdk_tls(tools.client_tls(settings)),
        )
    except ValueError as error:
        tools.fail(str(error), code=BAD_INPUT)
    # The SDK's own warnings (a server failed, its circuit opens) would tear the screen
    # or the JSON lines: what they come to is said once, below.
    logging.getLogger("client_sdk").addHandler(logging.NullHandler())
    logging.getLogger("client_sdk").propagate = False
    try:
        asyncio.run(_watch(config, as_json))
    except BrokenPipeError:  # --json piped into a reader that left (`| head`): done
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except AuthenticationFailed as error:
        tools.fail(f"the credential was refused: {error.message}", code=BAD_INPUT)
    except ServersUnavailable as error:
        tools.fail(
            f"cannot reach the services ({error.message}); is the stack running "
            "(`meterline status`) and are the addresses right?"
        )
    except MeterlineClientError as error:
        tools.fail(error.message)


async def _watch(config: ClientConfig, as_json: bool) -> None:
    """The view until it fails, or Ctrl-C, SIGTERM or `q` stops it (at any moment, the
    sign-in included)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        await _until_stopped(asyncio.create_task(_signed_in(config, as_json, stop)), stop)
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)


async def _signed_in(config: ClientConfig, as_json: bool, stop: asyncio.Event) -> None:
    async with MeterlineClient(config) as client:
        view = LiveView.of(await client.balance())
        view.add_services(await client.active_services())
        if as_json:
            await _json_lines(client, view)
        else:
            await _screen(client, view, stop)


async def _until_stopped(work: asyncio.Task[None], stop: asyncio.Event) -> None:
    """Run `work` until it ends (its failure is raised) or `stop` is set (it is cancelled,
    and its cleanup awaited)."""
    stopping = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({work, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (work, stopping):
            task.cancel()
        await asyncio.gather(work, stopping, return_exceptions=True)
    failure = None if work.cancelled() else work.exception()
    if failure is not None:
        raise failure


def _write(line: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(line) + "\n")
    sys.stdout.flush()


async def _json_lines(client: MeterlineClient, view: LiveView) -> None:
    _write(view.snapshot_json(_now()))
    async for event in client.watch_account():
        _write(event_json(event))


class _Screen:
    """The live screen's moving parts: the events, the clock, the keys."""

    def __init__(
        self, client: MeterlineClient, view: LiveView, live: Live, stop: asyncio.Event
    ) -> None:
        self.client = client
        self.view = view
        self.live = live
        self.stop = stop
        self._chores: set[asyncio.Task[None]] = set()

    def redraw(self) -> None:
        self.live.update(self.view.render(_now()), refresh=True)

    def later(self, work: Callable[[], Any]) -> None:
        task = asyncio.create_task(work())
        self._chores.add(task)
        task.add_done_callback(self._chores.discard)

    async def follow(self) -> None:
        async for event in self.client.watch_account():
            self.view.apply(event)
            self.redraw()
            self._after(event)

    def _after(self, event: AccountEvent) -> None:
        if self.view.unknown_sessions():
            self.later(self._details)
        if event.ended:
            self.later(self._balance)

    async def _details(self) -> None:
        with contextlib.suppress(MeterlineClientError):
            self.view.add_services(await self.client.active_services())
            self.redraw()

    async def _balance(self) -> None:
        with contextlib.suppress(MeterlineClientError):
            self.view.set_balance(await self.client.balance())
            self.redraw()

    async def tick(self) -> None:
        while True:
            await asyncio.sleep(TICK)
            self.redraw()

    def keys(self, text: str) -> None:
        if text.startswith("\x1b") and len(text) > 1:
            return  # an arrow or function key's escape sequence
        for key in text:
            if self.view.voucher is None:
                if key in ("q", "Q", "\x04"):
                    self.stop.set()
                elif key in ("r", "R"):
                    self.view.voucher = ""
            else:
                code = self.view.key(key)
                if code:
                    self.later(functools.partial(self._redeem, code))
        self.redraw()

    async def _redeem(self, code: str) -> None:
        self.view.note(_now(), "redeeming the voucher…")
        self.redraw()
        try:
            balance = await self.client.redeem_voucher(code)
        except MeterlineClientError as error:
            self.view.note(_now(), f"voucher refused: {error.message}")
        else:
            self.view.set_balance(balance)
            self.view.note(
                _now(), f"voucher redeemed: balance now {self.view.money(balance.balance_micros)}"
            )
        self.redraw()

    async def close(self) -> None:
        for task in list(self._chores):
            task.cancel()
        await asyncio.gather(*self._chores, return_exceptions=True)


@contextlib.contextmanager
def _keyboard(on_keys: Callable[[str], None]) -> Iterator[None]:
    """Keys one at a time, unechoed (cbreak: Ctrl-C still interrupts), for as long as the
    block runs; the terminal's settings are restored however it ends. Nothing without a
    terminal on stdin."""
    fd = sys.stdin.fileno() if sys.stdin is not None else -1
    if fd < 0 or not os.isatty(fd):
        yield
        return
    import termios  # Unix terminals; imported here so the CLI loads without them
    import tty

    saved = termios.tcgetattr(fd)
    loop = asyncio.get_running_loop()

    def readable() -> None:
        data = os.read(fd, 64)
        if not data:
            loop.remove_reader(fd)
            return
        on_keys(data.decode(errors="replace"))

    try:
        tty.setcbreak(fd, termios.TCSANOW)  # keys typed ahead are kept, not flushed
        loop.add_reader(fd, readable)
        yield
    finally:
        loop.remove_reader(fd)
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


async def _screen(client: MeterlineClient, view: LiveView, stop: asyncio.Event) -> None:
    live = Live(view.render(_now()), console=Console(), auto_refresh=False)
    screen = _Screen(client, view, live, stop)
    # Keys are read from before the first screen is drawn (what is typed from then on
    # counts), and the terminal is given back after the last.
    with _keyboard(screen.keys), live:
        ticking = asyncio.create_task(screen.tick())
        try:
            await screen.follow()
        finally:
            ticking.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticking
            await screen.close()
            screen.redraw()
