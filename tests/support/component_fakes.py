"""An in-memory ComponentStore for unit tests; tests/integration/test_component_store.py
runs one suite against it and the PostgreSQL store, so it is known to behave the same."""

from __future__ import annotations

from collections.abc import AsyncIterator

from service_manager.domain.components import ComponentKey, PublishedComponent


class InMemoryComponentStore:
    def __init__(self) -> None:
        self.components: dict[str, PublishedComponent] = {}
        self.chunks: dict[str, list[bytes]] = {}

    async def versions(self, key: ComponentKey) -> list[PublishedComponent]:
        return [c for c in self.components.values() if c.key == key]

    async def listed(self, name: str = "", platform: str = "") -> list[PublishedComponent]:
        return [
            c
            for c in self.components.values()
            if (not name or c.key.name == name) and (not platform or c.key.platform == platform)
        ]

    async def insert(self, component: PublishedComponent, chunks: AsyncIterator[bytes]) -> bool:
        taken = any(
            c.key == component.key and c.version.normal == component.version.normal
            for c in self.components.values()
        )
        if taken:
            return False
        # Like a transaction: nothing is kept unless every chunk arrived.
        stored = [chunk async for chunk in chunks]
        self.components[component.component_id] = component
        self.chunks[component.component_id] = stored
        return True

    async def chunk(self, component_id: str, index: int) -> bytes | None:
        stored = self.chunks.get(component_id, [])
        return stored[index] if 0 <= index < len(stored) else None
