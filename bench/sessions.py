"""StartService latency at a steady pace, and many sessions held open with their Meter
streams: the service manager's memory, the update rate and round trip, the failures.

    python bench/sessions.py [--sessions 10000] [--hold-seconds 60] [--start-rate 200]
                             [--accounts N] [--update-interval 5] [--echo-seconds 10]

The three services run as their own processes (`python -m rating_service`,
`billing_manager`, `service_manager`) on databases of their own in the PostgreSQL and
Redis the tests use (or the embedded default), with a quota validity and slices large
enough that no session is cut off or needs a second slice during the run. The baseline is
a bare grpc.aio unary echo server of the same server options, run as this script with
`--echo-server PORT`, answering with as many bytes as a StartServiceResponse.

1. Starts: --sessions StartService calls, one launched every 1 / --start-rate seconds
   (200 a second: one every 5 ms), open loop (a start does not wait for the one before),
   each session on one of --accounts funded accounts (default one per 20 sessions).
   Round trip p50 and p99 overall and per 10 s, and the failures. Before them, the same
   pace of unary echo calls for --echo-seconds, over as many channels, as the baseline.
2. Holding: every started session opens its own Meter stream and sends one update every
   --update-interval seconds (sequence=n, used_units=n), the streams spread evenly over
   the interval (10,000 streams every 5 s: 2,000 updates/s), for --hold-seconds. A stream
   waits for the answer before it sends the next update; a failed stream is re-opened at
   its next update (re-opening resumes the session).

Streams and calls go over one channel (one TCP connection) per 100 sessions
(--sessions-per-channel), session i on channel i modulo the channel count, so that every
channel is busy while the sessions start. The service manager's resident memory (VmRSS)
is printed before the starts, after them, every 10 s and at the end.

Targets: StartService p50 <= 3 ms and p99 <= 25 ms at 200 starts a second; the service
manager under 1 GiB resident with 10,000 sessions streaming. A missed target or a failure
is reported, not raised: this is a benchmark, not a test. With the defaults the run ends
by itself in about four minutes; --time-limit bounds it in any case.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import grpc
import psutil
from bench.common import (
    Failures,
    Metadata,
    close_channels,
    device_metadata,
    ms,
    percentile,
    serve_until_stopped,
    verdict,
)
from tests.support import tls
from tests.support.clients import ensure_tariff, new_account, stubs
from tests.support.stack import environment, wait_for
from tests.support.stores import StoreUrls, test_stores

from meterline.kernel import runtime
from meterline.kernel.config import Endpoints
from meterline.kernel.grpc_server import CHANNEL_OPTIONS, SERVER_OPTIONS
from meterline.kernel.processes import free_port, spawn_service, stop_processes
from meterline.rating.v1 import types_pb2
from meterline.service.v1 import service_pb2, service_pb2_grpc

ECHO_SERVICE = "bench.Echo"
ECHO_METHOD = f"/{ECHO_SERVICE}/Unary"
REPLY_BYTES = "x-reply-bytes"
FUNDING = 10**12  # micros per account
ENDPOINT = "+1555"  # under the +1 tariff, 1 micro per second
SERVICE_SETTINGS = {
    "METERLINE_QUOTA_VALIDITY_SECONDS": "7200",
    "METERLINE_SLICE_SECONDS": "10000000",
    "METERLINE_LOG_LEVEL": "WARNING",
}
P50_TARGET_MS = 3.0
P99_TARGET_MS = 25.0
RSS_TARGET = 1 << 30
RSS_SESSIONS = 10_000
SETUP_CONCURRENCY = 16
SAMPLE_SECONDS = 10.0
GRACE_SECONDS = 10.0


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
    await serve_until_stopped(server, port)


# --- figures -----------------------------------------------------------------------


def mib(size: int | None) -> str:
    return "n/a" if size is None else f"{size / (1 << 20):,.0f} MiB"


@dataclass
class Paced:
    """Calls launched at a steady pace: when each was launched and how long it took."""

    launched: list[float] = field(default_factory=list)
    """Launch times, seconds from the first launch."""
    latencies: list[float] = field(default_factory=list)
    """Round trips of the calls that succeeded, in seconds."""
    offsets: list[float] = field(default_factory=list)
    """When each of those was launched, seconds from the first launch."""
    failures: Failures = field(default_factory=Failures)
    elapsed: float = 0.0
    late: int = 0
    """Launches made more than 5 ms after they were due (this client was busy)."""
    most_in_flight: int = 0

    def line(self, label: str) -> str:
        return (
            f"  {label:<13} p50 {ms(percentile(self.latencies, 0.5)):>7} ms   p99 "
            f"{ms(percentile(self.latencies, 0.99)):>7} ms   ({len(self.latencies):,} of "
            f"{len(self.launched):,} answered, launched over {self.elapsed:.1f} s; most in "
            f"flight {self.most_in_flight:,}; failures: {self.failures.text()})"
        )

    def windows(self, seconds: float) -> list[tuple[float, float, float, int]]:
        """(window start, p50, p99, count) per `seconds` of launch time."""
        buckets: dict[int, list[float]] = {}
        for offset, latency in zip(self.offsets, self.latencies, strict=True):
            buckets.setdefault(int(offset // seconds), []).append(latency)
        return [
            (key * seconds, percentile(values, 0.5), percentile(values, 0.99), len(values))
            for key, values in sorted(buckets.items())
        ]


async def paced_calls(count: int, rate: float, call: Any, result: Paced) -> None:
    """Launch call(i) for i in range(count), one every 1 / rate seconds, without waiting
    for the earlier ones; wait for all of them at the end (each has its own deadline)."""
    in_flight = 0
    tasks: set[asyncio.Task[None]] = set()
    began = time.perf_counter()

    async def one(index: int, launched: float) -> None:
        nonlocal in_flight
        in_flight += 1
        result.most_in_flight = max(result.most_in_flight, in_flight)
        try:
            await call(index)
        except Exception as error:
            result.failures.add(error)
        else:
            result.latencies.append(time.perf_counter() - launched)
            result.offsets.append(launched - began)
        finally:
            in_flight -= 1

    for index in range(count):
        due = began + index / rate
        now = time.perf_counter()
        if due > now:
            await asyncio.sleep(due - now)
        elif now - due > 0.005:
            result.late += 1
        launched = time.perf_counter()
        result.launched.append(launched - began)
        task = asyncio.create_task(one(index, launched))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    result.elapsed = time.perf_counter() - began
    if tasks:
        await asyncio.wait(list(tasks))


# --- the stack ---------------------------------------------------------------------


@dataclass
class Stack:
    endpoints: Endpoints
    stores: StoreUrls
    logs: Path
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def spawn(self, role: str, address: str) -> None:
        env = {**environment(self.stores, self.endpoints), **SERVICE_SETTINGS}
        log = self.logs / f"{role}.log"
        process = spawn_service(role, env, log)
        self.processes[role] = process
        wait_for(address, process, log)

    def spawn_echo(self, address: str) -> None:
        env = {key: value for key, value in os.environ.items() if not key.startswith("METERLINE_")}
        env.update(tls.tls_environment())
        log = self.logs / "echo.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [sys.executable, __file__, "--echo-server", address.rpartition(":")[2]],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.processes["echo"] = process
        wait_for(address, process, log)

    def rss(self) -> int | None:
        """The service manager's resident memory (VmRSS), in bytes."""
        with contextlib.suppress(psutil.Error):
            return int(psutil.Process(self.processes["service"].pid).memory_info().rss)
        return None

    def cpu_seconds(self) -> dict[str, float]:
        """CPU time (user + system) each service process has used so far."""
        used = {}
        for role in ("service", "billing", "rating"):
            with contextlib.suppress(psutil.Error, KeyError):
                times = psutil.Process(self.processes[role].pid).cpu_times()
                used[role] = times.user + times.system
        return used

    def stop(self) -> None:
        stop_processes(list(self.processes.values()))


def open_channels(address: str, count: int) -> list[grpc.aio.Channel]:
    """`count` channels, each its own TCP connection (channels with the same arguments
    otherwise share one)."""
    options = [*CHANNEL_OPTIONS, ("grpc.use_local_subchannel_pool", 1)]
    return [tls.channel(address, options) for _ in range(max(1, count))]


async def ready(channels: Sequence[grpc.aio.Channel], seconds: float = 30) -> None:
    await asyncio.wait_for(
        asyncio.gather(*(channel.channel_ready() for channel in channels)), seconds
    )


async def make_accounts(endpoints: Endpoints, count: int, failures: Failures) -> list[str]:
    api = stubs(endpoints)
    gate = asyncio.Semaphore(SETUP_CONCURRENCY)

    async def one() -> str | None:
        async with gate:
            for attempt in range(3):
                try:
                    return await new_account(api.billing, funded_micros=FUNDING)
                except grpc.aio.AioRpcError as error:
                    if attempt == 2:
                        failures.add(error)
                    await asyncio.sleep(0.2)
            return None

    try:
        await ensure_tariff(api.rating, "+1", 1)
        made = await asyncio.gather(*(one() for _ in range(count)))
    finally:
        await api.close()
    return [account for account in made if account]


# --- holding the sessions ----------------------------------------------------------


@dataclass
class Held:
    session_id: str
    metadata: Metadata
    stub: service_pb2_grpc.ServiceManagerAsyncStub
    sequence: int = 0
    call: Any = None


@dataclass
class Hold:
    latencies: list[float] = field(default_factory=list)
    failures: Failures = field(default_factory=Failures)
    late: int = 0
    """Updates sent more than 100 ms after they were due (the answer to the one before
    had not come yet)."""
    open_streams: int = 0
    unanswered: int = 0
    """Streams still waiting for an answer when the hold (and its grace) ended."""


async def hold_sessions(
    sessions: Sequence[Held], interval: float, seconds: float, stack: Stack, began_run: float
) -> tuple[Hold, float]:
    result = Hold()
    began = time.perf_counter() + 0.05
    end = began + seconds
    deadline = seconds + GRACE_SECONDS + 30  # of each stream

    async def update(held: Held) -> None:
        if held.call is None:
            held.call = held.stub.Meter(metadata=held.metadata, timeout=deadline)
            result.open_streams += 1
        held.sequence += 1
        await held.call.write(
            service_pb2.ResourceUtilizationUpdate(
                session_id=held.session_id, sequence=held.sequence, used_units=held.sequence
            )
        )
        answer = await held.call.read()
        if answer is grpc.aio.EOF:
            raise RuntimeError(f"the stream ended after update {held.sequence}")
        if answer.HasField("termination"):
            reason = service_pb2.TerminationReason.Name(answer.termination.reason)
            raise RuntimeError(f"terminated ({reason}): {answer.termination.message}")
        if answer.acknowledged_sequence != held.sequence:
            raise RuntimeError(
                f"update {held.sequence} acknowledged as {answer.acknowledged_sequence}"
            )

    async def run(index: int, held: Held) -> None:
        offset = began + interval * index / len(sessions)
        number = 0
        while True:
            due = offset + number * interval
            number += 1
            now = time.perf_counter()
            if due >= end or now >= end:
                break
            if due > now:
                await asyncio.sleep(due - now)
            elif now - due > 0.1:
                result.late += 1
            sent = time.perf_counter()
            try:
                await update(held)
            except Exception as error:
                result.failures.add(error)
                if held.call is not None:
                    held.call.cancel()
                    held.call = None
                    result.open_streams -= 1
                continue
            result.latencies.append(time.perf_counter() - sent)
        if held.call is not None:
            try:
                await held.call.done_writing()
                code = await held.call.code()
                if code != grpc.StatusCode.OK:
                    raise RuntimeError(f"the stream ended with {code.name}")
            except Exception as error:
                result.failures.add(error)
            finally:
                held.call.cancel()
                held.call = None
                result.open_streams -= 1

    async def sample() -> None:
        while True:
            await asyncio.sleep(SAMPLE_SECONDS)
            at = time.perf_counter()
            print(
                f"  +{at - began:4.0f} s (run {at - began_run:5.0f} s): service manager "
                f"{mib(stack.rss())}, {result.open_streams:,} streams open, "
                f"{len(result.latencies):,} updates answered, "
                f"{result.failures.count:,} failures",
                flush=True,
            )
            samples.append(stack.rss() or 0)

    samples: list[int] = []
    sampler = asyncio.create_task(sample())
    tasks = [asyncio.create_task(run(i, held)) for i, held in enumerate(sessions)]
    try:
        _, pending = await asyncio.wait(tasks, timeout=seconds + GRACE_SECONDS + 0.05)
        result.unanswered = len(pending)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=GRACE_SECONDS)
    finally:
        sampler.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampler
    for held in sessions:
        if held.call is not None:
            held.call.cancel()
    return result, max(samples, default=0)


# --- the run -----------------------------------------------------------------------


async def measure(stack: Stack, args: argparse.Namespace, began_run: float) -> None:
    per_channel = args.sessions_per_channel
    accounts_wanted = args.accounts or max(1, math.ceil(args.sessions / 20))
    setup = Failures()
    began = time.perf_counter()
    accounts = await make_accounts(stack.endpoints, accounts_wanted, setup)
    print(
        f"{len(accounts):,} accounts funded with {FUNDING:,} micros each in "
        f"{time.perf_counter() - began:.1f} s (failures: {setup.text()})",
        flush=True,
    )
    if not accounts:
        return
    tokens = [device_metadata(account) for account in accounts]
    channels = open_channels(stack.endpoints.service, math.ceil(args.sessions / per_channel))
    service = [service_pb2_grpc.ServiceManagerStub(channel) for channel in channels]
    echo_count = min(args.sessions, max(1, round(args.start_rate * args.echo_seconds)))
    echo_channels = open_channels(args.echo_address, len(channels))
    try:
        await ready(channels)
        await ready(echo_channels)

        def request(index: int) -> service_pb2.StartServiceRequest:
            return service_pb2.StartServiceRequest(
                account_id=accounts[index % len(accounts)],
                service_type=types_pb2.VOICE,
                endpoint=ENDPOINT,
            )

        # One untimed start per channel: the sizes of a start and its answer, and warm.
        started: dict[int, str] = {}
        reply_size = 0
        for index in range(min(len(channels), args.sessions)):
            with contextlib.suppress(grpc.aio.AioRpcError):
                answer = await service[index].StartService(
                    request(index), metadata=tokens[index % len(tokens)], timeout=30
                )
                started[index] = answer.session_id
                reply_size = reply_size or answer.ByteSize()
        request_size = request(0).ByteSize()
        reply_size = reply_size or request_size
        print(
            f"StartService: request {request_size} bytes, answer {reply_size} bytes (the echo "
            f"sends and answers the same sizes); {len(channels)} channels to the service "
            f"manager, {per_channel} sessions per channel; {len(started)} untimed starts",
            flush=True,
        )

        echo_payload = b"x" * request_size
        echo_metadata = (*tokens[0], (REPLY_BYTES, str(reply_size)))
        echo_methods = [channel.unary_unary(ECHO_METHOD) for channel in echo_channels]

        async def echo(index: int) -> None:
            answer = await echo_methods[index % len(echo_methods)](
                echo_payload, metadata=echo_metadata, timeout=args.start_timeout
            )
            if len(answer) != reply_size:
                raise RuntimeError("the echo answered with the wrong size")

        for index in range(len(echo_methods)):
            await echo(index)
        echo_result = Paced()
        await paced_calls(echo_count, args.start_rate, echo, echo_result)
        # Idle channels would be sent keepalive pings, which the server refuses after a few.
        await close_channels(echo_channels)
        echo_channels = []

        print(f"\nservice manager before the starts: {mib(stack.rss())}", flush=True)
        to_start = [index for index in range(args.sessions) if index not in started]

        async def start(number: int) -> None:
            index = to_start[number]
            answer = await service[index % len(channels)].StartService(
                request(index), metadata=tokens[index % len(tokens)], timeout=args.start_timeout
            )
            started[index] = answer.session_id

        starts = Paced()
        cpu_before = stack.cpu_seconds()
        sampling = asyncio.create_task(sample_during_starts(stack, starts, began_run))
        try:
            await paced_calls(len(to_start), args.start_rate, start, starts)
        finally:
            sampling.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sampling
        after_starts = stack.rss()
        cpu_after = stack.cpu_seconds()
        print(
            f"\nstarts at {args.start_rate:,.0f}/s, open loop, {len(to_start):,} of them "
            f"({starts.late:,} launched more than 5 ms late)"
        )
        print(starts.line("StartService"))
        print(echo_result.line("echo (unary)"))
        ratio_p50 = percentile(starts.latencies, 0.5) / percentile(echo_result.latencies, 0.5)
        ratio_p99 = percentile(starts.latencies, 0.99) / percentile(echo_result.latencies, 0.99)
        print(f"  {'ratio':<13} p50 {ratio_p50:7.1f} x      p99 {ratio_p99:7.1f} x")
        answered = max(len(starts.latencies), 1)
        per_start = {
            role: (cpu_after[role] - cpu_before[role]) / answered * 1e6
            for role in cpu_after
            if role in cpu_before
        }
        print(
            "  CPU per start "
            + ", ".join(f"{role} {micros:,.0f} us" for role, micros in per_start.items())
            + f" (total {sum(per_start.values()):,.0f} us of {os.cpu_count()} cores' "
            f"{1e6 * (os.cpu_count() or 1) / args.start_rate:,.0f} us per start at this pace)"
        )
        # A start is three unary calls one after another: the client's to the service
        # manager, the service manager's GetAccount and GetRate (side by side), its Reserve.
        floor = 3 * percentile(echo_result.latencies, 0.5)
        print(
            f"  {'floor':<13} p50 {ms(floor)} ms: three echo round trips in sequence, what "
            "this design costs before any database work"
        )
        for window, p50, p99, count in starts.windows(SAMPLE_SECONDS):
            print(
                f"  {'':<13} launched at {window:4.0f}-{window + SAMPLE_SECONDS:3.0f} s: "
                f"p50 {ms(p50)} ms, p99 {ms(p99)} ms ({count:,} answered)"
            )
        print(f"service manager after the starts: {mib(after_starts)}, {len(started):,} sessions")

        held = [
            Held(sid, tokens[index % len(tokens)], service[index % len(channels)])
            for index, sid in sorted(started.items())
        ]
        offered = len(held) / args.update_interval
        print(
            f"\nholding {len(held):,} sessions, each with its own Meter stream and one update "
            f"every {args.update_interval:g} s ({offered:,.0f} updates/s offered), for "
            f"{args.hold_seconds:g} s",
            flush=True,
        )
        hold, top_rss = (Hold(), 0)
        if held:
            hold, top_rss = await hold_sessions(
                held, args.update_interval, args.hold_seconds, stack, began_run
            )
        end_rss = stack.rss()
        print(
            f"  updates     {len(hold.latencies) / args.hold_seconds:9,.0f}/s answered "
            f"({len(hold.latencies):,} in {args.hold_seconds:g} s; {offered:,.0f}/s offered)"
        )
        print(
            f"  round trip  p50 {ms(percentile(hold.latencies, 0.5))} ms, p99 "
            f"{ms(percentile(hold.latencies, 0.99))} ms; {hold.late:,} updates sent more than "
            f"100 ms late (the answer before had not come)"
        )
        print(f"  failures    {hold.failures.text()}")
        if hold.unanswered:
            print(f"  {hold.unanswered:,} streams still waiting at the end were cancelled")
        print(f"  service manager at the end: {mib(end_rss)}")
    finally:
        await close_channels(channels)
        await close_channels(echo_channels)

    print("\ntargets")
    p50 = percentile(starts.latencies, 0.5)
    p99 = percentile(starts.latencies, 0.99)
    clean = not starts.failures.count
    print(
        f"  StartService p50 <= {P50_TARGET_MS:g} ms: {ms(p50)} ms -> "
        f"{verdict(p50 <= P50_TARGET_MS and clean)}"
    )
    print(
        f"  StartService p99 <= {P99_TARGET_MS:g} ms: {ms(p99)} ms -> "
        f"{verdict(p99 <= P99_TARGET_MS and clean)}"
    )
    top = max(top_rss, after_starts or 0, end_rss or 0)
    print(
        f"  service manager RSS < 1 GiB with {len(held):,} sessions: most seen {mib(top)} -> "
        f"{verdict(top < RSS_TARGET and len(held) == args.sessions)}"
        + ("" if len(held) >= RSS_SESSIONS else f" (the target is set for {RSS_SESSIONS:,})")
    )
    print("  (a start target is not met when any start failed; the RSS one when any session")
    print("   could not be started)")


async def sample_during_starts(stack: Stack, starts: Paced, began_run: float) -> None:
    began = time.perf_counter()
    while True:
        await asyncio.sleep(SAMPLE_SECONDS)
        at = time.perf_counter()
        print(
            f"  starts +{at - began:4.0f} s (run {at - began_run:5.0f} s): service manager "
            f"{mib(stack.rss())}, {len(starts.launched):,} launched, "
            f"{len(starts.latencies):,} answered, {starts.failures.count:,} failed",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sessions", type=int, default=10_000)
    parser.add_argument("--accounts", type=int, default=0, help="default: one per 20 sessions")
    parser.add_argument("--start-rate", type=float, default=200.0, help="starts per second")
    parser.add_argument(
        "--start-timeout", type=float, default=10.0, help="deadline of each start, s"
    )
    parser.add_argument("--echo-seconds", type=float, default=10.0, help="echo baseline, s")
    parser.add_argument("--update-interval", type=float, default=5.0, help="per stream, s")
    parser.add_argument("--hold-seconds", type=float, default=60.0)
    parser.add_argument("--sessions-per-channel", type=int, default=100)
    parser.add_argument("--time-limit", type=float, default=600.0, help="of the whole run, s")
    parser.add_argument("--log-dir", type=Path, help="keep the services' logs here")
    parser.add_argument("--echo-server", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.echo_server is not None:
        runtime.run(serve_echo(args.echo_server))
        return
    if min(args.sessions, args.sessions_per_channel) < 1 or args.accounts < 0:
        parser.error("--sessions and --sessions-per-channel must be at least 1")
    if min(args.start_rate, args.update_interval, args.hold_seconds, args.echo_seconds) <= 0:
        parser.error("rates, intervals and durations must be positive")

    began = time.perf_counter()
    with contextlib.ExitStack() as cleanup:
        stores = cleanup.enter_context(test_stores())
        if args.log_dir:
            args.log_dir.mkdir(parents=True, exist_ok=True)
            logs = args.log_dir
        else:
            logs = Path(
                cleanup.enter_context(tempfile.TemporaryDirectory(prefix="bench-sessions-"))
            )
        endpoints = Endpoints(
            rating=f"127.0.0.1:{free_port()}",
            billing=f"127.0.0.1:{free_port()}",
            service=f"127.0.0.1:{free_port()}",
        )
        args.echo_address = f"127.0.0.1:{free_port()}"
        stack = Stack(endpoints, stores, logs)
        cleanup.callback(stack.stop)
        stack.spawn("rating", endpoints.rating)
        stack.spawn("billing", endpoints.billing)
        stack.spawn("service", endpoints.service)
        stack.spawn_echo(args.echo_address)
        print(
            f"service manager pid {stack.processes['service'].pid}, echo server pid "
            f"{stack.processes['echo'].pid}, client pid {os.getpid()}; load average "
            f"{os.getloadavg()[0]:.2f} on {os.cpu_count()} cores",
            flush=True,
        )
        try:
            runtime.run(asyncio.wait_for(measure(stack, args, began), args.time_limit))
        except TimeoutError:
            print(f"\nstopped: the run's time limit of {args.time_limit:.0f} s passed")
        print(f"\nmeasured in {time.perf_counter() - began:.1f} s; stopping the services")
    print(f"whole run: {time.perf_counter() - began:.1f} s")


if __name__ == "__main__":
    main()
