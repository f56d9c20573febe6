"""Money movements through the billing manager: Reserve, Capture, GetAccount and
FundAccount round trips, sequential and concurrent, beside a bare gRPC unary echo in the
same run; and the same calls on an account whose ledger holds 100,000 entries.

    python bench/billing.py [--calls 1000] [--concurrency 20] [--entries 100000]
                            [--phase-seconds 20] [--profile-seconds 0]

The billing manager runs as its own process (`python -m billing_manager`) on a database
of its own in the PostgreSQL the tests use (or the embedded default), plaintext on
127.0.0.1 (`METERLINE_PLAINTEXT=1`), like the echo. The echo is a grpc.aio server of the
same server options, run as this script with `--echo-server PORT`: a unary method that
answers with as many bytes as a Hold. Both get the same authorization metadata.

1. Sequential: one caller, one call at a time: --calls Reserve (each on a funded account
   of its own), a Capture of each of those holds, GetAccount and FundAccount, and as many
   echo calls; p50 and p99 of each.
2. Concurrent: --concurrency callers over one channel, each on an account of its own, each
   doing Reserve then Capture, and GetAccount; then the same callers all on ONE account
   (every movement waits for that account's row lock); beside as many echo callers.
3. A long ledger: --entries ledger entries are written on one account (as FundAccount
   writes them, in one SQL statement), then sequential GetAccount and Reserve+Capture on
   it, beside the same calls on a fresh account. The time of a call should not grow with
   the ledger.

With --profile-seconds N, py-spy (from the virtualenv) records the billing manager for N
seconds under the concurrent Reserve+Capture load, into billing-profile.raw in --log-dir
or the current folder, and the frames most often on the stack are printed.

Every measurement stops after its count or --phase-seconds, whichever comes first. A
failed call is counted and printed, not raised: this is a benchmark, not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import grpc
import psutil
import psycopg
from bench.common import Failures, ms, percentile, serve_until_stopped
from tests.support.stack import TOKEN_SECRET, metadata, operator_token
from tests.support.stores import test_stores

from meterline.billing.v1 import billing_pb2, billing_pb2_grpc
from meterline.kernel import runtime
from meterline.kernel.db import libpq_dsn
from meterline.kernel.grpc_server import CHANNEL_OPTIONS, SERVER_OPTIONS
from meterline.kernel.processes import free_port, spawn_service, stop_processes, wait_until_serving

ECHO_SERVICE = "bench.Echo"
ECHO_METHOD = f"/{ECHO_SERVICE}/Unary"
REPLY_BYTES = "x-reply-bytes"
FUNDING = 10**15  # micros per account: no reserve is ever refused for funds
HOLD = 1_000  # micros per reserve
CAPTURED = 600  # micros captured of each hold

Metadata = tuple[tuple[str, str], ...]


# --- the echo server process -------------------------------------------------------


async def serve_echo(port: int) -> None:
    async def echo(request: bytes, context: Any) -> bytes:
        size = dict(context.invocation_metadata() or ()).get(REPLY_BYTES)
        return b"x" * int(size) if size else request

    server = grpc.aio.server(options=SERVER_OPTIONS)
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                ECHO_SERVICE, {"Unary": grpc.unary_unary_rpc_method_handler(echo)}
            ),
        )
    )
    await serve_until_stopped(server, port, tls=False)


# --- figures -----------------------------------------------------------------------


@dataclass
class Timings:
    """Round trips (seconds) of one kind of call, and its failures."""

    label: str
    values: list[float] = field(default_factory=list)
    failures: Failures = field(default_factory=Failures)
    elapsed: float = 0.0

    def rate(self) -> float:
        return len(self.values) / self.elapsed if self.elapsed else 0.0

    def row(self, width: int = 44) -> str:
        failed = "" if not self.failures.count else f"; failed {self.failures.text()}"
        rate = f"; {self.rate():,.0f} calls/s" if self.elapsed else ""
        return (
            f"  {self.label + ':':<{width}} p50 {ms(percentile(self.values, 0.5)):>6} ms, "
            f"p99 {ms(percentile(self.values, 0.99)):>6} ms ({len(self.values):,} calls{rate})"
            f"{failed}"
        )


async def timed(result: Timings, call: Callable[[], Awaitable[object]]) -> object | None:
    began = time.perf_counter()
    try:
        answer = await call()
    except grpc.aio.AioRpcError as error:
        result.failures.add(error)
        return None
    result.values.append(time.perf_counter() - began)
    return answer


class Clock:
    """Counts and time limits of one measurement."""

    def __init__(self, seconds: float) -> None:
        self.deadline = time.monotonic() + seconds

    def over(self) -> bool:
        return time.monotonic() > self.deadline


def cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


# --- the calls ---------------------------------------------------------------------


class Billing:
    def __init__(self, channel: grpc.aio.Channel, echo_channel: grpc.aio.Channel) -> None:
        self.stub = billing_pb2_grpc.BillingManagerStub(channel)
        self.token: Metadata = metadata(operator_token())
        self._echo = echo_channel.unary_unary(ECHO_METHOD, None, None)
        self.reply = b"0"

    async def account(self, funded: int = FUNDING) -> str:
        account = await self.stub.CreateAccount(
            billing_pb2.CreateAccountRequest(display_name="bench", currency="EUR"),
            metadata=self.token,
        )
        if funded:
            await self.fund(account.account_id, funded)
        return str(account.account_id)

    def fund(self, account_id: str, amount: int) -> Awaitable[billing_pb2.FundAccountResponse]:
        return self.stub.FundAccount(
            billing_pb2.FundAccountRequest(
                account_id=account_id, amount_micros=amount, idempotency_key=uuid.uuid4().hex
            ),
            metadata=self.token,
        )

    def reserve(self, account_id: str) -> Awaitable[billing_pb2.Hold]:
        return self.stub.Reserve(
            billing_pb2.ReserveRequest(
                account_id=account_id,
                amount_micros=HOLD,
                idempotency_key=uuid.uuid4().hex,
                reference="bench",
            ),
            metadata=self.token,
        )

    def capture(self, hold_id: str) -> Awaitable[billing_pb2.Hold]:
        return self.stub.Capture(
            billing_pb2.CaptureRequest(
                hold_id=hold_id, amount_micros=CAPTURED, idempotency_key=uuid.uuid4().hex
            ),
            metadata=self.token,
        )

    def get(self, account_id: str) -> Awaitable[billing_pb2.Account]:
        return self.stub.GetAccount(
            billing_pb2.GetAccountRequest(account_id=account_id), metadata=self.token
        )

    def echo(self) -> Awaitable[bytes]:
        request = billing_pb2.ReserveRequest(
            account_id="acct_" + "0" * 32,
            amount_micros=HOLD,
            idempotency_key=uuid.uuid4().hex,
            reference="bench",
        ).SerializeToString()
        answer: Awaitable[bytes] = self._echo(
            request, metadata=(*self.token, (REPLY_BYTES, str(len(self.reply))))
        )
        return answer


async def reserve_and_capture(
    billing: Billing, account_id: str, reserves: Timings, captures: Timings
) -> None:
    hold = await timed(reserves, lambda: billing.reserve(account_id))
    if isinstance(hold, billing_pb2.Hold):
        await timed(captures, lambda: billing.capture(hold.hold_id))


async def one_at_a_time(
    result: Timings, count: int, seconds: float, call: Callable[[int], Awaitable[object]]
) -> list[object]:
    """`call(0)`, `call(1)`... each after the one before, `count` of them or for `seconds`."""
    answers = []
    clock = Clock(seconds)
    for number in range(count):
        answers.append(await timed(result, functools.partial(call, number)))
        if clock.over():
            break
    return answers


async def sequential(billing: Billing, accounts: list[str], args: argparse.Namespace) -> None:
    print(f"\n1. Sequential: one caller, up to {args.calls:,} calls of each kind", flush=True)
    echo = Timings("bare echo (unary, Hold-sized answer)")
    reserves, captures = Timings("Reserve"), Timings("Capture (of those holds)")
    gets, funds = Timings("GetAccount"), Timings("FundAccount")
    count, seconds = args.calls, args.phase_seconds

    def account(number: int) -> str:
        return accounts[number % len(accounts)]

    await one_at_a_time(echo, count, seconds, lambda _: billing.echo())
    made = await one_at_a_time(reserves, count, seconds, lambda n: billing.reserve(account(n)))
    holds = [hold.hold_id for hold in made if isinstance(hold, billing_pb2.Hold)]
    await one_at_a_time(captures, len(holds), seconds, lambda n: billing.capture(holds[n]))
    await one_at_a_time(gets, count, seconds, lambda n: billing.get(account(n)))
    await one_at_a_time(funds, count, seconds, lambda n: billing.fund(account(n), 1))
    for timings in (echo, reserves, captures, gets, funds):
        print(timings.row(), flush=True)


async def concurrent(
    billing: Billing,
    accounts: list[str],
    args: argparse.Namespace,
    servers: tuple[psutil.Process, psutil.Process],
    label: str,
) -> None:
    """--concurrency callers, caller i on accounts[i % len(accounts)]."""
    billing_server, echo_server = servers
    workers = args.concurrency
    calls = max(args.calls, workers) * 2
    each = calls // workers

    async def run(
        timings: list[Timings], work: Callable[[int], Awaitable[None]], server: psutil.Process
    ) -> tuple[float, float]:
        clock = Clock(args.phase_seconds)

        async def worker(index: int) -> None:
            for _ in range(each):
                await work(index)
                if clock.over():
                    return

        cpu, began = cpu_seconds(server), time.perf_counter()
        await asyncio.gather(*(worker(index) for index in range(workers)))
        elapsed = time.perf_counter() - began
        for timing in timings:
            timing.elapsed = elapsed
        done = sum(len(timing.values) for timing in timings)
        return elapsed, (cpu_seconds(server) - cpu) / max(done, 1)

    echo = Timings("bare echo")
    reserves, captures, gets = Timings("Reserve"), Timings("Capture"), Timings("GetAccount")

    async def echo_once(index: int) -> None:
        await timed(echo, billing.echo)

    async def move(index: int) -> None:
        await reserve_and_capture(billing, accounts[index % len(accounts)], reserves, captures)

    async def read(index: int) -> None:
        await timed(gets, lambda: billing.get(accounts[index % len(accounts)]))

    print(f"\n{label}", flush=True)
    _, echo_cpu = await run([echo], echo_once, echo_server)
    _, move_cpu = await run([reserves, captures], move, billing_server)
    _, read_cpu = await run([gets], read, billing_server)
    for timings in (echo, reserves, captures, gets):
        print(timings.row(), flush=True)
    print(
        f"  {'server CPU per call:':<44} billing manager: Reserve or Capture "
        f"{move_cpu * 1e6:,.0f} us, GetAccount {read_cpu * 1e6:,.0f} us; echo server "
        f"{echo_cpu * 1e6:,.0f} us",
        flush=True,
    )


def seed_ledger(billing_url: str, account_id: str, entries: int) -> float:
    """Write `entries` ledger entries on one account in one statement, as FundAccount
    writes them (FUND transactions of 1 micro: FUNDING -1, CUSTOMER_AVAILABLE +1). A schema
    with running balances moves them by itself (its trigger)."""
    transactions = entries // 2
    began = time.perf_counter()
    with psycopg.connect(libpq_dsn(billing_url)) as conn:
        conn.execute(
            "INSERT INTO ledger_transactions (transaction_id, kind, account_id, amount_micros, "
            "idempotency_key, fingerprint) SELECT 'txn_seed_' || n, 'FUND', %(a)s::text, 1, "
            "'seed-' || %(a)s::text || '-' || n, 'FUND|' || %(a)s::text || '|1' "
            "FROM generate_series(1, %(n)s) AS n",
            {"a": account_id, "n": transactions},
        )
        conn.execute(
            "INSERT INTO ledger_entries (transaction_id, kind, account_id, ledger_account, "
            "amount_micros) SELECT 'txn_seed_' || n, 'FUND', %(a)s::text, side.account, "
            "side.amount "
            "FROM generate_series(1, %(n)s) AS n, (VALUES ('FUNDING', -1), "
            "('CUSTOMER_AVAILABLE', 1)) AS side(account, amount)",
            {"a": account_id, "n": transactions},
        )
        conn.execute("ANALYZE ledger_entries")
        conn.execute("ANALYZE ledger_transactions")
    return time.perf_counter() - began


async def long_ledger(billing: Billing, billing_url: str, args: argparse.Namespace) -> None:
    fresh, grown = await billing.account(), await billing.account()
    seconds = await asyncio.to_thread(seed_ledger, billing_url, grown, args.entries)
    listed = await billing.get(grown)
    print(
        f"\n3. A long ledger: {args.entries:,} entries written on one account in "
        f"{seconds:.1f} s (its balance now {listed.balance_micros:,} micros), sequential "
        f"calls, up to {args.calls:,} each",
        flush=True,
    )
    rows = []
    for name, account_id in (("fresh account", fresh), (f"{args.entries:,} entries", grown)):
        gets = Timings(f"GetAccount, {name}")
        reserves, captures = Timings(f"Reserve, {name}"), Timings(f"Capture, {name}")

        def get(_: int, account_id: str = account_id) -> Awaitable[billing_pb2.Account]:
            return billing.get(account_id)

        await one_at_a_time(gets, args.calls, args.phase_seconds, get)
        clock = Clock(args.phase_seconds)
        for _ in range(args.calls):
            await reserve_and_capture(billing, account_id, reserves, captures)
            if clock.over():
                break
        rows.append((gets, reserves, captures))
    for fresh_row, grown_row in zip(rows[0], rows[1], strict=True):
        print(fresh_row.row(), flush=True)
        print(grown_row.row(), flush=True)
        ratio = percentile(grown_row.values, 0.5) / percentile(fresh_row.values, 0.5)
        print(f"  {'  p50 ratio, long ledger to fresh:':<44} {ratio:.2f}", flush=True)


async def profile(
    billing: Billing, accounts: list[str], args: argparse.Namespace, pid: int, out: Path
) -> None:
    py_spy = Path(sys.executable).with_name("py-spy")
    if not py_spy.exists():
        print(f"\nno py-spy beside {sys.executable}; no profile")
        return
    raw = out / "billing-profile.raw"
    recorder = await asyncio.create_subprocess_exec(
        str(py_spy),
        "record",
        "-p",
        str(pid),
        "-d",
        str(args.profile_seconds),
        "-f",
        "raw",
        "-o",
        str(raw),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    stop = time.monotonic() + args.profile_seconds + 1
    reserves, captures = Timings("Reserve"), Timings("Capture")

    async def worker(index: int) -> None:
        while time.monotonic() < stop:
            await reserve_and_capture(billing, accounts[index % len(accounts)], reserves, captures)

    await asyncio.gather(*(worker(index) for index in range(args.concurrency)))
    _, errors = await recorder.communicate()
    print(f"\nprofile: {args.profile_seconds} s of py-spy under {args.concurrency} callers")
    print(reserves.row())
    print(captures.row())
    if recorder.returncode != 0:
        print(f"  py-spy failed: {errors.decode(errors='replace').strip()[-500:]}")
        return
    print(f"  raw stacks: {raw}")
    summarise_profile(raw)


def summarise_profile(raw: Path, top: int = 20) -> None:
    """Where the samples of py-spy's raw format fell: the innermost Python frame of each
    (time spent in that function or in the C code it called), and the frames most often
    on the stack at all, without those on nearly every stack (the process's main)."""
    leaves: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    total = 0
    for text in raw.read_text().splitlines():
        stack, _, count = text.rpartition(" ")
        if not count.isdigit():
            continue
        samples, frames = int(count), stack.split(";")
        total += samples
        leaves[frames[-1]] = leaves.get(frames[-1], 0) + samples
        for frame in set(frames):
            inclusive[frame] = inclusive.get(frame, 0) + samples
    if not total:
        print("  no samples")
        return
    print(f"  {total:,} samples; innermost Python frame (self, and the C code it called):")
    for frame, samples in sorted(leaves.items(), key=lambda item: -item[1])[:top]:
        print(f"    {samples / total:6.1%}  {frame[:110]}")
    print("  on the stack (inclusive):")
    common = [item for item in inclusive.items() if item[1] < 0.75 * total]
    for frame, samples in sorted(common, key=lambda item: -item[1])[:top]:
        print(f"    {samples / total:6.1%}  {frame[:110]}")


async def measure(
    address: str,
    echo_address: str,
    servers: tuple[psutil.Process, psutil.Process],
    args: argparse.Namespace,
) -> None:
    async with (
        grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS) as channel,
        grpc.aio.insecure_channel(echo_address, options=CHANNEL_OPTIONS) as echo_channel,
    ):
        billing = Billing(channel, echo_channel)
        accounts = await asyncio.gather(*(billing.account() for _ in range(args.concurrency)))
        # Warm both sides up, and size the echo's answer as a real Hold.
        for _ in range(50):
            await reserve_and_capture(billing, accounts[0], Timings(""), Timings(""))
            await billing.get(accounts[0])
            await billing.echo()
        billing.reply = (await billing.reserve(accounts[0])).SerializeToString()
        await sequential(billing, accounts, args)
        await concurrent(
            billing,
            accounts,
            args,
            servers,
            f"2. Concurrent: {args.concurrency} callers over one channel, each on its own account",
        )
        one = [await billing.account()]
        await concurrent(
            billing,
            one,
            args,
            servers,
            f"2b. Concurrent: {args.concurrency} callers over one channel, all on ONE account",
        )
        if args.entries:
            await long_ledger(billing, args.billing_url, args)
        if args.profile_seconds:
            await profile(billing, accounts, args, servers[0].pid, args.log_dir or Path.cwd())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=1000, help="calls of each kind per phase")
    parser.add_argument("--concurrency", type=int, default=20, help="concurrent callers")
    parser.add_argument(
        "--entries", type=int, default=100_000, help="ledger entries of the long ledger (0: skip)"
    )
    parser.add_argument(
        "--phase-seconds", type=float, default=20, help="time limit of each measurement"
    )
    parser.add_argument(
        "--profile-seconds", type=int, default=0, help="record a py-spy profile this long"
    )
    parser.add_argument("--log-dir", type=Path, help="keep the billing manager's log here")
    parser.add_argument("--echo-server", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.echo_server is not None:
        runtime.run(serve_echo(args.echo_server))
        return
    if args.calls < 1 or args.concurrency < 1 or args.entries < 0:
        parser.error("--calls and --concurrency must be at least 1, --entries at least 0")

    address, echo_address = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    env = {key: value for key, value in os.environ.items() if not key.startswith("METERLINE_")}
    processes: list[subprocess.Popen[bytes]] = []
    with test_stores() as stores, tempfile.TemporaryDirectory(prefix="bench-billing-") as logs:
        log_dir = args.log_dir or Path(logs)
        billing_log, echo_log = log_dir / "billing_manager.log", log_dir / "echo.log"
        args.billing_url = stores.billing_url
        began = time.perf_counter()
        try:
            billing = spawn_service(
                "billing",
                {
                    **env,
                    "METERLINE_BILLING_DATABASE_URL": stores.billing_url,
                    "METERLINE_TOKEN_SECRET": TOKEN_SECRET,
                    "METERLINE_BILLING_ADDRESS": address,
                    "METERLINE_PLAINTEXT": "1",
                    "METERLINE_LOG_LEVEL": "WARNING",
                },
                billing_log,
            )
            processes.append(billing)
            log_dir.mkdir(parents=True, exist_ok=True)
            with echo_log.open("wb") as out:
                echo = subprocess.Popen(
                    [sys.executable, __file__, "--echo-server", echo_address.rpartition(":")[2]],
                    env=env,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            processes.append(echo)
            wait_until_serving(address, billing, billing_log, None)
            wait_until_serving(echo_address, echo, echo_log, None)
            print(
                f"billing manager pid {billing.pid} on {address}, echo server pid {echo.pid} "
                f"on {echo_address}, client pid {os.getpid()}; load average "
                f"{os.getloadavg()[0]:.2f} on {os.cpu_count()} cores",
                flush=True,
            )
            servers = (psutil.Process(billing.pid), psutil.Process(echo.pid))
            runtime.run(measure(address, echo_address, servers, args))
        finally:
            stop_processes(processes)
            for process, log_path in zip(processes, (billing_log, echo_log), strict=False):
                if process.returncode not in (0, -signal.SIGTERM):
                    with contextlib.suppress(OSError):
                        print(log_path.read_text(errors="replace")[-2000:], file=sys.stderr)
        print(f"\nwhole run: {time.perf_counter() - began:.1f} s")


if __name__ == "__main__":
    main()
