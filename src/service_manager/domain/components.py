"""Client components: what a publish must show before its bytes are taken, how an upload
is checked against it, and which version is the latest. Pure rules, no I/O.

The names, the version order and the signed statement are the SDK's
(`client_sdk.components`): the device verifies with exactly the rules applied here."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from client_sdk.components import (
    DEFAULT_NAME,
    DEFAULT_PLATFORM,
    ComponentRuleError,
    Version,
    check_label,
    check_sha256,
    key_id,
    public_key_from_text,
    signature_is_valid,
    statement,
)
from meterline.kernel.errors import AlreadyExists, InvalidArgument

CHUNK_BYTES = 256 * 1024
"""Bytes per stored chunk and per downloaded message (well under the 8 MiB limit)."""


@dataclass(frozen=True, slots=True)
class ComponentKey:
    """Which component: a name and the platform it is built for."""

    name: str
    platform: str

    @classmethod
    def of(cls, name: str, platform: str) -> ComponentKey:
        """From a request: empty means the defaults ("client", "any")."""
        try:
            return cls(
                check_label(name or DEFAULT_NAME, "component name"),
                check_label(platform or DEFAULT_PLATFORM, "platform"),
            )
        except ComponentRuleError as error:
            raise InvalidArgument(str(error), reason="BAD_COMPONENT") from error


def parse_version(text: str, what: str = "version") -> Version:
    if not text:
        raise InvalidArgument(f"{what} is missing.", reason="BAD_COMPONENT")
    try:
        return Version.parse(text)
    except ComponentRuleError as error:
        raise InvalidArgument(str(error), reason="BAD_COMPONENT") from error


@dataclass(frozen=True, slots=True)
class Manifest:
    """What an operator publishes: the component, its size and digest, and the signature
    of their statement with the key whose public half is `public_key` (base64)."""

    key: ComponentKey
    version: Version
    size_bytes: int
    sha256: str
    signature: str
    public_key: str
    signing_key_id: str

    @classmethod
    def checked(
        cls,
        key: ComponentKey,
        version: str,
        size_bytes: int,
        sha256: str,
        signature: str,
        public_key: str,
        max_bytes: int,
    ) -> Manifest:
        """A manifest whose fields are usable and whose signature verifies against the
        public key it names. That key is the publisher's claim, not a trust decision:
        devices check the signature with the key they pinned."""
        parsed = parse_version(version)
        if size_bytes < 1:
            raise InvalidArgument("A component has at least one byte.", reason="BAD_COMPONENT")
        if size_bytes > max_bytes:
            raise InvalidArgument(
                f"The component has {size_bytes} bytes; this server accepts at most "
                f"{max_bytes} (METERLINE_COMPONENT_MAX_BYTES).",
                reason="COMPONENT_TOO_LARGE",
            )
        try:
            check_sha256(sha256)
            signer = public_key_from_text(public_key)
        except ComponentRuleError as error:
            raise InvalidArgument(str(error), reason="BAD_COMPONENT") from error
        signed = statement(key.name, key.platform, version, size_bytes, sha256)
        if not signature_is_valid(signer, signed, signature):
            raise InvalidArgument(
                "The signature does not match the component's name, platform, version, size "
                "and SHA-256 under the public key sent with it.",
                reason="BAD_COMPONENT_SIGNATURE",
            )
        return cls(key, parsed, size_bytes, sha256, signature, public_key, key_id(signer))


@dataclass(frozen=True, slots=True)
class PublishedComponent:
    """A component as stored: its manifest, where its bytes are, and when it came."""

    component_id: str
    key: ComponentKey
    version: Version
    size_bytes: int
    sha256: str
    signature: str
    public_key: str
    signing_key_id: str
    chunk_bytes: int
    published_at: datetime
    published_by: str

    def same_as(self, manifest: Manifest) -> bool:
        """The same version text, bytes and signature: publishing it again changes nothing."""
        return (
            self.version.text == manifest.version.text
            and self.size_bytes == manifest.size_bytes
            and self.sha256 == manifest.sha256
            and self.signature == manifest.signature
        )

    def refuse_other(self, manifest: Manifest) -> AlreadyExists:
        """The error for a publish of this version with other contents."""
        key = self.key
        return AlreadyExists(
            f"{key.name} {self.version.text} for {key.platform} is already published "
            f"(sha256 {self.sha256[:12]}…, signed by key {self.signing_key_id}); "
            f"{manifest.version.text} cannot replace it. Publish a new version.",
            reason="COMPONENT_VERSION_EXISTS",
        )


def latest(components: Iterable[PublishedComponent]) -> PublishedComponent | None:
    """The highest version among them (None when there are none)."""
    return max(components, key=lambda component: component.version, default=None)


def update_available(latest_version: Version, current_version: str) -> bool:
    """Whether a device running `current_version` ('' for none) should update."""
    if not current_version:
        return True
    return parse_version(current_version, "current_version") < latest_version


class UploadCheck:
    """Counts and hashes an upload as it arrives, and refuses it as soon as it is longer
    than the manifest says, or at the end if its size or SHA-256 differ."""

    def __init__(self, manifest: Manifest) -> None:
        self._manifest = manifest
        self._hash = hashlib.sha256()
        self.size = 0

    def add(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > self._manifest.size_bytes:
            raise InvalidArgument(
                f"The upload is longer than the {self._manifest.size_bytes} bytes its manifest "
                "states.",
                reason="COMPONENT_MISMATCH",
            )
        self._hash.update(data)

    def finish(self) -> None:
        manifest = self._manifest
        if self.size != manifest.size_bytes:
            raise InvalidArgument(
                f"The upload has {self.size} bytes; its manifest states {manifest.size_bytes}.",
                reason="COMPONENT_MISMATCH",
            )
        if self._hash.hexdigest() != manifest.sha256:
            raise InvalidArgument(
                "The upload's SHA-256 is not the one its manifest states (and signed); was the "
                "file changed after it was signed?",
                reason="COMPONENT_MISMATCH",
            )


class Rechunker:
    """Cuts bytes that arrive in pieces of any size into chunks of exactly `size` (the last
    may be shorter), so chunk n of a stored component starts at byte n * size."""

    def __init__(self, size: int = CHUNK_BYTES) -> None:
        self._size = size
        self._pending = bytearray()

    def push(self, data: bytes) -> list[bytes]:
        """Take `data`; return the chunks it completes."""
        self._pending.extend(data)
        full = []
        while len(self._pending) >= self._size:
            full.append(bytes(self._pending[: self._size]))
            del self._pending[: self._size]
        return full

    def rest(self) -> bytes:
        """What is left at the end (b'' when nothing is)."""
        rest = bytes(self._pending)
        self._pending.clear()
        return rest
