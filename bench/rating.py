"""Rated items per second through RateUsageBatch and calls per second through RateUsage,
each beside a bare gRPC echo call of the same request bytes, measured in the same run.

    python bench/rating.py [--batches 100] [--calls 3000] [--concurrency 8]
                           [--in-flight 4] [--rounds 5]

The rating service runs as its own process (`python -m rating_service`) on databases of
its own in the PostgreSQL the tests use (or the embedded default), with a plan of 10,000
VOICE prefixes and a fallback loaded through ImportTariffs. The echo baseline is a
grpc.aio server of the same shape (same server options, health service), a unary method
that returns the request bytes unchanged, run as this script with `--echo-server PORT`.
Client and servers are separate processes, so each gets a core; the client sends the same
authorization metadata to both. Each phase runs in rounds of the echo then the service;
the best round of each counts, so a disturbance of the machine costs one round. The CPU
per call of the server and of this client in those rounds shows which side limits.

Targets (from the issue): batch rating of at least 100,000 items/s end to end, and single
calls at no less than 0.70 of the bare echo rate. A missed target is reported, not an
error: this is a benchmark, not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import grpc
import psutil
from bench.common import serve_until_stopped
from tests.support import tls
from tests.support.stack import TOKEN_SECRET, metadata, operator_token, token_for, wait_for
from tests.support.stores import test_stores

from meterline.kernel import runtime
from meterline.kernel.grpc_server import CHANNEL_OPTIONS, SERVER_OPTIONS
from meterline.kernel.principals import Principal, PrincipalKind
from meterline.kernel.processes import free_port, spawn_service, stop_processes
from meterline.rating.v1 import rating_pb2, rating_pb2_grpc, types_pb2

ECHO_SERVICE = "bench.Echo"
ECHO_METHOD = f"/{ECHO_SERVICE}/Unary"
BATCH_ITEMS = 1_000
PREFIXES = 10_000
FALLBACK_PRICE = 9_999
BATCH_TARGET = 100_000  # items/s
SINGLE_TARGET = 0.70  # of the bare echo rate
# A bare echo of a batch is over 10 times faster than rating it: the echo's rounds send
# the batches this many times over, so that they last long enough to time.
ECHO_PASSES = 10
# Distinct requests made before timing; longer runs send them again.
POOL_BATCHES = 500
POOL_CALLS = 50_000

Metadata = tuple[tuple[str, str], ...]


# --- the echo server process -------------------------------------------------------


async def serve_echo(port: int) -> None:
    async def echo(request: bytes, context: Any) -> bytes:
        return request

    server = grpc.aio.server(options=SERVER_OPTIONS)
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                ECHO_SERVICE, {"Unary": grpc.unary_unary_rpc_method_handler(echo)}
            ),
        )
    )
    await serve_until_stopped(server, port)


# --- the plan and the usage -------------------------------------------------------


def make_prefixes(rng: random.Random, count: int) -> list[str]:
    """Distinct "+1" + 4 to 6 digit prefixes, many nested (+1234, +12345, +123456), so
    that the longest match is not the first one tried."""
    prefixes: dict[str, None] = {}

    def add(prefix: str) -> None:
        if len(prefixes) < count:
            prefixes[prefix] = None

    while len(prefixes) < count:
        parent = f"+1{rng.randrange(10**4):04d}"
        add(parent)
        if rng.random() < 0.7:
            child = f"{parent}{rng.randrange(10)}"
            add(child)
            if rng.random() < 0.6:
                add(f"{child}{rng.randrange(10)}")
    return list(prefixes)


def make_plan(rng: random.Random) -> tuple[rating_pb2.ImportTariffsRequest, dict[str, int]]:
    prices = {prefix: rng.randrange(1, 5_000) for prefix in make_prefixes(rng, PREFIXES)}
    prices[""] = FALLBACK_PRICE
    request = rating_pb2.ImportTariffsRequest(
        tariffs=[
            rating_pb2.Tariff(
                service_type=types_pb2.VOICE,
                prefix=prefix,
                unit=types_pb2.SECOND,
                price_per_unit_micros=price,
                increment_units=1,
                unit_size=1,
                currency="EUR",
            )
            for prefix, price in prices.items()
        ]
    )
    return request, prices


def make_items(
    rng: random.Random, prefixes: Sequence[str], count: int, now: int
) -> list[rating_pb2.RateUsageRequest]:
    """Usage on numbers under the plan's prefixes (1 in 20 on any number, which may only
    match the fallback), of 1 to 3,600 seconds, started in the last day."""
    items = []
    for _ in range(count):
        head = "+1" if rng.random() < 0.05 else rng.choice(prefixes)
        number = head + "".join(rng.choices("0123456789", k=12 - len(head)))
        item = rating_pb2.RateUsageRequest(
            service_type=types_pb2.VOICE, endpoint=number, units=rng.randrange(1, 3_601)
        )
        item.start_time.seconds = now - rng.randrange(86_400)
        items.append(item)
    return items


def expected_amount(prices: dict[str, int], item: rating_pb2.RateUsageRequest) -> int:
    for length in range(len(item.endpoint), -1, -1):
        price = prices.get(item.endpoint[:length])
        if price is not None:
            return price * item.units
    raise AssertionError("the plan has a fallback")


# --- measuring ---------------------------------------------------------------------


@dataclass(frozen=True)
class Round:
    rate: float
    """Calls per second."""
    server_cpu: float
    """Seconds of the server process's CPU per call (all its threads)."""
    client_cpu: float
    """Seconds of this process's CPU per call."""


async def timed(
    call: Callable[[Any], Awaitable[object]],
    requests: Sequence[Any],
    workers: int,
    server: psutil.Process,
) -> Round:
    """Send the requests with `workers` calls in flight over one channel."""
    pending = iter(requests)

    async def worker() -> None:
        for request in pending:
            await call(request)

    server_began, client_began = sum(server.cpu_times()[:2]), time.process_time()
    began = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(workers)))
    elapsed = time.perf_counter() - began
    count = len(requests)
    return Round(
        rate=count / elapsed,
        server_cpu=(sum(server.cpu_times()[:2]) - server_began) / count,
        client_cpu=(time.process_time() - client_began) / count,
    )


async def rounds(
    count: int, echo: Callable[[], Awaitable[Round]], rated: Callable[[], Awaitable[Round]]
) -> tuple[list[Round], list[Round]]:
    """The echo's and the service's figures in `count` rounds, each the echo then the
    service, so that a disturbance of the machine shows in one round, not in one side."""
    echoes, rates = [], []
    for _ in range(count):
        echoes.append(await echo())
        rates.append(await rated())
    return echoes, rates


def best(results: Sequence[Round]) -> Round:
    return max(results, key=lambda result: result.rate)


def line(label: str, value: str) -> None:
    print(f"  {label + ':':<40} {value}")


def spread(results: Sequence[Round], scale: float = 1) -> str:
    if len(results) == 1:
        return ""
    rates = [result.rate * scale for result in results]
    return f"; rounds {min(rates):,.0f} to {max(rates):,.0f}"


def ratios(rated: Sequence[Round], echoed: Sequence[Round]) -> str:
    ratio = f"{best(rated).rate / best(echoed).rate:.3f}"
    if len(rated) == 1:
        return ratio
    each = " ".join(f"{r.rate / e.rate:.3f}" for r, e in zip(rated, echoed, strict=True))
    return f"{ratio} (best to best; per round {each})"


def cpu(rated: Sequence[Round], echoed: Sequence[Round], unit: str) -> None:
    """CPU per call in the best rounds: which side is the bottleneck."""
    service, bare = best(rated), best(echoed)
    line(
        f"CPU per {unit}, service | echo",
        f"server {service.server_cpu * 1e6:,.0f} | {bare.server_cpu * 1e6:,.0f} us, "
        f"client {service.client_cpu * 1e6:,.0f} | {bare.client_cpu * 1e6:,.0f} us",
    )


def verdict(met: bool) -> str:
    return "met" if met else "NOT met"


async def measure(
    rating_address: str,
    echo_address: str,
    servers: tuple[psutil.Process, psutil.Process],
    args: argparse.Namespace,
    rng: random.Random,
) -> None:
    token = metadata(token_for(Principal(kind=PrincipalKind.SERVICE, subject="bench")))
    async with (
        tls.channel(rating_address, CHANNEL_OPTIONS) as rating_channel,
        tls.channel(echo_address, CHANNEL_OPTIONS) as echo_channel,
    ):
        stub = rating_pb2_grpc.RatingServiceStub(rating_channel)
        echo_call = echo_channel.unary_unary(ECHO_METHOD)

        async def echo(payload: bytes) -> bytes:
            response: bytes = await echo_call(payload, metadata=token)
            return response

        began = time.perf_counter()
        plan, prices = make_plan(rng)
        imported = await stub.ImportTariffs(plan, metadata=metadata(operator_token()), timeout=600)
        prefixes = [prefix for prefix in prices if prefix]
        lengths = sorted({len(prefix) - 2 for prefix in prefixes})
        print(
            f"plan: {imported.written:,} VOICE tariffs ({len(prefixes):,} prefixes of "
            f"+1 and {lengths[0]}-{lengths[-1]} digits, and a fallback), per-second prices, "
            f"imported in {time.perf_counter() - began:.1f} s",
            flush=True,
        )
        now = int(time.time())
        if args.batches:
            await measure_batches(stub, echo, servers, token, prefixes, prices, now, args, rng)
        if args.calls:
            await measure_calls(stub, echo, servers, token, prefixes, prices, now, args, rng)


async def measure_batches(
    stub: rating_pb2_grpc.RatingServiceAsyncStub,
    echo: Callable[[bytes], Awaitable[bytes]],
    servers: tuple[psutil.Process, psutil.Process],
    token: Metadata,
    prefixes: list[str],
    prices: dict[str, int],
    now: int,
    args: argparse.Namespace,
    rng: random.Random,
) -> None:
    distinct = [
        rating_pb2.RateUsageBatchRequest(items=make_items(rng, prefixes, BATCH_ITEMS, now))
        for _ in range(min(args.batches, POOL_BATCHES))
    ]
    batches = [distinct[number % len(distinct)] for number in range(args.batches)]
    payloads = [batch.SerializeToString() for batch in batches]

    async def rate_batch(request: rating_pb2.RateUsageBatchRequest) -> None:
        response = await stub.RateUsageBatch(request, metadata=token)
        if len(response.results) != len(request.items):
            raise AssertionError("a batch came back with a result missing")

    # Check every item of one batch against the plan, then warm both up.
    checked = await stub.RateUsageBatch(batches[0], metadata=token)
    for item, result in zip(batches[0].items, checked.results, strict=True):
        if result.WhichOneof("result") != "rated":
            raise AssertionError(f"{item.endpoint} was not rated: {result.error.message}")
        if result.rated.amount_micros != expected_amount(prices, item):
            raise AssertionError(f"{item.endpoint} was rated {result.rated.amount_micros}")
    rating, echo_server = servers
    await timed(rate_batch, batches[: args.in_flight * 2], args.in_flight, rating)
    await timed(echo, payloads[: args.in_flight * 2], args.in_flight, echo_server)

    echoed, rated = await rounds(
        args.rounds,
        lambda: timed(echo, payloads * ECHO_PASSES, args.in_flight, echo_server),
        lambda: timed(rate_batch, batches, args.in_flight, rating),
    )
    size = sum(map(len, payloads)) // len(payloads)
    top, top_echo = best(rated).rate, best(echoed).rate
    print(
        f"\nRateUsageBatch: {args.batches} batches of {BATCH_ITEMS:,} items ({len(distinct)} "
        f"distinct), {args.in_flight} in flight over one channel, request {size:,} bytes, "
        f"best of {args.rounds} rounds"
    )
    line(
        "RateUsageBatch",
        f"{top * BATCH_ITEMS:,.0f} items/s ({top:,.1f} batches/s{spread(rated, BATCH_ITEMS)})",
    )
    line(
        f"echo of the same {BATCH_ITEMS:,}-item request bytes",
        f"{top_echo * BATCH_ITEMS:,.0f} items/s implied ({top_echo:,.1f} batches/s"
        f"{spread(echoed, BATCH_ITEMS)})",
    )
    line("ratio", ratios(rated, echoed))
    cpu(rated, echoed, "batch")
    line(f"target >= {BATCH_TARGET:,} items/s", verdict(top * BATCH_ITEMS >= BATCH_TARGET))


async def measure_calls(
    stub: rating_pb2_grpc.RatingServiceAsyncStub,
    echo: Callable[[bytes], Awaitable[bytes]],
    servers: tuple[psutil.Process, psutil.Process],
    token: Metadata,
    prefixes: list[str],
    prices: dict[str, int],
    now: int,
    args: argparse.Namespace,
    rng: random.Random,
) -> None:
    distinct = make_items(rng, prefixes, min(args.calls, POOL_CALLS), now)
    requests = [distinct[number % len(distinct)] for number in range(args.calls)]
    payloads = [request.SerializeToString() for request in requests]

    async def rate_one(request: rating_pb2.RateUsageRequest) -> None:
        response = await stub.RateUsage(request, metadata=token)
        if not response.currency:
            raise AssertionError(f"{request.endpoint} came back without a price")

    first = await stub.RateUsage(requests[0], metadata=token)
    if first.amount_micros != expected_amount(prices, requests[0]):
        raise AssertionError(f"{requests[0].endpoint} was rated {first.amount_micros}")
    rating, echo_server = servers
    warm = min(len(requests), 200)
    await timed(rate_one, requests[:warm], args.concurrency, rating)
    await timed(echo, payloads[:warm], args.concurrency, echo_server)

    echoed, rated = await rounds(
        args.rounds,
        lambda: timed(echo, payloads, args.concurrency, echo_server),
        lambda: timed(rate_one, requests, args.concurrency, rating),
    )
    size = sum(map(len, payloads)) / len(payloads)
    top, top_echo = best(rated).rate, best(echoed).rate
    print(
        f"\nRateUsage: {args.calls:,} single calls, {args.concurrency} callers over one "
        f"channel, request {size:.0f} bytes, best of {args.rounds} rounds"
    )
    line("RateUsage", f"{top:,.0f} calls/s{spread(rated)}")
    line("echo of the same request bytes", f"{top_echo:,.0f} calls/s{spread(echoed)}")
    line("ratio", ratios(rated, echoed))
    cpu(rated, echoed, "call")
    line(f"target ratio >= {SINGLE_TARGET:.2f}", verdict(top / top_echo >= SINGLE_TARGET))


# --- the run -----------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--batches", type=int, default=100, help="1,000-item batches per round (0: skip)"
    )
    parser.add_argument(
        "--calls", type=int, default=3000, help="single RateUsage calls per round (0: skip)"
    )
    parser.add_argument(
        "--concurrency", type=int, default=8, help="concurrent single callers over one channel"
    )
    parser.add_argument(
        "--in-flight", type=int, default=4, help="concurrent batch calls over one channel"
    )
    parser.add_argument(
        "--rounds", type=int, default=5, help="rounds of echo then service; the best counts"
    )
    parser.add_argument("--seed", type=int, default=1, help="seed of the plan and the usage")
    parser.add_argument("--echo-server", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.echo_server is not None:
        runtime.run(serve_echo(args.echo_server))
        return
    if min(args.batches, args.calls) < 0 or min(args.concurrency, args.in_flight, args.rounds) < 1:
        parser.error("counts cannot be negative, and at least one call must be in flight")

    rating_address = f"127.0.0.1:{free_port()}"
    echo_address = f"127.0.0.1:{free_port()}"
    env = {key: value for key, value in os.environ.items() if not key.startswith("METERLINE_")}
    env.update(tls.tls_environment())  # the rating service and the echo alike
    processes: list[subprocess.Popen[bytes]] = []
    with test_stores() as stores, tempfile.TemporaryDirectory(prefix="bench-rating-") as logs:
        rating_log, echo_log = Path(logs, "rating_service.log"), Path(logs, "echo.log")
        try:
            rating = spawn_service(
                "rating",
                {
                    **env,
                    "METERLINE_RATING_DATABASE_URL": stores.rating_url,
                    "METERLINE_TOKEN_SECRET": TOKEN_SECRET,
                    "METERLINE_RATING_ADDRESS": rating_address,
                    "METERLINE_LOG_LEVEL": "WARNING",
                },
                rating_log,
            )
            processes.append(rating)
            with echo_log.open("wb") as log:
                echo = subprocess.Popen(
                    [sys.executable, __file__, "--echo-server", echo_address.rpartition(":")[2]],
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            processes.append(echo)
            wait_for(rating_address, rating, rating_log)
            wait_for(echo_address, echo, echo_log)
            print(
                f"rating service pid {rating.pid} on {rating_address}, "
                f"echo server pid {echo.pid} on {echo_address}, client pid {os.getpid()}; "
                f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores",
                flush=True,
            )
            servers = (psutil.Process(rating.pid), psutil.Process(echo.pid))
            runtime.run(
                measure(rating_address, echo_address, servers, args, random.Random(args.seed))
            )
        finally:
            stop_processes(processes)
            for process, log_path in zip(processes, (rating_log, echo_log), strict=False):
                if process.returncode not in (0, -signal.SIGTERM):
                    with contextlib.suppress(OSError):
                        print(log_path.read_text(errors="replace")[-2000:], file=sys.stderr)


if __name__ == "__main__":
    main()
