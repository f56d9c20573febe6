"""A loopback TCP forwarder on a fixed port, for the store outage tests.

The embedded PostgreSQL and Redis pick a new free port every time they start, but a
running service keeps the URL it was given. The services are pointed at this forwarder
instead: `pause()` stops listening and cuts every connection (to a client, exactly what a
server that is down looks like: connection refused), and `resume(port)` listens again on
the same port and forwards to the restarted server. It runs its own event loop in a
thread, so a test blocking in a synchronous call does not stall it."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

HOST = "127.0.0.1"
T = TypeVar("T")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


class TcpProxy:
    def __init__(self, target_port: int) -> None:
        self.port = _free_port()
        self._target = target_port
        self._server: asyncio.Server | None = None
        self._transports: set[asyncio.WriteTransport] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name=f"tcp-proxy-{self.port}", daemon=True
        )
        self._thread.start()
        self._run(self._listen())

    def _run(self, coroutine: Coroutine[Any, Any, T], timeout: float = 10.0) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout)

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(
            self._forward, HOST, self.port, reuse_address=True
        )

    async def _forward(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._transports.add(writer.transport)
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(HOST, self._target)
        except OSError:
            writer.transport.abort()
            self._transports.discard(writer.transport)
            return
        self._transports.add(upstream_writer.transport)
        pumps = [
            asyncio.create_task(self._pump(reader, upstream_writer)),
            asyncio.create_task(self._pump(upstream_reader, writer)),
        ]
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pump in pumps:
                pump.cancel()
            for transport in (writer.transport, upstream_writer.transport):
                transport.abort()
                self._transports.discard(transport)

    @staticmethod
    async def _pump(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, ConnectionError):
            while data := await source.read(65536):
                sink.write(data)
                await sink.drain()

    async def _stop_listening(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for transport in list(self._transports):
            transport.abort()
        self._transports.clear()

    async def _retarget(self, target_port: int) -> None:
        self._target = target_port
        if self._server is None:
            await self._listen()

    def pause(self) -> None:
        """Refuse new connections and cut the open ones, as a stopped server does."""
        self._run(self._stop_listening())

    def resume(self, target_port: int) -> None:
        """Listen again, on the same port, forwarding to `target_port`."""
        self._run(self._retarget(target_port))

    async def _shutdown(self) -> None:
        await self._stop_listening()
        tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def close(self) -> None:
        self._run(self._shutdown())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._loop.close()
