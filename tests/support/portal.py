"""The end users' web page for tests and benches: the real ASGI app under uvicorn, in this
event loop, on a free loopback port, over HTTPS with the test run's server certificate,
calling a running stack over TLS. And headless Chromium (Debian's, driven by Playwright)
to look at it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import uvicorn
from playwright.async_api import ViewportSize

from meterline.kernel.config import Endpoints, Settings
from meterline.web.server import bind, uvicorn_config
from tests.support.tls import server_settings

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
PHONE: ViewportSize = {"width": 390, "height": 844}
"""A phone-sized viewport: the page must read well on one."""


def chromium_executable() -> str | None:
    """Debian's Chromium (or METERLINE_CHROMIUM); None when there is none."""
    for candidate in (
        os.environ.get("METERLINE_CHROMIUM", ""),
        shutil.which("chromium") or "",
        "/usr/bin/chromium",
    ):
        if candidate and Path(candidate).exists():
            return candidate
    return None


@asynccontextmanager
async def running_page(endpoints: Endpoints) -> AsyncIterator[str]:
    """The web page for `endpoints`; its base URL (https://127.0.0.1:PORT)."""
    settings = Settings(endpoints=endpoints, tls=server_settings())
    sock = bind("127.0.0.1:0")
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn_config(settings, settings.tls))
    # In a test's own loop: leave its signal handlers alone.
    server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        async with asyncio.timeout(20):
            while not server.started:
                if task.done():
                    task.result()
                await asyncio.sleep(0.02)
        yield f"https://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, timeout=20)
        sock.close()
