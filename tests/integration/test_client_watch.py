"""`meterline client watch` against a real stack: in a real pseudo-terminal (pexpect, a
fixed size), the screen shows a session's charge rising while the SDK meters it, then the
session ended with its reason and exact charge; the voucher key tops the account up and
the balance rises; `q` leaves with exit 0 and the terminal as it was. With --json, the
same events as JSON lines, ending with the session's ended event; Ctrl-C leaves with 0."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import pty
import re
import signal
import struct
import sys
import termios
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from pexpect.fdpexpect import fdspawn  # type: ignore[import-untyped]

import client_sdk.sync
from client_sdk import (
    AccountEvent,
    ClientConfig,
    MeterlineClient,
    RetryConfig,
    ServersUnavailable,
    ServiceSession,
    ServiceType,
)
from client_sdk.watch import ENDED_WHILE_AWAY
from meterline.billing.v1 import billing_pb2
from meterline.kernel.money import format_money
from meterline.kernel.processes import free_port
from tests.support import tls
from tests.support.clients import OPERATOR, Stubs, device_credential, ensure_tariff, new_account
from tests.support.stack import InProcessStack
from tests.support.tcp_proxy import TcpProxy

pytestmark = [pytest.mark.integration, pytest.mark.timeout(40)]

ROOT = Path(__file__).resolve().parents[2]

PREFIX = "+3397"
ENDPOINT = "+33971234"
PRICE = 10_000
"""0.01 EUR a second, billed per second: every unit raises the charge by one cent."""
FUNDED = 1_000_000
VOUCHER = 2_000_000
GAP = rb"(?:\s|\x1b\[[0-9;?]*[A-Za-z])+"
"""Between two cells of a row: spaces, and maybe the codes of a style."""
ROW = re.escape(ENDPOINT.encode()) + GAP + rb"\d+:\d\d:\d\d" + GAP + rb"\d+ s" + GAP
CHARGE = re.compile(ROW + rb"(\d+\.\d\d) EUR")


def watch_env(stack: InProcessStack, client_id: str, secret: str) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("METERLINE_TLS_", "METERLINE_CLIENT_"))
    }
    return {
        **env,
        "METERLINE_BILLING_ADDRESS": stack.endpoints.billing,
        "METERLINE_SERVICE_ADDRESS": stack.endpoints.service,
        "METERLINE_CLIENT_ID": client_id,
        "METERLINE_CLIENT_SECRET": secret,
        "TERM": "xterm-256color",
        **tls.client_environment(),
    }


def sdk_config(stack: InProcessStack, client_id: str, secret: str) -> ClientConfig:
    return ClientConfig(
        service_addresses=[stack.endpoints.service],
        auth_addresses=[stack.endpoints.billing],
        client_id=client_id,
        client_secret=secret,
        report_interval=0.25,
        tls=tls.client_tls(),
    )


@pytest.fixture
async def device(api: Stubs) -> AsyncIterator[tuple[str, str, str]]:
    await ensure_tariff(api.rating, PREFIX, PRICE)
    account_id = await new_account(api.billing, FUNDED)
    client_id, secret = await device_credential(api.auth, account_id)
    yield account_id, client_id, secret


class Terminal:
    """`meterline client watch` in a real pseudo-terminal of 40 x 160 that is its controlling
    terminal (`setsid -c`: Ctrl-C typed there interrupts it, as at a keyboard), read and
    typed into through pexpect. The process is started by asyncio (fork and exec with no
    Python between them: the in-process servers' gRPC threads are never forked into a
    child that runs)."""

    def __init__(self, process: asyncio.subprocess.Process, master: int, slave: int) -> None:
        self.process = process
        self.slave = slave
        self.screen = fdspawn(master, timeout=15)

    @classmethod
    async def start(cls, stack: InProcessStack, client_id: str, secret: str) -> Terminal:
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))
        process = await asyncio.create_subprocess_exec(
            "setsid", "-c", "-w", sys.executable, "-m", "meterline.cli.main", "client", "watch",
            stdin=slave, stdout=slave, stderr=slave, env=watch_env(stack, client_id, secret),
        )  # fmt: skip
        return cls(process, master, slave)

    async def expect(self, pattern: bytes | re.Pattern[bytes]) -> re.Match[bytes]:
        await self.screen.expect(pattern, async_=True)
        match: re.Match[bytes] = self.screen.match
        return match

    def type(self, keys: str) -> None:
        self.screen.send(keys)

    def modes(self) -> tuple[bool, bool]:
        """Whether the terminal reads lines (canonical mode) and echoes what is typed."""
        flags = termios.tcgetattr(self.slave)[3]
        return bool(flags & termios.ICANON), bool(flags & termios.ECHO)

    async def left_cleanly(self) -> None:
        """The view has exited with 0 and left the terminal as it found it."""
        assert await asyncio.wait_for(self.process.wait(), 15) == 0
        assert self.modes() == (True, True)

    async def close(self) -> None:
        if self.process.returncode is None:
            self.process.kill()
            await self.process.wait()
        with contextlib.suppress(OSError):
            self.screen.close()
        os.close(self.slave)


async def metering(client: MeterlineClient) -> ServiceSession:
    """A voice call through the SDK whose usage grows four seconds per real second."""
    started = time.monotonic()
    return await client.start_service(
        ServiceType.VOICE, ENDPOINT, usage_source=lambda: int((time.monotonic() - started) * 4)
    )


def amount(match: re.Match[bytes]) -> Decimal:
    return Decimal(match.group(1).decode())


async def test_the_screen_shows_the_charge_rising_the_end_and_a_top_up(
    stack: InProcessStack, api: Stubs, device: tuple[str, str, str]
) -> None:
    _, client_id, secret = device
    terminal = await Terminal.start(stack, client_id, secret)
    try:
        assert terminal.modes() == (True, True)
        await terminal.expect(rb"no running services")
        await terminal.expect(rb"r redeem a voucher")
        assert terminal.modes() == (False, False)  # keys one at a time, not echoed
        async with MeterlineClient(sdk_config(stack, client_id, secret)) as client:
            session = await metering(client)
            first = amount(await terminal.expect(CHARGE))
            charges = [first]
            while charges[-1] <= first and len(charges) < 20:
                charges.append(amount(await terminal.expect(CHARGE)))
            assert charges[-1] > first, charges  # the screen redrawn with a higher charge
            assert charges == sorted(charges)
            record = await session.stop()

        charged = format_money(record.charged_micros, "EUR")
        assert record.charged_micros >= charges[-1] * 1_000_000
        await terminal.expect(
            re.escape(f"{ENDPOINT} ended (stopped by the device), charged {charged}.".encode())
        )
        balance = format_money(FUNDED - record.charged_micros, "EUR")
        await terminal.expect(rb"balance " + GAP + re.escape(balance.encode()))

        codes = await api.billing.CreateVouchers(
            billing_pb2.CreateVouchersRequest(count=1, amount_micros=VOUCHER, currency="EUR"),
            metadata=OPERATOR,
        )
        terminal.type("r")
        await terminal.expect(rb"voucher code:")
        terminal.type(codes.codes[0].lower())  # as a person may type it
        terminal.type("\r")
        topped_up = format_money(FUNDED - record.charged_micros + VOUCHER, "EUR")
        await terminal.expect(re.escape(f"voucher redeemed: balance now {topped_up}".encode()))
        # ... and the next screen's balance is the new one.
        await terminal.expect(rb"balance " + GAP + re.escape(topped_up.encode()))
        terminal.type("q")
        await terminal.left_cleanly()
    finally:
        await terminal.close()


async def test_a_refused_voucher_is_a_notice_and_ctrl_c_leaves_cleanly(
    stack: InProcessStack, device: tuple[str, str, str]
) -> None:
    _, client_id, secret = device
    terminal = await Terminal.start(stack, client_id, secret)
    try:
        await terminal.expect(rb"r redeem a voucher")
        terminal.type("r")
        await terminal.expect(rb"voucher code:")
        terminal.type("ZZZZ-ZZZZ-ZZZZ-ZZZZ\r")
        await terminal.expect(rb"voucher refused: ")
        await terminal.expect(rb"balance " + GAP + re.escape(format_money(FUNDED, "EUR").encode()))
        terminal.type("\x03")  # Ctrl-C, as typed: the terminal sends SIGINT
        await terminal.left_cleanly()
    finally:
        await terminal.close()


async def test_json_lines_carry_the_events_until_the_end(
    stack: InProcessStack, api: Stubs, device: tuple[str, str, str]
) -> None:
    _, client_id, secret = device
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "meterline.cli.main",
        "client",
        "watch",
        "--json",
        env=watch_env(stack, client_id, secret),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None and process.stderr is not None
    try:
        snapshot = json.loads(await asyncio.wait_for(process.stdout.readline(), 15))
        assert snapshot["type"] == "snapshot"
        assert (snapshot["balance_micros"], snapshot["currency"]) == (FUNDED, "EUR")
        assert snapshot["sessions"] == []
        await asyncio.sleep(0.5)  # the watch opens after the snapshot
        events: list[dict[str, Any]] = []
        async with MeterlineClient(sdk_config(stack, client_id, secret)) as client:
            session = await metering(client)
            while len({e["charged_micros"] for e in events}) < 3:
                events.append(json.loads(await asyncio.wait_for(process.stdout.readline(), 10)))
            record = await session.stop()
        while not events[-1]["ended"]:
            events.append(json.loads(await asyncio.wait_for(process.stdout.readline(), 10)))
        process.send_signal(signal.SIGINT)
        _, err = await asyncio.wait_for(process.communicate(), 15)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0, err.decode()
    assert {e["type"] for e in events} == {"event"}
    assert {e["session_id"] for e in events} == {session.session_id}
    charges = [e["charged_micros"] for e in events]
    assert charges == sorted(charges) and charges[0] < charges[-1]
    last = events[-1]
    assert (last["ended"], last["reason"]) == (True, "CLIENT_STOP")
    assert last["charged_micros"] == record.charged_micros
    assert last["charged"] == f"{Decimal(record.charged_micros) / 1_000_000:.2f}"
    assert set(last) == {
        "type", "time", "account_id", "session_id", "currency", "charged_micros", "charged",
        "available_micros", "available", "used_units", "time_left_seconds", "low_balance",
        "final_units", "ended", "reason", "message",
    }  # fmt: skip


async def test_the_sdks_account_watch_reopens_after_the_connection_breaks(
    stack: InProcessStack, device: tuple[str, str, str]
) -> None:
    """What the view is built on: `MeterlineClient.watch_account` goes on after its
    connection is cut (the events after it arrive), and gives up with ServersUnavailable
    when the server stays unreachable."""
    _, client_id, secret = device
    port = int(stack.endpoints.service.rsplit(":", 1)[1])
    proxy = TcpProxy(port)
    direct = sdk_config(stack, client_id, secret)
    through_proxy = replace(
        direct,
        service_addresses=[f"127.0.0.1:{proxy.port}"],
        retry=RetryConfig(initial_backoff=0.05, max_backoff=0.2, max_attempts=100),
    )
    try:
        async with (
            MeterlineClient(through_proxy) as watcher,
            MeterlineClient(direct) as device_client,
        ):
            events = watcher.watch_account()
            pending = asyncio.ensure_future(anext(events))
            session = await device_client.start_service(ServiceType.VOICE, ENDPOINT)

            async def next_event(used: int) -> AccountEvent:
                """Report more usage until the watch hears of it."""
                while True:
                    used += 1
                    await session.report(used)
                    done, _ = await asyncio.wait({pending}, timeout=0.3)
                    if done:
                        return pending.result()

            before = await asyncio.wait_for(next_event(0), 10)
            proxy.pause()  # every connection cut; the port refuses
            await asyncio.sleep(0.5)
            proxy.resume(port)
            pending = asyncio.ensure_future(anext(events))
            after = await asyncio.wait_for(next_event(session.used_units + 10), 15)
            assert after.used_units > before.used_units + 10  # an event from after the cut
            assert after.charged_micros == after.used_units * PRICE
            await session.stop()
            await events.aclose()

            proxy.pause()
            give_up = RetryConfig(initial_backoff=0.05, max_backoff=1.0, max_attempts=3)
            async with MeterlineClient(replace(through_proxy, retry=give_up)) as stranded:
                with pytest.raises(ServersUnavailable):
                    await asyncio.wait_for(anext(stranded.watch_account()), 15)
    finally:
        proxy.close()


async def test_a_session_that_ended_while_the_watch_was_away_is_ended_on_its_return(
    stack: InProcessStack, device: tuple[str, str, str]
) -> None:
    """The server does not replay what happened while the watch reconnected: after the
    reopening, the watch reads the running services again and ends the session that
    stopped in the gap itself (reason unknown), with the available credit read afresh."""
    _, client_id, secret = device
    port = int(stack.endpoints.service.rsplit(":", 1)[1])
    proxy = TcpProxy(port)
    direct = sdk_config(stack, client_id, secret)
    through_proxy = replace(
        direct,
        service_addresses=[f"127.0.0.1:{proxy.port}"],
        retry=RetryConfig(initial_backoff=0.05, max_backoff=0.2, max_attempts=100),
    )
    try:
        async with (
            MeterlineClient(through_proxy) as watcher,
            MeterlineClient(direct) as device_client,
        ):
            events = watcher.watch_account()
            pending = asyncio.ensure_future(anext(events))
            session = await device_client.start_service(ServiceType.VOICE, ENDPOINT)
            used = 0
            while not pending.done():
                used += 1
                await session.report(used)
                await asyncio.wait({pending}, timeout=0.3)
            seen = pending.result()
            assert (seen.session_id, seen.ended) == (session.session_id, False)

            proxy.pause()  # the watch is cut off ...
            await asyncio.sleep(0.3)
            record = await session.stop()  # ... while the session ends
            proxy.resume(port)

            async def its_end() -> AccountEvent:
                while True:
                    event = await anext(events)
                    if event.ended:
                        return event
                    seen_last = event  # a usage event sent before the cut
                    assert seen_last.session_id == session.session_id

            ended = await asyncio.wait_for(its_end(), 15)
            await events.aclose()
    finally:
        proxy.close()
    assert ended.session_id == session.session_id
    assert ended.termination_reason is None and ended.message == ENDED_WHILE_AWAY
    assert ended.available_micros == FUNDED - record.charged_micros  # read afresh
    assert 0 < ended.charged_micros <= record.charged_micros  # the last one it saw
    assert ended.used_units <= record.used_units


async def test_the_device_makers_example_draws_the_same_view(
    stack: InProcessStack, device: tuple[str, str, str]
) -> None:
    """docs/examples/live_view.py, as docs/live-view.md shows it: the SDK's events alone
    draw the charge rising and the end."""
    _, client_id, secret = device
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "docs/examples/live_view.py",
        f"--client-id={client_id}",
        f"--client-secret={secret}",
        f"--ca={tls.dev_certificates().ca}",
        f"--service={stack.endpoints.service}",
        f"--billing={stack.endpoints.billing}",
        "--plain",
        "--seconds=6",
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    first = await asyncio.wait_for(process.stdout.readline(), 15)
    assert first.decode().startswith("balance 1.00 EUR   available 1.00")
    await asyncio.sleep(0.5)
    async with MeterlineClient(sdk_config(stack, client_id, secret)) as client:
        session = await metering(client)
        await asyncio.sleep(1.5)
        record = await session.stop()
    out, err = await asyncio.wait_for(process.communicate(), 15)
    assert process.returncode == 0, err.decode()
    text = first.decode() + out.decode()
    charges = [Decimal(c) for c in re.findall(rf"{re.escape(ENDPOINT)} .* (\d+\.\d+) EUR", text)]
    assert len(set(charges)) >= 2 and charges == sorted(charges), text
    assert "ended (CLIENT_STOP)" in text
    assert f"{ENDPOINT} ended: The service was stopped by the client." in text
    assert charges[-1] == Decimal(record.charged_micros) / 1_000_000


async def test_the_blocking_twin_lists_and_watches_too(
    stack: InProcessStack, device: tuple[str, str, str]
) -> None:
    _, client_id, secret = device
    config = sdk_config(stack, client_id, secret)

    def first_event() -> tuple[AccountEvent, list[str]]:
        with client_sdk.sync.MeterlineClient(config) as blocking:
            events = blocking.watch_account()
            event = next(events)
            events.close()
            return event, [s.session_id for s in blocking.active_services()]

    watching = asyncio.ensure_future(asyncio.to_thread(first_event))
    async with MeterlineClient(config) as client:
        session = await client.start_service(ServiceType.VOICE, ENDPOINT)
        used = 0
        while not watching.done():
            used += 1
            await session.report(used)
            await asyncio.wait({watching}, timeout=0.3)
        event, running = await watching
        await session.stop()
    assert event.session_id == session.session_id
    assert event.charged_micros == event.used_units * PRICE and event.currency == "EUR"
    assert running == [session.session_id]


@pytest.mark.parametrize(
    ("secret", "words"),
    [
        ("not-the-secret", "error: the credential was refused: "),
        ("", "error: give the credential: --client-id and --client-secret"),
    ],
)
async def test_a_bad_credential_is_one_line_and_exit_code_2(
    stack: InProcessStack, device: tuple[str, str, str], secret: str, words: str
) -> None:
    _, client_id, _ = device
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "meterline.cli.main",
        "client",
        "watch",
        env=watch_env(stack, client_id, secret),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 2, (out, err)
    assert err.decode().startswith(words) and len(err.decode().strip().splitlines()) == 1, err


async def test_unreachable_servers_are_one_line_and_exit_code_1(
    stack: InProcessStack, device: tuple[str, str, str]
) -> None:
    """No SDK warning (a server failed, its circuit opens) comes before the one line: with
    --json stderr is one JSON object a script can read."""
    _, client_id, secret = device
    closed = f"127.0.0.1:{free_port()}"
    env = {
        **watch_env(stack, client_id, secret),
        "METERLINE_BILLING_ADDRESS": closed,
        "METERLINE_SERVICE_ADDRESS": closed,
    }
    process = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "meterline.cli.main", "client", "watch", "--json"),
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 90)
    assert process.returncode == 1, (out, err)
    (line,) = err.decode().strip().splitlines()
    assert json.loads(line)["error"].startswith("cannot reach the services"), line
