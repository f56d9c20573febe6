"""Many concurrent single-key requests as few batch calls: while one batch is in flight,
the requests that arrive wait and go together in the next. A quiet caller waits for no
timer (its batch starts on the loop's next turn); a busy one gets batches as large as its
load, which is when one statement for many rows pays.

aiodataloader does the former only: it sends what one turn of the loop gathered, so under
load it sends many small batches side by side; and it caches results, which a write must
not."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable, Mapping
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class Batched(Generic[K, V]):
    """`await batched(key)`: the value `many` gives for `key` (None where it gives none),
    `many` being called with the distinct keys of up to `max_batch` waiting requests at a
    time, one call at a time. A failure of `many` is raised to every request of its
    batch."""

    def __init__(
        self, many: Callable[[list[K]], Awaitable[Mapping[K, V]]], max_batch: int = 500
    ) -> None:
        self._many = many
        self._max_batch = max_batch
        self._waiting: list[tuple[K, asyncio.Future[V | None]]] = []
        self._runner: asyncio.Task[None] | None = None

    async def __call__(self, key: K) -> V | None:
        future: asyncio.Future[V | None] = asyncio.get_running_loop().create_future()
        self._waiting.append((key, future))
        if self._runner is None:
            self._runner = asyncio.create_task(self._run())
        return await future

    async def _run(self) -> None:
        try:
            while self._waiting:
                batch = self._waiting[: self._max_batch]
                del self._waiting[: self._max_batch]
                keys = list(dict.fromkeys(key for key, _ in batch))
                try:
                    found = await self._many(keys)
                except asyncio.CancelledError:
                    for _, future in batch:
                        future.cancel()
                    raise
                except Exception as error:
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(error)
                    continue
                for key, future in batch:
                    if not future.done():
                        future.set_result(found.get(key))
        finally:
            self._runner = None
            for _, future in self._waiting:  # only left when the runner was cancelled
                if not future.done():
                    future.cancel()
            self._waiting.clear()
