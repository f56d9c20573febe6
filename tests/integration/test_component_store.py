"""The ComponentStore contract: one suite, run against the in-memory fake the unit tests
use (tests/support/component_fakes.py) and the real PostgresComponentStore, in the test
run's service database."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest

from client_sdk.components import Version
from meterline.kernel.errors import InvalidArgument
from service_manager.app.ports import ComponentStore
from service_manager.domain.components import ComponentKey, PublishedComponent
from service_manager.server import migrate
from service_manager.storage.component_store import PostgresComponentStore
from tests.support.component_fakes import InMemoryComponentStore
from tests.support.stores import StoreUrls

pytestmark = pytest.mark.integration


@pytest.fixture(params=["memory", "postgres"])
async def store(request: pytest.FixtureRequest, stores: StoreUrls) -> AsyncIterator[ComponentStore]:
    if request.param == "memory":
        yield InMemoryComponentStore()
        return
    migrate(stores.service_url)
    postgres = PostgresComponentStore(stores.service_url)
    await postgres.open()
    try:
        yield postgres
    finally:
        await postgres.close()


def component(key: ComponentKey, version: str) -> PublishedComponent:
    return PublishedComponent(
        component_id=f"cmp_{uuid.uuid4().hex[:24]}",
        key=key,
        version=Version.parse(version),
        size_bytes=10,
        sha256="0" * 64,
        signature="sig",
        public_key="key",
        signing_key_id="0123456789abcdef",
        chunk_bytes=4,
        published_at=datetime.now(UTC),
        published_by="ops",
    )


async def chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


async def failing() -> AsyncIterator[bytes]:
    yield b"abcd"
    raise InvalidArgument("the upload is not what its manifest states")


async def test_a_component_is_stored_with_its_chunks(store: ComponentStore) -> None:
    key = ComponentKey(f"c-{uuid.uuid4().hex[:8]}", "any")
    first = component(key, "1.0.0")
    assert await store.insert(first, chunks(b"abcd", b"efgh", b"ij"))
    [found] = await store.versions(key)
    assert found == first
    assert [await store.chunk(first.component_id, i) for i in range(4)] == [
        b"abcd",
        b"efgh",
        b"ij",
        None,
    ]
    assert await store.versions(ComponentKey(key.name, "linux-x86_64")) == []
    listed = await store.listed(name=key.name)
    assert [c.component_id for c in listed] == [first.component_id]
    assert any(c.component_id == first.component_id for c in await store.listed(platform="any"))


async def test_one_version_per_name_and_platform(store: ComponentStore) -> None:
    key = ComponentKey(f"c-{uuid.uuid4().hex[:8]}", "any")
    assert await store.insert(component(key, "1.2.0"), chunks(b"abcd"))
    # 1.2 is 1.2.0: refused, and nothing of it stored.
    again = component(key, "1.2")
    assert not await store.insert(again, chunks(b"wxyz"))
    assert await store.chunk(again.component_id, 0) is None
    assert await store.insert(component(key, "1.2.1"), chunks(b"abcd"))
    assert sorted(c.version.text for c in await store.versions(key)) == ["1.2.0", "1.2.1"]


async def test_a_failed_upload_stores_nothing(store: ComponentStore) -> None:
    key = ComponentKey(f"c-{uuid.uuid4().hex[:8]}", "any")
    broken = component(key, "1.0.0")
    with pytest.raises(InvalidArgument):
        await store.insert(broken, failing())
    assert await store.versions(key) == []
    assert await store.chunk(broken.component_id, 0) is None
