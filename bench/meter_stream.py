"""Usage updates per second through the Meter stream, beside a bare gRPC echo stream
carrying messages of the same size, measured in the same run.

    python bench/meter_stream.py [--updates 300] [--sessions 10]

The three services run as their own processes (`python -m rating_service`,
`billing_manager`, `service_manager`) on databases of their own in the PostgreSQL and
Redis the tests use (or the embedded default); the echo baseline is a grpc.aio
stream-stream server run as this script with `--echo-server PORT`. Each usage update is
a locked session update in PostgreSQL, a balance read from the billing manager and one
Redis round trip (presence and the account's event channel).
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import grpc
from tests.support.clients import device, ensure_tariff, new_account, stubs
from tests.support.stack import service_processes
from tests.support.stores import test_stores

from meterline.kernel.processes import free_port
from meterline.service.v1 import service_pb2

ECHO_SERVICE = "bench.Echo"
ECHO_METHOD = f"/{ECHO_SERVICE}/Stream"


async def serve_echo(port: int) -> None:
    async def echo(requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
        async for request in requests:
            yield request

    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                ECHO_SERVICE, {"Stream": grpc.stream_stream_rpc_method_handler(echo)}
            ),
        )
    )
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


async def echo_rate(port: int, updates: int, streams: int, size: int) -> float:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        await channel.channel_ready()
        method = channel.stream_stream(ECHO_METHOD)
        payload = b"x" * size

        async def one() -> None:
            call: Any = method()
            for _ in range(updates):
                await call.write(payload)
                await call.read()
            await call.done_writing()

        started = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(streams)))
        return updates * streams / (time.perf_counter() - started)


async def meter_rate(updates: int, streams: int) -> tuple[float, int]:
    with (
        test_stores() as stores,
        tempfile.TemporaryDirectory() as logs,
        service_processes(stores, Path(logs)) as endpoints,
    ):
        if True:
            api = stubs(endpoints)
            try:
                await ensure_tariff(api.rating, "+1", 1)
                sessions = []
                for _ in range(streams):
                    account_id = await new_account(api.billing, funded_micros=10**12)
                    started = await api.service.StartService(
                        service_pb2.StartServiceRequest(
                            account_id=account_id, service_type=1, endpoint="+1555"
                        ),
                        metadata=device(account_id),
                    )
                    sessions.append((account_id, started.session_id))
                size = service_pb2.ResourceUtilizationUpdate(
                    session_id=sessions[0][1], sequence=updates, used_units=updates
                ).ByteSize()

                async def one(account_id: str, session_id: str) -> None:
                    call: Any = api.service.Meter(metadata=device(account_id))
                    for sequence in range(1, updates + 1):
                        await call.write(
                            service_pb2.ResourceUtilizationUpdate(
                                session_id=session_id, sequence=sequence, used_units=sequence
                            )
                        )
                        response = await call.read()
                        assert response.acknowledged_sequence == sequence
                    await call.done_writing()

                began = time.perf_counter()
                await asyncio.gather(*(one(*pair) for pair in sessions))
                return updates * streams / (time.perf_counter() - began), size
            finally:
                await api.close()


async def main(arguments: argparse.Namespace) -> None:
    meter, size = await meter_rate(arguments.updates, arguments.sessions)
    port = free_port()
    # Starting the process does not block; the script only waits for it at the end.
    echo = subprocess.Popen([sys.executable, __file__, "--echo-server", str(port)])  # noqa: ASYNC220
    try:
        rate = await echo_rate(port, arguments.updates, arguments.sessions, size)
    finally:
        echo.terminate()
        echo.wait(timeout=10)
    print(
        f"streams: {arguments.sessions}, updates per stream: {arguments.updates}, "
        f"message: {size} bytes; services and echo server in processes of their own"
    )
    print(f"Meter stream:     {meter:10.0f} updates/s")
    print(f"bare echo stream: {rate:10.0f} messages/s")
    print(f"ratio:            {meter / rate:10.3f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--updates", type=int, default=300, help="updates per stream")
    parser.add_argument("--sessions", type=int, default=10, help="concurrent streams")
    parser.add_argument("--echo-server", type=int, metavar="PORT", help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.echo_server:
        asyncio.run(serve_echo(arguments.echo_server))
    else:
        asyncio.run(main(arguments))
