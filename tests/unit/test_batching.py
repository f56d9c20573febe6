"""Batched: requests that arrive while a batch is in flight go together in the next one;
a failure reaches each request of its batch and no other; repeats of a key share one
answer; a key the batch does not give is None."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

import pytest

from meterline.kernel.batching import Batched

pytestmark = pytest.mark.unit


class Source:
    """`many` of a Batched: records each batch and waits until a test lets it answer."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.release = asyncio.Event()
        self.fail_next = False

    async def many(self, keys: list[int]) -> Mapping[int, str]:
        self.batches.append(keys)
        await self.release.wait()
        if self.fail_next:
            self.fail_next = False
            raise ConnectionError("store down")
        return {key: f"v{key}" for key in keys if key >= 0}


async def test_requests_that_arrive_during_a_batch_go_together_in_the_next() -> None:
    source = Source()
    batched = Batched(source.many)
    first = asyncio.ensure_future(batched(1))
    await asyncio.sleep(0)  # the first batch is in flight
    await asyncio.sleep(0)
    later = [asyncio.ensure_future(batched(key)) for key in (2, 3, 2, -1)]
    await asyncio.sleep(0)
    assert source.batches == [[1]]
    source.release.set()
    assert await asyncio.wait_for(asyncio.gather(first, *later), 2) == [
        "v1",
        "v2",
        "v3",
        "v2",
        None,
    ]
    assert source.batches == [[1], [2, 3, -1]]  # one call for all four, 2 asked once


async def test_a_failure_reaches_its_batch_only() -> None:
    source = Source()
    batched = Batched(source.many)
    source.fail_next = True
    failing = [asyncio.ensure_future(batched(key)) for key in (1, 2)]
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    after = asyncio.ensure_future(batched(3))
    source.release.set()
    for request in failing:
        with pytest.raises(ConnectionError):
            await asyncio.wait_for(request, 2)
    assert await asyncio.wait_for(after, 2) == "v3"
    assert source.batches == [[1, 2], [3]]


async def test_a_batch_holds_at_most_max_batch_requests() -> None:
    source = Source()
    source.release.set()
    batched = Batched(source.many, max_batch=2)
    answers = await asyncio.wait_for(asyncio.gather(*(batched(key) for key in range(5))), 2)
    assert answers == ["v0", "v1", "v2", "v3", "v4"]
    assert source.batches == [[0, 1], [2, 3], [4]]
