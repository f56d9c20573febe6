"""Usage updates per second and their round trip through the Meter stream, beside a bare
gRPC echo stream carrying messages of the same size, measured in the same run.

    python bench/meter_stream.py [--streams 10,200,1000] [--updates 2000,150,40]
                                 [--scale 1] [--instances 2] [--phase-seconds 30]

The three services run as their own processes (`python -m rating_service`,
`billing_manager`, `service_manager`) on databases of their own in the PostgreSQL and
Redis the tests use (or the embedded default), with a quota validity and slices large
enough that no session is cut off or needs a second slice during the run. The echo
baseline is a grpc.aio stream-stream server of the same server options, run as this
script with `--echo-server PORT`; it answers each message with one of the size of a
MeterResponse.

Each stream is lock-step: write an update, read its answer, repeat. Each stream is its
own session on its own funded account (sequence=n, used_units=n), on one service manager
process. Streams are opened over one channel (one TCP connection) per 100 streams, the
same way for the Meter and the echo. Before each measurement every stream is opened and
does one exchange, untimed.

1. Closed loop at 10, 200 and 1,000 streams: updates/s, p50 and p99 round trip, beside
   the echo. In a closed loop at saturation the mean round trip is streams / throughput
   (Little's law), so the p99 at many streams mostly measures queueing.
2. Paced at 200 streams: each stream sends one update every 100 ms (2,000 updates/s
   offered) for 5 s: the round trip under a load below saturation.
3. Two service-manager processes on the same PostgreSQL and Redis (`--instances 2`, the
   default; `--instances 1` skips it): half the sessions started and streamed on each.

Targets: Meter updates/s at least 0.6 of the echo at every stream count; the rate at
1,000 streams at least 0.9 of the rate at 10; p99 under 20 ms at 200 streams (saturated
and paced). A missed target or a failed stream is reported, not raised: this is a
benchmark, not a test. Every measurement stops at --phase-seconds, and the whole run at
--time-limit.

With --profile-seconds N, py-spy (from the virtualenv) records the service manager for N
seconds under 200 lock-step streams (--profile-streams), after the closed loops, into
service-profile.raw in the log directory, and the run prints where its samples fell.
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
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import grpc
import psutil
from bench.billing import summarise_profile
from bench.common import (
    Failures,
    Metadata,
    close_channels,
    describe,
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
ECHO_METHOD = f"/{ECHO_SERVICE}/Stream"
REPLY = "x-reply-bin"
"""Metadata carrying the answer the echo server sends to every message."""
FUNDING = 10**12  # micros per account
ENDPOINT = "+1555"  # under the +1 tariff, 1 micro per second
# Large enough that nothing is cut off and no second slice is needed during the run.
SERVICE_SETTINGS = {
    "METERLINE_QUOTA_VALIDITY_SECONDS": "7200",
    "METERLINE_SLICE_SECONDS": "10000000",
    "METERLINE_LOG_LEVEL": "WARNING",
}
RATIO_TARGET = 0.6  # Meter updates/s over echo messages/s, at every stream count
SCALING_TARGET = 0.9  # rate at the most streams over the rate at the fewest
P99_TARGET_MS = 20.0  # at 200 streams, saturated and paced
P99_STREAMS = 200
SETUP_CONCURRENCY = 16
CLOSE_SECONDS = 10.0


# --- the echo server process -------------------------------------------------------


async def serve_echo(port: int) -> None:
    async def echo(requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
        reply = dict(context.invocation_metadata() or ()).get(REPLY)
        async for request in requests:
            yield request if reply is None else reply

    server = grpc.aio.server(options=SERVER_OPTIONS)
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                ECHO_SERVICE, {"Stream": grpc.stream_stream_rpc_method_handler(echo)}
            ),
        )
    )
    await serve_until_stopped(server, port)


# --- figures -----------------------------------------------------------------------


@dataclass
class Result:
    streams: int
    planned: int
    """Updates the timed part was to make (streams x updates per stream)."""
    latencies: list[float] = field(default_factory=list)
    elapsed: float = 0.0
    failures: Failures = field(default_factory=Failures)
    warmup_failures: Failures = field(default_factory=Failures)
    close_failures: Failures = field(default_factory=Failures)
    cut_short: int = 0
    """Streams the time limit stopped before their last update."""
    cut_note: str = "streams stopped at the time limit"
    late: int = 0
    """Paced: sends made more than 10 ms after they were due."""
    cpu: dict[str, float] = field(default_factory=dict)
    """CPU seconds of each process during the timed part."""
    span: tuple[float, float] = (0.0, 0.0)
    """perf_counter() at the start and the end of the timed part."""

    @property
    def done(self) -> int:
        return len(self.latencies)

    @property
    def rate(self) -> float:
        return self.done / self.elapsed if self.elapsed else 0.0

    @property
    def p50(self) -> float:
        return percentile(self.latencies, 0.50)

    @property
    def p99(self) -> float:
        return percentile(self.latencies, 0.99)


class CpuClock:
    """CPU seconds (user + system) of named processes; this one is 'client'."""

    def __init__(self, processes: dict[str, psutil.Process]) -> None:
        self.processes = processes

    def read(self) -> dict[str, float]:
        seconds = {"client": time.process_time()}
        for name, process in self.processes.items():
            with contextlib.suppress(psutil.Error):
                times = process.cpu_times()
                seconds[name] = times.user + times.system
        return seconds


# --- streams -----------------------------------------------------------------------


class Stream(Protocol):
    async def exchange(self) -> None: ...
    def close(self) -> Any: ...
    def cancel(self) -> None: ...


@dataclass
class Session:
    account_id: str
    session_id: str
    metadata: Metadata
    sequence: int = 0
    """The last sequence sent."""


class MeterStream:
    def __init__(
        self, stub: service_pb2_grpc.ServiceManagerAsyncStub, session: Session, timeout: float
    ) -> None:
        self.session = session
        self.call: Any = stub.Meter(metadata=session.metadata, timeout=timeout)

    async def exchange(self) -> None:
        session = self.session
        sequence = session.sequence = session.sequence + 1
        await self.call.write(
            service_pb2.ResourceUtilizationUpdate(
                session_id=session.session_id, sequence=sequence, used_units=sequence
            )
        )
        response = await self.call.read()
        if response is grpc.aio.EOF:
            raise RuntimeError(f"the stream ended after update {sequence}")
        if response.HasField("termination"):
            reason = service_pb2.TerminationReason.Name(response.termination.reason)
            raise RuntimeError(f"terminated ({reason}): {response.termination.message}")
        if response.acknowledged_sequence != sequence:
            raise RuntimeError(
                f"update {sequence} acknowledged as {response.acknowledged_sequence}"
            )

    async def close(self) -> None:
        await self.call.done_writing()
        await finished(self.call)

    def cancel(self) -> None:
        self.call.cancel()


class EchoStream:
    """The same client work as a MeterStream (build and serialize an update, parse a
    MeterResponse), against a server that only sends back a fixed, real answer."""

    def __init__(
        self, channel: grpc.aio.Channel, session: Session, answer: bytes, timeout: float
    ) -> None:
        self.session = session
        self.call: Any = channel.stream_stream(
            ECHO_METHOD,
            request_serializer=service_pb2.ResourceUtilizationUpdate.SerializeToString,
            response_deserializer=service_pb2.MeterResponse.FromString,
        )(metadata=((REPLY, answer),), timeout=timeout)

    async def exchange(self) -> None:
        session = self.session
        sequence = session.sequence = session.sequence + 1
        await self.call.write(
            service_pb2.ResourceUtilizationUpdate(
                session_id=session.session_id, sequence=sequence, used_units=sequence
            )
        )
        response = await self.call.read()
        if response is grpc.aio.EOF:
            raise RuntimeError(f"the echo stream ended after message {sequence}")
        if response.HasField("termination"):
            raise RuntimeError("the echo answered with a termination")
        if response.acknowledged_sequence <= 0:
            raise RuntimeError(f"message {sequence} answered without a sequence")

    async def close(self) -> None:
        await self.call.done_writing()
        await finished(self.call)

    def cancel(self) -> None:
        self.call.cancel()


async def finished(call: Any) -> None:
    """Wait for a stream's end; raise unless it ended OK."""
    code = await call.code()
    if code != grpc.StatusCode.OK:
        raise RuntimeError(f"the stream ended with {code.name}: {await call.details()}")


def open_channels(address: str, streams: int, per_channel: int) -> list[grpc.aio.Channel]:
    """One channel per `per_channel` streams, each its own TCP connection (channels with
    the same arguments otherwise share one)."""
    options = [*CHANNEL_OPTIONS, ("grpc.use_local_subchannel_pool", 1)]
    return [tls.channel(address, options) for _ in range(max(1, math.ceil(streams / per_channel)))]


async def warm_up(streams: Sequence[Stream], result: Result, limit: float) -> list[Stream]:
    """One exchange on every stream, untimed; the streams that answered."""

    async def one(stream: Stream) -> bool:
        try:
            await asyncio.wait_for(stream.exchange(), limit)
            return True
        except Exception as error:
            result.warmup_failures.add(error)
            stream.cancel()
            return False

    answered = await asyncio.gather(*(one(stream) for stream in streams))
    return [stream for stream, ok in zip(streams, answered, strict=True) if ok]


async def close_streams(streams: Sequence[Stream], failed: set[int], result: Result) -> None:
    async def one(index: int, stream: Stream) -> None:
        if index in failed:
            stream.cancel()
            return
        try:
            await asyncio.wait_for(stream.close(), CLOSE_SECONDS)
        except Exception as error:
            result.close_failures.add(error)
            stream.cancel()

    await asyncio.gather(*(one(index, stream) for index, stream in enumerate(streams)))


async def closed_loop(
    streams: Sequence[Stream], updates: int, limit: float, clock: CpuClock
) -> Result:
    """Every stream in lock-step for `updates` exchanges, or until `limit` seconds pass."""
    result = Result(streams=len(streams), planned=len(streams) * updates)
    ready = await warm_up(streams, result, limit)
    failed: set[int] = set()
    cpu_before = clock.read()
    began = time.perf_counter()
    deadline = began + limit
    latencies = result.latencies

    async def run(index: int, stream: Stream) -> None:
        now = time.perf_counter
        for _ in range(updates):
            sent = now()
            if sent >= deadline:
                result.cut_short += 1
                return
            try:
                await stream.exchange()
            except Exception as error:
                result.failures.add(error)
                failed.add(index)
                return
            latencies.append(now() - sent)

    await bounded(asyncio.gather(*(run(i, s) for i, s in enumerate(ready))), limit, result)
    result.elapsed = time.perf_counter() - began
    result.span = (began, began + result.elapsed)
    cpu_after = clock.read()
    result.cpu = {name: cpu_after[name] - cpu_before.get(name, 0.0) for name in cpu_after}
    await close_streams(ready, failed, result)
    return result


async def paced(
    streams: Sequence[Stream], interval: float, seconds: float, limit: float, clock: CpuClock
) -> Result:
    """Every stream sends one update every `interval` seconds for `seconds`, the streams'
    sends spread evenly over the interval; the round trip counts from the send."""
    rounds = max(1, int(seconds / interval))
    result = Result(streams=len(streams), planned=len(streams) * rounds)
    result.cut_note = "streams still behind schedule at the end (their last updates not sent)"
    ready = await warm_up(streams, result, limit)
    failed: set[int] = set()
    cpu_before = clock.read()
    began = time.perf_counter() + 0.05
    # No update is sent after the paced time (and one interval for the last round).
    deadline = began + min(limit, rounds * interval + interval)
    latencies = result.latencies

    async def run(index: int, stream: Stream) -> None:
        clock_ = time.perf_counter
        offset = began + interval * index / max(1, len(ready))
        for number in range(rounds):
            due = offset + number * interval
            now = clock_()
            if now >= deadline:
                result.cut_short += 1
                return
            if due > now:
                await asyncio.sleep(due - now)
            elif now - due > 0.010:
                result.late += 1
            sent = clock_()
            try:
                await stream.exchange()
            except Exception as error:
                result.failures.add(error)
                failed.add(index)
                return
            latencies.append(clock_() - sent)

    await bounded(asyncio.gather(*(run(i, s) for i, s in enumerate(ready))), limit + 1, result)
    result.elapsed = time.perf_counter() - began
    result.span = (began, began + result.elapsed)
    cpu_after = clock.read()
    result.cpu = {name: cpu_after[name] - cpu_before.get(name, 0.0) for name in cpu_after}
    await close_streams(ready, failed, result)
    return result


async def bounded(work: Any, limit: float, result: Result) -> None:
    """Wait for `work` at most `limit` seconds (plus a grace for answers in flight);
    a stream still waiting then is counted as failed."""
    try:
        await asyncio.wait_for(work, limit + 15)
    except TimeoutError as error:
        result.failures.add(error)


# --- the stack and the sessions ----------------------------------------------------


async def start_sessions(
    endpoints: Endpoints, service_address: str, count: int, setup: Failures
) -> list[Session]:
    """`count` funded accounts, one session each, started on `service_address`, with
    bounded concurrency; a failed one is left out (and counted)."""
    api = stubs(endpoints)
    channel = tls.channel(service_address, CHANNEL_OPTIONS)
    service = service_pb2_grpc.ServiceManagerStub(channel)
    gate = asyncio.Semaphore(SETUP_CONCURRENCY)

    async def one() -> Session | None:
        async with gate:
            for attempt in range(3):
                try:
                    account_id = await new_account(api.billing, funded_micros=FUNDING)
                    token = device_metadata(account_id)
                    started = await service.StartService(
                        service_pb2.StartServiceRequest(
                            account_id=account_id, service_type=types_pb2.VOICE, endpoint=ENDPOINT
                        ),
                        metadata=token,
                        timeout=30,
                    )
                    return Session(account_id, started.session_id, token)
                except grpc.aio.AioRpcError as error:
                    if attempt == 2:
                        setup.add(error)
                    await asyncio.sleep(0.2)
            return None

    try:
        made = await asyncio.gather(*(one() for _ in range(count)))
    finally:
        await api.close()
        await channel.close(None)
    return [session for session in made if session is not None]


@dataclass
class Stack:
    endpoints: Endpoints
    stores: StoreUrls
    logs: Path
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def spawn(self, name: str, role: str, address: str, extra: dict[str, str]) -> None:
        env = {**environment(self.stores, self.endpoints), **SERVICE_SETTINGS, **extra}
        log = self.logs / f"{name}.log"
        process = spawn_service(role, env, log)
        self.processes[name] = process
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

    def psutil(self, *names: str) -> dict[str, psutil.Process]:
        return {name: psutil.Process(self.processes[name].pid) for name in names}

    def stop(self) -> None:
        stop_processes(list(self.processes.values()))

    def log_tail(self, name: str, lines: int = 15) -> str:
        try:
            text = (self.logs / f"{name}.log").read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


# --- printing ----------------------------------------------------------------------


def print_result(label: str, result: Result, unit: str) -> None:
    print(
        f"  {label:<11} {result.rate:9,.0f} {unit}/s   p50 {ms(result.p50):>7} ms   "
        f"p99 {ms(result.p99):>7} ms   ({result.done:,} of {result.planned:,} in "
        f"{result.elapsed:.1f} s)"
    )
    notes = []
    if result.cut_short:
        notes.append(f"{result.cut_short} {result.cut_note}")
    if result.late:
        notes.append(f"{result.late} sends more than 10 ms late")
    for name, failures in (
        ("warm-up", result.warmup_failures),
        ("timed", result.failures),
        ("closing", result.close_failures),
    ):
        if failures.count:
            notes.append(f"{name} failures: {failures.text()}")
    for note in notes:
        print(f"  {'':<11} {note}")


def print_cpu(meter: Result, echo: Result) -> None:
    def per(result: Result, name: str) -> str:
        seconds = result.cpu.get(name)
        if seconds is None or not result.done:
            return "-"
        return f"{seconds / result.done * 1e6:,.0f}"

    print(
        f"  {'CPU/update':<11} service manager {per(meter, 'service')} us, billing "
        f"{per(meter, 'billing')} us, rating {per(meter, 'rating')} us, client "
        f"{per(meter, 'client')} us | echo server {per(echo, 'echo')} us, client "
        f"{per(echo, 'client')} us"
    )


def clean(result: Result) -> bool:
    return not (result.failures.count or result.warmup_failures.count)


def print_p99_target(label: str, meter: Result) -> None:
    met = meter.p99 < P99_TARGET_MS and clean(meter)
    print(
        f"  p99 < {P99_TARGET_MS:.0f} ms at {P99_STREAMS} streams, {label}: "
        f"{ms(meter.p99)} ms -> {verdict(met)}"
    )


def ratio(a: float, b: float) -> float:
    return a / b if b else math.nan


# --- the profile -------------------------------------------------------------------


async def profile(stack: Stack, sessions: Sequence[Session], args: argparse.Namespace) -> None:
    """py-spy on the service manager while every stream of `sessions` meters lock-step."""
    py_spy = Path(sys.executable).with_name("py-spy")
    if not py_spy.exists():
        print(f"\nno py-spy beside {sys.executable}; no profile")
        return
    raw = stack.logs / "service-profile.raw"
    seconds = args.profile_seconds
    channels = open_channels(stack.endpoints.service, len(sessions), args.streams_per_channel)
    try:
        meter_stubs = [service_pb2_grpc.ServiceManagerStub(channel) for channel in channels]
        streams = [
            MeterStream(meter_stubs[i // args.streams_per_channel], session, 2 * seconds + 60)
            for i, session in enumerate(sessions)
        ]
        result = Result(streams=len(streams), planned=0)
        ready = await warm_up(streams, result, args.phase_seconds)
        recorder = await asyncio.create_subprocess_exec(
            str(py_spy),
            "record",
            "-p",
            str(stack.processes["service"].pid),
            "-d",
            f"{seconds:g}",
            "-f",
            "raw",
            "-o",
            str(raw),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        # Every stream until the recording ends (one second more, so that it covers only
        # the loop): updates without a count.
        measured = await closed_loop(ready, 10**9, seconds + 1, CpuClock(stack.psutil("service")))
        _, errors = await recorder.communicate()
    finally:
        await close_channels(channels)
    print(f"\nprofile: {seconds:g} s of py-spy on the service manager, {len(ready)} streams")
    measured.planned, measured.cut_short = measured.done, 0
    print_result("Meter", measured, "updates")
    if recorder.returncode != 0:
        print(f"  py-spy failed: {errors.decode(errors='replace').strip()[-500:]}")
        return
    print(f"  raw stacks: {raw}" + ("" if args.log_dir else " (removed at the end of the run)"))
    summarise_profile(raw)


# --- the run -----------------------------------------------------------------------


@dataclass
class Sizes:
    request: int
    answer: bytes
    """A real MeterResponse, serialized: what the echo server answers."""

    @property
    def reply(self) -> int:
        return len(self.answer)


async def measure_pair(
    stack: Stack,
    sessions: Sequence[Session],
    sizes: Sizes,
    args: argparse.Namespace,
    run: Callable[[Sequence[Stream], CpuClock], Any],
) -> tuple[Result, Result]:
    """The echo, then the Meter, with the same number of streams over as many channels."""
    count = len(sessions)
    timeout = 2 * args.phase_seconds + 60
    channels = open_channels(stack.endpoints.service, count, args.streams_per_channel)
    echo_channels = open_channels(args.echo_address, count, args.streams_per_channel)
    try:
        echo_streams = [
            EchoStream(
                echo_channels[i // args.streams_per_channel],
                Session(session.account_id, session.session_id, ()),
                sizes.answer,
                timeout,
            )
            for i, session in enumerate(sessions)
        ]
        echo = await run(echo_streams, CpuClock(stack.psutil("echo")))
        meter_stubs = [service_pb2_grpc.ServiceManagerStub(channel) for channel in channels]
        meter_streams = [
            MeterStream(meter_stubs[i // args.streams_per_channel], session, timeout)
            for i, session in enumerate(sessions)
        ]
        meter = await run(meter_streams, CpuClock(stack.psutil("service", "billing", "rating")))
    finally:
        await close_channels(channels)
        await close_channels(echo_channels)
    return meter, echo


async def preflight(stack: Stack, session: Session) -> Sizes:
    """One update on one session: the sizes of a Meter update and its answer. If it
    fails, the answer's size is estimated (and the failure printed)."""
    update = service_pb2.ResourceUtilizationUpdate(
        session_id=session.session_id, sequence=1000, used_units=1000
    )  # a typical update of the run: sequence and usage in the hundreds or thousands
    estimate = service_pb2.MeterResponse(
        acknowledged_sequence=1000,
        charged_micros=1000,
        balance_micros=FUNDING - 10**7,
        granted_units=10**7,
        used_units=1000,
    )
    estimate.estimated_time_left.seconds = 10**7
    channel = tls.channel(stack.endpoints.service, CHANNEL_OPTIONS)
    try:
        call: Any = service_pb2_grpc.ServiceManagerStub(channel).Meter(
            metadata=session.metadata, timeout=30
        )
        session.sequence += 1
        await call.write(
            service_pb2.ResourceUtilizationUpdate(
                session_id=session.session_id,
                sequence=session.sequence,
                used_units=session.sequence,
            )
        )
        answer = await call.read()
        await call.done_writing()
        await finished(call)
        if answer is grpc.aio.EOF:
            raise RuntimeError("the Meter stream ended without an answer")
        return Sizes(update.ByteSize(), answer.SerializeToString())
    except Exception as error:
        print(f"the first Meter update failed ({describe(error)}); answer size estimated")
        return Sizes(update.ByteSize(), estimate.SerializeToString())
    finally:
        await channel.close(None)


async def two_instances(
    stack: Stack,
    sessions: Sequence[Session],
    updates: int,
    single: Result | None,
    args: argparse.Namespace,
) -> None:
    count = args.instance_streams
    half = count // 2
    second = f"127.0.0.1:{free_port()}"
    print(f"\nTwo service-manager processes on the same PostgreSQL and Redis, {count} streams")
    began = time.perf_counter()
    stack.spawn("service-2", "service", second, {"METERLINE_SERVICE_ADDRESS": second})
    setup = Failures()
    theirs = await start_sessions(stack.endpoints, second, count - half, setup)
    ours = list(sessions[:half])
    print(
        f"  second instance on {second}, {len(theirs)} sessions started on it "
        f"in {time.perf_counter() - began:.1f} s (setup failures: {setup.text()})"
    )
    timeout = 2 * args.phase_seconds + 60
    first_channels = open_channels(stack.endpoints.service, len(ours), args.streams_per_channel)
    second_channels = open_channels(second, len(theirs), args.streams_per_channel)
    try:

        def streams(channels: list[grpc.aio.Channel], group: Sequence[Session]) -> list[Stream]:
            stubs_ = [service_pb2_grpc.ServiceManagerStub(channel) for channel in channels]
            return [
                MeterStream(stubs_[i // args.streams_per_channel], session, timeout)
                for i, session in enumerate(group)
            ]

        first, second_result = await asyncio.gather(
            closed_loop(
                streams(first_channels, ours),
                updates,
                args.phase_seconds,
                CpuClock(stack.psutil("service")),
            ),
            closed_loop(
                streams(second_channels, theirs),
                updates,
                args.phase_seconds,
                CpuClock(stack.psutil("service-2")),
            ),
        )
    finally:
        await close_channels(first_channels)
        await close_channels(second_channels)
    # From the first timed update on either instance to the last answer on either.
    elapsed = max(first.span[1], second_result.span[1]) - min(first.span[0], second_result.span[0])
    total = first.done + second_result.done
    aggregate = total / elapsed if elapsed else 0.0
    print_result("instance 1", first, "updates")
    print_result("instance 2", second_result, "updates")
    both = first.latencies + second_result.latencies
    print(
        f"  {'aggregate':<11} {aggregate:9,.0f} updates/s   p50 {ms(percentile(both, 0.5)):>7} ms"
        f"   p99 {ms(percentile(both, 0.99)):>7} ms"
    )
    if single is not None:
        print(
            f"  {'':<11} {ratio(aggregate, single.rate):.2f} x one instance at "
            f"{single.streams} streams ({single.rate:,.0f} updates/s); both share "
            f"{os.cpu_count()} cores with the client, the databases and the other services"
        )


async def measure(stack: Stack, args: argparse.Namespace) -> None:
    counts: list[int] = args.streams
    per_stream = [max(1, round(updates * args.scale)) for updates in args.updates]
    needed = max(
        [
            *counts,
            args.paced_streams if args.paced else 0,
            args.instance_streams // 2,
            args.profile_streams if args.profile_seconds > 0 else 0,
        ]
    )
    began = time.perf_counter()
    api = stubs(stack.endpoints)
    try:
        await ensure_tariff(api.rating, "+1", 1)
    finally:
        await api.close()
    setup = Failures()
    sessions = await start_sessions(stack.endpoints, stack.endpoints.service, needed, setup)
    print(
        f"{len(sessions):,} funded accounts with a session each, started in "
        f"{time.perf_counter() - began:.1f} s (setup failures: {setup.text()})",
        flush=True,
    )
    if not sessions:
        print("no session could be started; nothing to measure")
        print(stack.log_tail("service"))
        return
    sizes = await preflight(stack, sessions[0])
    print(
        f"messages: update {sizes.request} bytes, answer {sizes.reply} bytes (the echo sends "
        f"and answers the same sizes); {args.streams_per_channel} streams per channel; "
        f"time limit {args.phase_seconds:.0f} s per measurement",
        flush=True,
    )

    results: dict[int, tuple[Result, Result]] = {}
    for count, updates in zip(counts, per_stream, strict=True):
        group = sessions[:count]
        print(f"\nclosed loop, {len(group):,} streams x {updates:,} updates", flush=True)
        if len(group) < count:
            print(f"  (only {len(group)} sessions could be started)")

        def run(streams: Sequence[Stream], clock: CpuClock, updates: int = updates) -> Any:
            return closed_loop(streams, updates, args.phase_seconds, clock)

        meter, echo = await measure_pair(stack, group, sizes, args, run)
        results[count] = (meter, echo)
        print_result("Meter", meter, "updates")
        print_result("echo", echo, "messages")
        mean = len(group) / meter.rate * 1000 if meter.rate else math.nan
        print(
            f"  {'ratio':<11} {ratio(meter.rate, echo.rate):9.3f}   (Little's law: {len(group)} "
            f"streams / {meter.rate:,.0f} updates/s = {ms(mean)} ms mean round trip)"
        )
        print_cpu(meter, echo)

    if args.profile_seconds > 0:
        await profile(stack, sessions[: args.profile_streams], args)

    paced_results: tuple[Result, Result] | None = None
    if args.paced:
        group = sessions[: args.paced_streams]
        offered = len(group) / args.paced_interval
        print(
            f"\npaced, {len(group)} streams, one update every {args.paced_interval * 1000:.0f} ms "
            f"each ({offered:,.0f} updates/s offered) for {args.paced_seconds:.0f} s",
            flush=True,
        )

        def run_paced(streams: Sequence[Stream], clock: CpuClock) -> Any:
            return paced(
                streams, args.paced_interval, args.paced_seconds, args.phase_seconds, clock
            )

        paced_results = await measure_pair(stack, group, sizes, args, run_paced)
        meter, echo = paced_results
        print_result("Meter", meter, "updates")
        print_result("echo", echo, "messages")
        print_cpu(meter, echo)

    if args.instances >= 2:
        single = results.get(args.instance_streams, (None, None))[0]
        updates = per_stream[counts.index(args.instance_streams)] if single else per_stream[-1]
        await two_instances(stack, sessions, updates, single, args)

    print("\ntargets")
    for count in counts:
        meter, echo = results[count]
        share = ratio(meter.rate, echo.rate)
        print(
            f"  Meter >= {RATIO_TARGET} x echo at {count:,} streams: "
            f"{share:.3f} -> {verdict(share >= RATIO_TARGET and clean(meter))}"
        )
    low, high = min(counts), max(counts)
    scaling = ratio(results[high][0].rate, results[low][0].rate)
    print(
        f"  Meter at {high:,} streams >= {SCALING_TARGET} x at {low:,}: {scaling:.3f} -> "
        f"{verdict(scaling >= SCALING_TARGET and clean(results[high][0]))}"
    )
    if P99_STREAMS in results:
        print_p99_target("saturated", results[P99_STREAMS][0])
    if paced_results is not None and args.paced_streams == P99_STREAMS:
        print_p99_target("paced", paced_results[0])
    print("  (a target is not met when any update of that measurement failed)")


def counts(text: str) -> list[int]:
    values = [int(part) for part in text.split(",") if part.strip()]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("a comma-separated list of positive whole numbers")
    return values


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--streams", type=counts, default=[10, 200, 1000], help="stream counts")
    parser.add_argument(
        "--updates", type=counts, default=[2000, 150, 40], help="updates per stream, per count"
    )
    parser.add_argument("--scale", type=float, default=1.0, help="multiplies --updates")
    parser.add_argument("--paced-streams", type=int, default=200)
    parser.add_argument("--paced-interval", type=float, default=0.1, help="seconds")
    parser.add_argument("--paced-seconds", type=float, default=5.0)
    parser.add_argument("--no-paced", dest="paced", action="store_false")
    parser.add_argument(
        "--instances", type=int, default=2, choices=(1, 2), help="2: also two service managers"
    )
    parser.add_argument("--instance-streams", type=int, default=200)
    parser.add_argument("--streams-per-channel", type=int, default=100)
    parser.add_argument(
        "--phase-seconds", type=float, default=30.0, help="time limit of each measurement"
    )
    parser.add_argument("--time-limit", type=float, default=900.0, help="of the whole run, s")
    parser.add_argument("--log-dir", type=Path, help="keep the services' logs here")
    parser.add_argument(
        "--profile-seconds",
        type=float,
        default=0.0,
        help="record a py-spy profile of the service manager this long",
    )
    parser.add_argument(
        "--profile-streams",
        type=int,
        default=P99_STREAMS,
        help="lock-step streams during the profile (default 200)",
    )
    parser.add_argument("--echo-server", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.echo_server is not None:
        runtime.run(serve_echo(args.echo_server))
        return
    if len(args.updates) != len(args.streams):
        parser.error("give one --updates value per --streams value")
    if args.scale <= 0 or args.paced_interval <= 0 or args.streams_per_channel < 1:
        parser.error("--scale, --paced-interval and --streams-per-channel must be positive")

    began = time.perf_counter()
    with contextlib.ExitStack() as cleanup:
        stores = cleanup.enter_context(test_stores())
        if args.log_dir:
            args.log_dir.mkdir(parents=True, exist_ok=True)
            logs = args.log_dir
        else:
            logs = Path(cleanup.enter_context(tempfile.TemporaryDirectory(prefix="bench-meter-")))
        endpoints = Endpoints(
            rating=f"127.0.0.1:{free_port()}",
            billing=f"127.0.0.1:{free_port()}",
            service=f"127.0.0.1:{free_port()}",
        )
        args.echo_address = f"127.0.0.1:{free_port()}"
        stack = Stack(endpoints, stores, logs)
        cleanup.callback(stack.stop)
        stack.spawn("rating", "rating", endpoints.rating, {})
        stack.spawn("billing", "billing", endpoints.billing, {})
        stack.spawn("service", "service", endpoints.service, {})
        stack.spawn_echo(args.echo_address)
        print(
            f"service manager pid {stack.processes['service'].pid}, echo server pid "
            f"{stack.processes['echo'].pid}, client pid {os.getpid()}; load average "
            f"{os.getloadavg()[0]:.2f} on {os.cpu_count()} cores",
            flush=True,
        )
        try:
            runtime.run(asyncio.wait_for(measure(stack, args), args.time_limit))
        except TimeoutError:
            print(f"\nstopped: the run's time limit of {args.time_limit:.0f} s passed")
    print(f"\nwhole run: {time.perf_counter() - began:.1f} s")


if __name__ == "__main__":
    main()
