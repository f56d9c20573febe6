"""A server lets calls wait while its event loop is busy, instead of cancelling them.

Thousands of devices reconnect at once after a failover. Their calls arrive faster than a
saturated server's loop takes them up, and gRPC's defaults cancel every call beyond 1,000
waiting (at random, and beyond 3,000 all of them) with a bare CANCELLED that a device
cannot tell from a dropped call. Here a real server's loop is blocked while a burst of
3,500 unary calls arrives from another process; all are answered once the loop is free.
The same burst against a server with gRPC's default limits shows the cancellations, so
the burst does fill the queue."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from tests.support.call_burst import METHOD_BLOCK, METHOD_ECHO

from meterline.kernel import grpc_server
from meterline.kernel.grpc_server import start_server

pytestmark = pytest.mark.unit

BURST = 3_500
"""More than gRPC's default hard limit of 3,000 waiting calls."""
ROOT = Path(__file__).resolve().parents[2]


def blocking_service(sent_file: Path) -> Callable[[grpc.aio.Server], None]:
    def block(request: bytes, context: object) -> bytes:
        deadline = time.monotonic() + 60
        while not sent_file.exists() and time.monotonic() < deadline:
            time.sleep(0.05)  # blocks the loop: new calls wait in gRPC's core
        return b""

    async def echo(request: bytes, context: object) -> bytes:
        return request

    def register(server: grpc.aio.Server) -> None:
        handlers = {
            name.rpartition("/")[2]: grpc.unary_unary_rpc_method_handler(behaviour)
            for name, behaviour in ((METHOD_BLOCK, block), (METHOD_ECHO, echo))
        }
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("test.Pending", handlers),)
        )

    return register


async def burst_codes(tmp_path: Path) -> dict[str, int]:
    sent_file = tmp_path / "sent"
    server = await start_server("127.0.0.1:0", [blocking_service(sent_file)], [], None)
    try:
        client = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.support.call_burst",
            str(server.port),
            str(BURST),
            str(sent_file),
            cwd=ROOT,
            stdout=subprocess.PIPE,
        )
        out, _ = await asyncio.wait_for(client.communicate(), 150)
        assert client.returncode == 0
        codes: dict[str, int] = json.loads(out)
        return codes
    finally:
        await server.server.stop(None)


async def test_a_burst_beyond_grpcs_default_queue_is_answered_in_full(tmp_path: Path) -> None:
    codes = await burst_codes(tmp_path)
    assert codes == {"OK": BURST + 1}  # the Block call and every Echo


async def test_grpcs_default_queue_cancels_such_a_burst(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    defaults = [
        option
        for option in grpc_server.SERVER_OPTIONS
        if not option[0].startswith("grpc.server.max_pending_requests")
    ]
    monkeypatch.setattr(grpc_server, "SERVER_OPTIONS", tuple(defaults))
    codes = await burst_codes(tmp_path)
    assert codes.get("CANCELLED", 0) >= BURST - 3_000, codes
    assert codes.get("OK", 0) + codes.get("CANCELLED", 0) == BURST + 1, codes
