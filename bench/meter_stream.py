"""Usage updates per second through the Meter stream, beside a bare gRPC echo stream
carrying messages of the same size, measured in the same run.

    python bench/meter_stream.py [--updates 2000] [--sessions 20]

Uses the PostgreSQL and Redis the tests use (or the embedded default) in databases of
its own, and the three services in this process on loopback ports.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import grpc
from tests.support.clients import device, ensure_tariff, new_account, stubs
from tests.support.stack import start_in_process
from tests.support.stores import test_stores

from meterline.service.v1 import service_pb2

ECHO_METHOD = "/bench.Echo/Stream"


async def echo_server() -> tuple[grpc.aio.Server, int]:
    async def echo(requests, context):  # type: ignore[no-untyped-def]
        async for request in requests:
            yield request

    handler = grpc.method_handlers_generic_handler(
        "bench.Echo", {"Stream": grpc.stream_stream_rpc_method_handler(echo)}
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, port


async def echo_rate(port: int, updates: int, streams: int, size: int) -> float:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        method = channel.stream_stream(ECHO_METHOD)
        payload = b"x" * size

        async def one() -> None:
            call = method()
            for _ in range(updates):
                await call.write(payload)
                await call.read()
            await call.done_writing()

        started = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(streams)))
        return updates * streams / (time.perf_counter() - started)


async def meter_rate(updates: int, streams: int) -> tuple[float, int]:
    with test_stores() as stores:
        stack = await start_in_process(stores)
        api = stubs(stack.endpoints)
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
                call = api.service.Meter(metadata=device(account_id))
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
            await stack.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--updates", type=int, default=500, help="updates per stream")
    parser.add_argument("--sessions", type=int, default=10, help="concurrent streams")
    args = parser.parse_args()
    meter, size = await meter_rate(args.updates, args.sessions)
    server, port = await echo_server()
    try:
        echo = await echo_rate(port, args.updates, args.sessions, size)
    finally:
        await server.stop(None)
    print(f"streams: {args.sessions}, updates per stream: {args.updates}, message: {size} bytes")
    print(f"Meter stream:     {meter:10.0f} updates/s")
    print(f"bare echo stream: {echo:10.0f} messages/s")
    print(f"ratio:            {meter / echo:10.3f}")


if __name__ == "__main__":
    asyncio.run(main())
