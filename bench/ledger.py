"""Settled money movements per second: Reserve then Capture pairs through the billing
manager over gRPC with TLS on PostgreSQL, from many concurrent callers in several client
processes, beside a bare gRPC unary echo doing the same protobuf work, in the same run;
then `meterline ledger verify` on the account database the run wrote.

    python bench/ledger.py [--callers 32] [--client-processes 4] [--seconds 10]
                           [--accounts 0] [--profile-seconds 0]

The billing manager runs as its own process (`python -m billing_manager`) on a database
of its own in the PostgreSQL the tests use (or the embedded default), serving the test
certificate (TLS). The echo is a grpc.aio server of the same server options and the same
TLS, run as this script with `--echo-server PORT`: its Reserve and Capture methods decode
the request messages and answer with a Hold built as the billing manager builds one
(`hold_to_wire`), so both sides do the same protobuf and TLS work and differ only by the
billing manager's own.

--callers callers are spread over --client-processes client processes (each one asyncio
loop and one TLS channel), so that the client is not the bottleneck (the client processes'
CPU is printed). Each caller, on its own funded account (or on one of --accounts
accounts), does Reserve (1,000 micros, a new idempotency key) then Capture (600 micros of
that hold, a new key), over and over for --seconds; the echo phase does the same two calls
against the echo first. A pair's time runs from sending the Reserve to the Capture's
answer. Every caller first does one untimed pair.

Printed: pairs/s, p50 and p99 of a pair, RPC/s, the echo's RPC/s and the ratio, the CPU
each process used per pair (PostgreSQL: the server processes of the billing manager's
connections) and the cores busy on the whole machine, the failures; then the ledger
verify's verdict, and whether the target of 2,000 settled pairs/s was met. With
--profile-seconds N, py-spy (from the virtualenv) records the billing manager for N
seconds of the Reserve and Capture phase, and the frames most often on its stacks are
printed.

Every phase stops after --seconds; the whole run after --time-limit. A failed call is
counted and printed, not raised: this is a benchmark, not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import grpc
import psutil
import psycopg
from bench.billing import summarise_profile
from bench.common import Failures, Metadata, ms, percentile, serve_until_stopped, verdict
from tests.support.stack import TOKEN_SECRET, metadata, operator_token, wait_for
from tests.support.stores import test_stores
from tests.support.tls import client_environment, dev_certificates, tls_environment

from billing_manager.domain.ledger import Hold, HoldStatus
from billing_manager.grpc_api import hold_to_wire
from meterline.billing.v1 import billing_pb2, billing_pb2_grpc
from meterline.kernel import runtime
from meterline.kernel.config import TlsSettings
from meterline.kernel.db import libpq_dsn
from meterline.kernel.grpc_server import CHANNEL_OPTIONS, SERVER_OPTIONS, client_channel
from meterline.kernel.processes import free_port, spawn, spawn_service, stop_processes
from meterline.kernel.tls import channel_credentials

ECHO_SERVICE = "bench.LedgerEcho"
FUNDING = 10**15  # micros per account: no reserve is ever refused for funds
HOLD = 1_000  # micros per reserve
CAPTURED = 600  # micros captured of each hold
TARGET_PAIRS = 2_000  # settled pairs per second
READY_SECONDS = 120.0  # for the client processes to start, connect and warm up


# --- the echo server process -------------------------------------------------------


def _echo_hold(account_id: str, amount: int, reference: str) -> billing_pb2.Hold:
    now = datetime.now(UTC)
    hold = Hold(
        hold_id="hold_" + uuid.uuid4().hex,
        account_id=account_id,
        amount_micros=amount,
        captured_micros=0,
        released_micros=0,
        status=HoldStatus.OPEN,
        reference=reference,
        created_at=now,
        expires_at=now + timedelta(days=1),
    )
    return hold_to_wire(hold)


async def serve_echo(port: int) -> None:
    async def reserve(request: billing_pb2.ReserveRequest, context: Any) -> billing_pb2.Hold:
        return _echo_hold(request.account_id, request.amount_micros, request.reference)

    async def capture(request: billing_pb2.CaptureRequest, context: Any) -> billing_pb2.Hold:
        return _echo_hold("acct_" + "0" * 32, HOLD, "bench")

    server = grpc.aio.server(options=SERVER_OPTIONS)
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                ECHO_SERVICE,
                {
                    "Reserve": grpc.unary_unary_rpc_method_handler(
                        reserve,
                        billing_pb2.ReserveRequest.FromString,
                        billing_pb2.Hold.SerializeToString,
                    ),
                    "Capture": grpc.unary_unary_rpc_method_handler(
                        capture,
                        billing_pb2.CaptureRequest.FromString,
                        billing_pb2.Hold.SerializeToString,
                    ),
                },
            ),
        )
    )
    await serve_until_stopped(server, port)


# --- the client processes ----------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """What one client process does."""

    target: str
    """"billing" or "echo"."""
    address: str
    ca_file: str
    token: Metadata
    accounts: tuple[str, ...]
    """One caller per entry (entries may repeat: callers sharing an account)."""
    ready: Any
    """A multiprocessing.Manager Barrier for the client processes and the parent: the timed
    part begins when every one has warmed up."""
    seconds: float


@dataclass
class Outcome:
    """What one client process measured."""

    pairs: list[float] = field(default_factory=list)
    """Seconds from each timed Reserve's send to its Capture's answer."""
    calls: int = 0
    """RPCs answered OK in the timed part."""
    failures: Failures = field(default_factory=Failures)
    last_answer: float = 0.0
    """time.time() of the last answer of the timed part."""
    cpu: float = 0.0
    """CPU seconds this process used in the timed part."""


class Caller:
    def __init__(self, channel: grpc.aio.Channel, plan: Plan) -> None:
        self.token = plan.token
        if plan.target == "billing":
            stub = billing_pb2_grpc.BillingManagerStub(channel)
            self._reserve, self._capture = stub.Reserve, stub.Capture
        else:
            self._reserve = channel.unary_unary(
                f"/{ECHO_SERVICE}/Reserve",
                billing_pb2.ReserveRequest.SerializeToString,
                billing_pb2.Hold.FromString,
            )
            self._capture = channel.unary_unary(
                f"/{ECHO_SERVICE}/Capture",
                billing_pb2.CaptureRequest.SerializeToString,
                billing_pb2.Hold.FromString,
            )

    async def pair(self, account_id: str, outcome: Outcome | None) -> None:
        hold = await self._reserve(
            billing_pb2.ReserveRequest(
                account_id=account_id,
                amount_micros=HOLD,
                idempotency_key=uuid.uuid4().hex,
                reference="bench",
            ),
            metadata=self.token,
        )
        if outcome is not None:
            outcome.calls += 1
        await self._capture(
            billing_pb2.CaptureRequest(
                hold_id=hold.hold_id, amount_micros=CAPTURED, idempotency_key=uuid.uuid4().hex
            ),
            metadata=self.token,
        )
        if outcome is not None:
            outcome.calls += 1


async def _drive(plan: Plan) -> Outcome:
    credentials = channel_credentials(TlsSettings(ca_file=Path(plan.ca_file)))
    outcome = Outcome()
    async with client_channel(plan.address, credentials, CHANNEL_OPTIONS) as channel:
        caller = Caller(channel, plan)
        warm = Failures()

        async def warm_up(account_id: str) -> None:
            try:
                await caller.pair(account_id, None)
            except grpc.aio.AioRpcError as error:
                warm.add(error)

        await asyncio.gather(*(warm_up(account_id) for account_id in plan.accounts))
        # Everyone waits for everyone, even a process whose warm-up failed.
        await asyncio.to_thread(plan.ready.wait, READY_SECONDS)
        if warm.count:
            outcome.failures = warm
            return outcome
        deadline = time.time() + plan.seconds
        cpu = time.process_time()

        async def run(account_id: str) -> None:
            now = time.perf_counter
            while time.time() < deadline:
                began = now()
                try:
                    await caller.pair(account_id, outcome)
                except grpc.aio.AioRpcError as error:
                    outcome.failures.add(error)
                    await asyncio.sleep(0.01)
                    continue
                outcome.pairs.append(now() - began)
                outcome.last_answer = time.time()

        await asyncio.gather(*(run(account_id) for account_id in plan.accounts))
        outcome.cpu = time.process_time() - cpu
    return outcome


def drive(plan: Plan) -> Outcome:
    """A client process's work (run in a spawned process)."""
    return runtime.run(_drive(plan))


# --- figures -----------------------------------------------------------------------


@dataclass
class Phase:
    label: str
    outcomes: list[Outcome]
    seconds: float
    server_cpu: float
    postgres_cpu: float | None
    """None: not measured (the echo uses no database)."""
    machine_busy: float
    """Cores busy on the whole machine during the phase (all processes)."""

    @property
    def pairs(self) -> list[float]:
        return [pair for outcome in self.outcomes for pair in outcome.pairs]

    @property
    def elapsed(self) -> float:
        return self.seconds

    @property
    def calls(self) -> int:
        return sum(outcome.calls for outcome in self.outcomes)

    @property
    def failures(self) -> Failures:
        merged = Failures()
        for outcome in self.outcomes:
            merged.count += outcome.failures.count
            merged.first = merged.first or outcome.failures.first
            for kind, count in outcome.failures.kinds.items():
                merged.kinds[kind] = merged.kinds.get(kind, 0) + count
        return merged

    def pair_rate(self) -> float:
        return len(self.pairs) / self.elapsed if self.elapsed else 0.0

    def rpc_rate(self) -> float:
        return self.calls / self.elapsed if self.elapsed else 0.0

    def print(self) -> None:
        pairs = self.pairs
        done = max(len(pairs), 1)
        client_cpu = sum(outcome.cpu for outcome in self.outcomes)
        print(
            f"  {self.label + ':':<16} {self.pair_rate():8,.0f} pairs/s, "
            f"{self.rpc_rate():8,.0f} RPC/s; pair p50 {ms(percentile(pairs, 0.5))} ms, "
            f"p99 {ms(percentile(pairs, 0.99))} ms ({len(pairs):,} pairs in "
            f"{self.elapsed:.1f} s); failures: {self.failures.text()}",
            flush=True,
        )
        per_pair = [("server", self.server_cpu), ("clients", client_cpu)]
        if self.postgres_cpu is not None:
            per_pair.insert(1, ("PostgreSQL", self.postgres_cpu))
        print(
            f"  {'':<16} CPU per pair: "
            + ", ".join(f"{name} {cpu / done * 1e6:,.0f} us" for name, cpu in per_pair)
            + "; cores busy: "
            + ", ".join(f"{name} {cpu / self.elapsed:.2f}" for name, cpu in per_pair)
            + f", whole machine {self.machine_busy:.2f} of {os.cpu_count()}",
            flush=True,
        )


def cpu_seconds(process: psutil.Process) -> float:
    """CPU seconds of `process` and its children."""
    total = 0.0
    for each in (process, *process.children(recursive=True)):
        with contextlib.suppress(psutil.Error):
            times = each.cpu_times()
            total += times.user + times.system
    return total


def database_backends(database_url: str) -> list[psutil.Process]:
    """The PostgreSQL server processes serving the run's account database now (the
    billing manager's pooled connections), not those of other work on the server."""
    with psycopg.connect(libpq_dsn(database_url), autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid()"
        ).fetchall()
    found = []
    for (pid,) in rows:
        with contextlib.suppress(psutil.Error):
            found.append(psutil.Process(pid))
    return found


def backend_cpu_seconds(backends: Sequence[psutil.Process]) -> dict[int, float]:
    seconds = {}
    for backend in backends:
        with contextlib.suppress(psutil.Error):
            times = backend.cpu_times()
            seconds[backend.pid] = times.user + times.system
    return seconds


def busy_seconds() -> float:
    """CPU seconds the whole machine spent on anything but idling."""
    times = psutil.cpu_times()
    return float(sum(times) - times.idle - getattr(times, "iowait", 0.0))


def spread(accounts: Sequence[str], callers: int, processes: int) -> list[tuple[str, ...]]:
    """Caller i on accounts[i % len(accounts)], callers dealt round the processes."""
    mine: list[list[str]] = [[] for _ in range(processes)]
    for index in range(callers):
        mine[index % processes].append(accounts[index % len(accounts)])
    return [tuple(each) for each in mine if each]


async def _funded_accounts(address: str, count: int, token: Metadata) -> list[str]:
    credentials = channel_credentials(TlsSettings(ca_file=dev_certificates().ca))
    async with client_channel(address, credentials, CHANNEL_OPTIONS) as channel:
        stub = billing_pb2_grpc.BillingManagerStub(channel)

        async def one() -> str:
            account = await stub.CreateAccount(
                billing_pb2.CreateAccountRequest(display_name="bench", currency="EUR"),
                metadata=token,
            )
            await stub.FundAccount(
                billing_pb2.FundAccountRequest(
                    account_id=account.account_id,
                    amount_micros=FUNDING,
                    idempotency_key=uuid.uuid4().hex,
                ),
                metadata=token,
            )
            return str(account.account_id)

        return list(await asyncio.gather(*(one() for _ in range(count))))


def run_phase(
    label: str,
    target: str,
    address: str,
    accounts: Sequence[str],
    server: psutil.Process,
    args: argparse.Namespace,
    pool: Any,
    manager: Any,
) -> Phase:
    token = metadata(operator_token())
    shares = spread(accounts, args.callers, args.client_processes)
    ready = manager.Barrier(len(shares) + 1)
    plans = [
        Plan(target, address, str(dev_certificates().ca), token, mine, ready, args.seconds)
        for mine in shares
    ]
    pending = pool.map_async(drive, plans, chunksize=1)
    ready.wait(READY_SECONDS)
    backends = database_backends(args.billing_url) if target == "billing" else []
    postgres = backend_cpu_seconds(backends)
    cpu, busy = cpu_seconds(server), busy_seconds()
    began = time.time()
    recorder = None
    if target == "billing" and args.profile_seconds:
        recorder = start_profile(server.pid, args)
    outcomes: list[Outcome] = pending.get(timeout=args.seconds + 60)
    server_cpu = cpu_seconds(server) - cpu
    postgres_after = backend_cpu_seconds(backends)
    postgres_cpu = (
        sum(postgres_after[pid] - postgres[pid] for pid in postgres_after if pid in postgres)
        if backends
        else None
    )
    busy = busy_seconds() - busy
    ended = max((outcome.last_answer for outcome in outcomes), default=0.0)
    elapsed = ended - began if ended > began else args.seconds  # no answer at all
    phase = Phase(label, outcomes, elapsed, server_cpu, postgres_cpu, busy / (time.time() - began))
    if recorder is not None:
        finish_profile(recorder, args)
    return phase


def start_profile(pid: int, args: argparse.Namespace) -> subprocess.Popen[bytes] | None:
    py_spy = Path(sys.executable).with_name("py-spy")
    if not py_spy.exists():
        print(f"  no py-spy beside {sys.executable}; no profile", flush=True)
        return None
    return subprocess.Popen(
        [
            str(py_spy),
            "record",
            "--subprocesses",
            *(["--native"] if os.environ.get("BENCH_NATIVE") else []),
            "--rate",
            "250",
            "-p",
            str(pid),
            "-d",
            str(min(args.profile_seconds, max(1, int(args.seconds) - 1))),
            "-f",
            "raw",
            "-o",
            str(args.profile_out),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def finish_profile(recorder: subprocess.Popen[bytes], args: argparse.Namespace) -> None:
    _, errors = recorder.communicate(timeout=30)
    print(f"\nprofile of the billing manager: {args.profile_seconds} s of py-spy", flush=True)
    if recorder.returncode != 0:
        print(f"  py-spy failed: {errors.decode(errors='replace').strip()[-500:]}")
        return
    kept = "" if args.log_dir else " (removed at the end; --log-dir keeps them)"
    print(f"  raw stacks: {args.profile_out}{kept}")
    summarise_profile(args.profile_out)


def ledger_verify(billing_url: str, env: dict[str, str]) -> tuple[int, str]:
    """`meterline ledger verify` on the run's account database: exit code, last line."""
    began = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "meterline.cli.main", "ledger", "verify"],
        env={**env, "METERLINE_BILLING_DATABASE_URL": billing_url},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    lines = (done.stdout.strip() or done.stderr.strip() or "(no output)").splitlines()
    mismatches = [line for line in lines if line.startswith("MISMATCH")]
    shown = "; ".join([*mismatches[:3], lines[-1]])
    return done.returncode, f"{shown} ({time.perf_counter() - began:.1f} s)"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--callers", type=int, default=32, help="concurrent callers in all")
    parser.add_argument("--client-processes", type=int, default=4, help="processes they run in")
    parser.add_argument("--seconds", type=float, default=10.0, help="of each phase")
    parser.add_argument(
        "--accounts", type=int, default=0, help="accounts the callers share (0: one each)"
    )
    parser.add_argument(
        "--profile-seconds", type=int, default=0, help="record a py-spy profile this long"
    )
    parser.add_argument("--no-echo", dest="echo", action="store_false", help="skip the echo")
    parser.add_argument("--time-limit", type=float, default=300.0, help="of the whole run, s")
    parser.add_argument("--log-dir", type=Path, help="keep the services' logs here")
    parser.add_argument("--echo-server", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.echo_server is not None:
        runtime.run(serve_echo(args.echo_server))
        return
    if min(args.callers, args.client_processes) < 1 or args.seconds <= 0:
        parser.error("--callers and --client-processes must be at least 1, --seconds above 0")
    signal.signal(signal.SIGALRM, lambda *_: sys.exit("stopped: the run's time limit passed"))
    signal.alarm(int(args.time_limit))

    env = {key: value for key, value in os.environ.items() if not key.startswith("METERLINE_")}
    address, echo_address = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    processes: list[subprocess.Popen[bytes]] = []
    began = time.perf_counter()
    with contextlib.ExitStack() as cleanup:
        stores = cleanup.enter_context(test_stores())
        if args.log_dir:
            args.log_dir.mkdir(parents=True, exist_ok=True)
            logs = args.log_dir
        else:
            logs = Path(cleanup.enter_context(tempfile.TemporaryDirectory(prefix="bench-ledger-")))
        args.profile_out = logs / "ledger-profile.raw"
        args.billing_url = stores.billing_url
        cleanup.callback(stop_processes, processes)
        server_env = {
            **env,
            **tls_environment(),
            "METERLINE_BILLING_DATABASE_URL": stores.billing_url,
            "METERLINE_TOKEN_SECRET": TOKEN_SECRET,
            "METERLINE_BILLING_ADDRESS": address,
            "METERLINE_LOG_LEVEL": "WARNING",
        }
        billing = spawn_service("billing", server_env, logs / "billing_manager.log")
        processes.append(billing)
        echo = spawn_echo(echo_address, {**env, **tls_environment()}, logs / "echo.log")
        processes.append(echo)
        wait_for(address, billing, logs / "billing_manager.log")
        wait_for(echo_address, echo, logs / "echo.log")
        accounts = runtime.run(
            _funded_accounts(address, args.accounts or args.callers, metadata(operator_token()))
        )
        print(
            f"billing manager pid {billing.pid} on {address}, echo server pid {echo.pid}; "
            f"{args.callers} callers in {args.client_processes} client processes on "
            f"{len(accounts)} accounts; load average {os.getloadavg()[0]:.2f} on "
            f"{os.cpu_count()} cores",
            flush=True,
        )
        context = multiprocessing.get_context("spawn")
        with context.Manager() as manager, context.Pool(args.client_processes) as pool:
            targets = [("bare echo", "echo", echo_address, echo)] if args.echo else []
            targets.append(("Reserve+Capture", "billing", address, billing))
            phases = [
                run_phase(
                    label, target, at, accounts, psutil.Process(process.pid), args, pool, manager
                )
                for label, target, at, process in targets
            ]
        print(f"\n{args.callers} callers, {args.seconds:.0f} s each, TLS on both", flush=True)
        for phase in phases:
            phase.print()
        ledger = phases[-1]
        if args.echo:
            share = ledger.rpc_rate() / phases[0].rpc_rate() if phases[0].rpc_rate() else 0.0
            print(f"  {'ratio:':<16} {share:.3f} of the echo's RPC/s", flush=True)
        code, summary = ledger_verify(stores.billing_url, {**env, **client_environment()})
        print(f"\nmeterline ledger verify: exit {code}: {summary}", flush=True)
        met = ledger.pair_rate() >= TARGET_PAIRS and not ledger.failures.count and code == 0
        print(
            f"\ntarget: at least {TARGET_PAIRS:,} settled pairs/s, no failure, ledger verified: "
            f"{ledger.pair_rate():,.0f} -> {verdict(met)}",
            flush=True,
        )
    print(f"\nwhole run: {time.perf_counter() - began:.1f} s")


def spawn_echo(address: str, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return spawn(
        [sys.executable, __file__, "--echo-server", address.rpartition(":")[2]],
        log,
        death_signal=signal.SIGTERM,
        env=env,
    )


if __name__ == "__main__":
    main()
