"""Running one service process: start, serve until signalled, close everything."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

from meterline.kernel.config import ConfigError
from meterline.kernel.grpc_server import RunningServer
from meterline.kernel.startup import StoreUnreachable
from meterline.kernel.store_errors import one_line, store_outage

log = logging.getLogger(__name__)
T = TypeVar("T")

CLOSE_STEP_SECONDS = 10.0
"""The longest any one step of a shutdown may take (stopping the tasks, one closer)."""


def _where(task: asyncio.Task[None]) -> str:
    """Where a task is waiting: its coroutine and its innermost frame."""
    frames = task.get_stack()
    coroutine = getattr(task.get_coro(), "__qualname__", "?")
    if not frames:
        return f" ({coroutine})"
    code, line = frames[-1].f_code, frames[-1].f_lineno
    return f" ({coroutine}, waiting in {code.co_qualname} at {code.co_filename}:{line})"


def _name(close: Callable[[], Awaitable[None]]) -> str:
    return str(getattr(close, "__qualname__", None) or close)


@dataclass
class ServiceHandle:
    """A started service: its gRPC server, its background tasks, what to close after."""

    server: RunningServer
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    closers: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    @property
    def port(self) -> int:
        return self.server.port

    async def close(self, grace: float = 5.0) -> None:
        """Stop the background tasks, the server (answering what is in flight for up to
        `grace` seconds) and then each closer in reverse order. Every step is bounded, so
        a shutdown always ends: a step that does not finish in time is named in the log
        and left behind."""
        for task in self.tasks:
            task.cancel()
        if self.tasks:
            _, pending = await asyncio.wait(self.tasks, timeout=CLOSE_STEP_SECONDS)
            for task in pending:
                log.warning(
                    "shutdown: background task %s did not stop; left%s",
                    task.get_name(),
                    _where(task),
                )
            for task in self.tasks:
                if task.done() and not task.cancelled() and task.exception() is not None:
                    log.warning(
                        "shutdown: background task %s had failed: %s",
                        task.get_name(),
                        task.exception(),
                    )
        await self.server.stop(grace)
        for close in reversed(self.closers):
            try:
                async with asyncio.timeout(CLOSE_STEP_SECONDS):
                    await close()
            except TimeoutError:
                log.warning("shutdown: %s took over %g s; left", _name(close), CLOSE_STEP_SECONDS)


def run(main: Coroutine[Any, Any, T]) -> T:
    """Run `main` on the event loop every Meterline process uses: uvloop where it is
    installed (measured: 10-12 % more usage updates per second than the default loop,
    bench/meter_stream.py), else asyncio's own."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux and macOS
        return asyncio.run(main)
    return uvloop.run(main)


def run_until_signalled(start: Callable[[], Awaitable[ServiceHandle]]) -> None:
    """Start a service and serve until SIGTERM or SIGINT, then drain gracefully."""

    async def main() -> None:
        handle = await start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await stop.wait()
        log.info("shutting down")
        await handle.close()

    try:
        run(main())
    except ConfigError as error:
        # A setting that cannot be used: the sentence says what to set; no traceback.
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    except StoreUnreachable as error:
        # A store down at start: one sentence naming it (kernel/startup.py); exit 1, so
        # whoever runs the service restarts it.
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(1) from None
    except Exception as error:
        # A store that went away after the check, while the service was starting.
        if store_outage(error) is None:
            raise
        print(
            f"error: a store stopped answering while the service was starting "
            f"({one_line(error)}); check it and start the service again.",
            file=sys.stderr,
        )
        raise SystemExit(1) from None
