"""Client components: publish (operators), the update check and the download (any
caller), the list (operators). One small use case per method, over a ComponentStore."""

from __future__ import annotations

import logging
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime

from meterline.kernel.errors import InvalidArgument, NotFound
from meterline.kernel.principals import Principal, PrincipalKind
from service_manager.app.ports import ComponentStore
from service_manager.domain.components import (
    CHUNK_BYTES,
    ComponentKey,
    Manifest,
    PublishedComponent,
    Rechunker,
    UploadCheck,
    latest,
    parse_version,
    update_available,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class LatestComponent:
    component: PublishedComponent
    update_available: bool
    """Whether the caller's current version is older (or it runs none)."""


@dataclass(frozen=True, slots=True)
class Published:
    component: PublishedComponent
    created: bool
    """False when the same version, bytes and signature were already published."""


class ComponentCatalog:
    def __init__(self, store: ComponentStore, max_bytes: int) -> None:
        self._store = store
        self.max_bytes = max_bytes
        """The largest component accepted (METERLINE_COMPONENT_MAX_BYTES)."""

    async def latest(self, key: ComponentKey, current_version: str) -> LatestComponent:
        """The highest published version of a component, for any authenticated caller."""
        found = latest(await self._store.versions(key))
        if found is None:
            raise NotFound(
                f"No version of {key.name} for {key.platform} has been published on this "
                "server yet.",
                reason="NO_COMPONENT",
            )
        return LatestComponent(found, update_available(found.version, current_version))

    async def find(self, key: ComponentKey, version: str) -> PublishedComponent:
        wanted = parse_version(version)
        for component in await self._store.versions(key):
            if component.version.text == wanted.text:
                return component
        raise NotFound(
            f"There is no version {version} of {key.name} for {key.platform}.",
            reason="COMPONENT_NOT_FOUND",
        )

    async def download(
        self, key: ComponentKey, version: str, offset: int = 0
    ) -> AsyncIterator[tuple[int, bytes]]:
        """The bytes of one version from `offset` on, as (offset, data) pieces in order."""
        component = await self.find(key, version)
        if not 0 <= offset <= component.size_bytes:
            raise InvalidArgument(
                f"offset must be between 0 and the size, {component.size_bytes}; not {offset}.",
                reason="BAD_OFFSET",
            )
        return self._pieces(component, offset)

    async def _pieces(
        self, component: PublishedComponent, offset: int
    ) -> AsyncIterator[tuple[int, bytes]]:
        index, skip = divmod(offset, component.chunk_bytes)
        position = offset
        while position < component.size_bytes:
            # One short query per chunk: a slow device holds no database connection
            # while its chunk is on the way.
            data = await self._store.chunk(component.component_id, index)
            if data is None:
                raise RuntimeError(
                    f"component {component.component_id} has no chunk {index} below its size"
                )
            piece = data[skip:]
            yield position, piece
            position += len(piece)
            index, skip = index + 1, 0

    async def publish(
        self, principal: Principal, manifest: Manifest, data: AsyncIterator[bytes]
    ) -> Published:
        """Store a signed component whose upload matches its manifest. The same version
        with the same bytes and signature again is a no-op (a retried publish is safe);
        with other contents it is refused."""
        principal.require_kind(PrincipalKind.OPERATOR, action="publish client components")
        existing = self._same_version(await self._store.versions(manifest.key), manifest)
        if existing is not None:
            return await self._again(existing, manifest, data)
        component = PublishedComponent(
            component_id=f"cmp_{secrets.token_hex(12)}",
            key=manifest.key,
            version=manifest.version,
            size_bytes=manifest.size_bytes,
            sha256=manifest.sha256,
            signature=manifest.signature,
            public_key=manifest.public_key,
            signing_key_id=manifest.signing_key_id,
            chunk_bytes=CHUNK_BYTES,
            published_at=datetime.now(UTC),
            published_by=principal.subject,
        )
        if await self._store.insert(component, self._checked(manifest, data)):
            log.info(
                "published component %s %s for %s (%d bytes, key %s)",
                component.key.name,
                component.version.text,
                component.key.platform,
                component.size_bytes,
                component.signing_key_id,
            )
            return Published(component, created=True)
        # Another publish of this version committed first.
        existing = self._same_version(await self._store.versions(manifest.key), manifest)
        if existing is None:  # pragma: no cover - the store said it was there
            raise RuntimeError("the component version vanished after a conflict")
        return await self._again(existing, manifest, data)

    @staticmethod
    def _same_version(
        versions: list[PublishedComponent], manifest: Manifest
    ) -> PublishedComponent | None:
        return next((c for c in versions if c.version == manifest.version), None)

    @staticmethod
    async def _again(
        existing: PublishedComponent, manifest: Manifest, data: AsyncIterator[bytes]
    ) -> Published:
        if not existing.same_as(manifest):
            raise existing.refuse_other(manifest)
        # The stored bytes already match this manifest's digest: take the rest of the
        # upload without keeping it, so the caller's stream ends cleanly.
        async for _ in data:
            pass
        return Published(existing, created=False)

    @staticmethod
    async def _checked(manifest: Manifest, data: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        """The upload in stored-size chunks; raises (so nothing is stored) when it is not
        what the manifest states."""
        check = UploadCheck(manifest)
        pieces = Rechunker(CHUNK_BYTES)
        async for received in data:
            check.add(received)
            for chunk in pieces.push(received):
                yield chunk
        check.finish()
        rest = pieces.rest()
        if rest:
            yield rest

    async def listed(
        self, principal: Principal, name: str = "", platform: str = ""
    ) -> list[PublishedComponent]:
        """Operators' view: by name and platform, newest version first."""
        principal.require_kind(
            PrincipalKind.OPERATOR, PrincipalKind.SERVICE, action="list client components"
        )
        found = await self._store.listed(name, platform)
        found.sort(key=lambda c: c.version, reverse=True)
        found.sort(key=lambda c: (c.key.name, c.key.platform))
        return found
