"""Fixtures shared by every suite: the test run's real stores and a running stack."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from tests.support.clients import Stubs, stubs
from tests.support.exclusive import machine_share
from tests.support.stack import InProcessStack, start_in_process
from tests.support.stores import StoreUrls, test_stores


@pytest.fixture(scope="session")
def stores() -> Iterator[StoreUrls]:
    with test_stores() as found:
        yield found


@pytest.fixture(scope="session")
async def stack(stores: StoreUrls) -> AsyncIterator[InProcessStack]:
    running = await start_in_process(stores)
    try:
        yield running
    finally:
        await running.close()


@pytest.fixture
async def api(stack: InProcessStack) -> AsyncIterator[Stubs]:
    connected = stubs(stack.endpoints)
    try:
        yield connected
    finally:
        await connected.close()


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    """Outside pytest-timeout's timer: waiting for the machine is not the test's time."""
    with machine_share(exclusive=item.get_closest_marker("exclusive") is not None):
        yield
