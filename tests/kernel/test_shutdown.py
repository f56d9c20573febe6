"""A service's shutdown always ends: a background task that ignores its cancellation or
a closer that hangs is named in the log and left behind, and the steps after it still
run (a real gRPC server on a loopback port)."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from meterline.kernel import runtime
from meterline.kernel.grpc_server import start_server
from meterline.kernel.runtime import ServiceHandle

pytestmark = pytest.mark.unit


async def test_a_hanging_step_is_named_and_the_rest_still_closes(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(runtime, "CLOSE_STEP_SECONDS", 0.3)
    server = await start_server("127.0.0.1:0", [], ["test.Nothing"], None)
    closed: list[str] = []
    never = asyncio.Event()

    async def stubborn() -> None:
        while not never.is_set():
            try:
                await never.wait()
            except asyncio.CancelledError:
                continue  # ignores its cancellation

    async def hangs() -> None:
        await never.wait()

    async def first() -> None:
        closed.append("first")

    handle = ServiceHandle(server, closers=[first, hangs])
    handle.tasks.append(asyncio.create_task(stubborn(), name="stubborn-task"))
    await asyncio.sleep(0)  # it is waiting
    began = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="meterline.kernel.runtime"):
        await handle.close(grace=0.1)
    assert time.monotonic() - began < 5
    assert closed == ["first"]  # run after the one that hung (closers run in reverse)
    assert "stubborn-task did not stop" in caplog.text
    assert "hangs" in caplog.text and "took over 0.3 s" in caplog.text
    never.set()  # lets the stubborn task and the hung closer end
    await asyncio.wait_for(handle.tasks[0], 5)
