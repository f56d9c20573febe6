"""A PostgreSQL or a Redis of a test's own, that the test may stop and start again (the
shared ones must never be stopped). Each is the embedded server in a data folder of its
own, behind a `TcpProxy`, so its address stays the same across restarts (the embedded
servers pick a new free port every time they start)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from urllib.parse import urlparse

import redis

from meterline.kernel.embedded import (
    start_embedded_postgres,
    start_embedded_redis,
    stop_embedded_postgres,
    stop_embedded_redis,
)
from tests.support.tcp_proxy import HOST, TcpProxy


def _port(url: str) -> int:
    port = urlparse(url).port
    assert port is not None, url
    return port


class PrivatePostgres:
    """`url` names the `postgres` database of the trusted superuser."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        url, _ = start_embedded_postgres(data_dir)
        self.proxy = TcpProxy(_port(url))
        self.url = f"postgresql+psycopg://postgres@{HOST}:{self.proxy.port}/postgres"

    async def stop(self) -> None:
        await asyncio.to_thread(stop_embedded_postgres, self.data_dir)
        self.proxy.pause()

    async def start(self) -> None:
        url, _ = await asyncio.to_thread(start_embedded_postgres, self.data_dir)
        self.proxy.resume(_port(url))

    def close(self) -> None:
        stop_embedded_postgres(self.data_dir)
        self.proxy.close()


class PrivateRedis:
    """`url` is where clients connect; `flushall()` wipes it without a restart."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self._server_url, _ = start_embedded_redis(data_dir)
        self.proxy = TcpProxy(_port(self._server_url))
        self.url = f"redis://{HOST}:{self.proxy.port}/0"

    async def stop(self) -> None:
        await asyncio.to_thread(stop_embedded_redis, self.data_dir)
        self.proxy.pause()

    async def start(self) -> None:
        self._server_url, _ = await asyncio.to_thread(start_embedded_redis, self.data_dir)
        self.proxy.resume(_port(self._server_url))

    def flushall(self) -> None:
        with redis.Redis.from_url(self._server_url) as client:
            client.flushall()

    def close(self) -> None:
        stop_embedded_redis(self.data_dir)
        self.proxy.close()
