"""A burst of unary calls, sent while the server's event loop is blocked, run as its own
process: `python -m tests.support.call_burst PORT COUNT SENT_FILE`.

First one `Block` call, which blocks the server's loop until SENT_FILE exists; then COUNT
`Echo` calls at once over ten connections, which wait in the server's gRPC core to be
taken up. Once they are all written, SENT_FILE is made. Prints one JSON line: the count of
each status code the calls ended with."""

from __future__ import annotations

import asyncio
import json
import sys
from collections import Counter
from pathlib import Path

import grpc

METHOD_BLOCK = "/test.Pending/Block"
METHOD_ECHO = "/test.Pending/Echo"
CHANNELS = 10


async def burst(port: int, count: int, sent_file: Path) -> Counter[str]:
    own_connection = [("grpc.use_local_subchannel_pool", 1)]
    channels = [
        grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=own_connection)
        for _ in range(CHANNELS)
    ]
    await asyncio.gather(*(channel.channel_ready() for channel in channels))
    block = asyncio.ensure_future(channels[0].unary_unary(METHOD_BLOCK)(b"", timeout=120))
    await asyncio.sleep(0.5)  # the server has taken the Block call up and is blocked
    calls = [
        channels[index % CHANNELS].unary_unary(METHOD_ECHO)(b"x" * 40, timeout=120)
        for index in range(count)
    ]
    waiting = [asyncio.ensure_future(call) for call in calls]
    await asyncio.sleep(1.5)  # written to the sockets: the server's core holds them
    sent_file.touch()  # noqa: ASYNC240  # one empty file, once
    codes: Counter[str] = Counter()
    for outcome in await asyncio.gather(block, *waiting, return_exceptions=True):
        if isinstance(outcome, grpc.aio.AioRpcError):
            codes[outcome.code().name] += 1
        elif isinstance(outcome, BaseException):
            codes[type(outcome).__name__] += 1
        else:
            codes["OK"] += 1
    for channel in channels:
        await channel.close()
    return codes


if __name__ == "__main__":
    port, count, sent = int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
    print(json.dumps(asyncio.run(burst(port, count, sent))))
