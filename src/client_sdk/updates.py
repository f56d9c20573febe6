"""The component update check: ask the service manager for the latest published client
component, download it when the host application asks, and hand it back only once its
SHA-256 and its Ed25519 signature check out against the public key pinned in the
device's configuration. Nothing is ever installed: what to do with a verified package
is the host application's decision.

    updates = ComponentUpdates(UpdateConfig(public_key=PINNED, current_version="1.3.0"),
                               run, metadata)
    update = await updates.check()            # UpdateAvailable, or None
    if update is not None:
        package = await updates.download(update)     # VerifiedPackage, or an UpdateError

Errors (all `MeterlineClientError`s):

    UpdateError               the update cannot be used (too large, a bad advertisement)
    ├── PackageTampered       PACKAGE_TAMPERED: the bytes are not the advertised ones
    ├── SignatureInvalid      SIGNATURE_INVALID: the signature does not verify with the
    │                         pinned key (wrong signature, or one made for another
    │                         name, platform or version)
    └── UntrustedSigningKey   UNTRUSTED_SIGNING_KEY: signed by another key than the pinned
                              one (pin the installation's key: `meterline component key`)
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO, Protocol, TypeVar

import grpc
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from client_sdk.components import (
    DEFAULT_NAME,
    DEFAULT_PLATFORM,
    ComponentRuleError,
    Version,
    check_label,
    key_id,
    public_key_from_text,
    signature_is_valid,
    statement,
)
from client_sdk.errors import MeterlineClientError, error_reason, from_rpc_error
from meterline.service.v1 import service_pb2, service_pb2_grpc

__all__ = [
    "ChannelRunner",
    "ComponentUpdates",
    "PackageTampered",
    "SignatureInvalid",
    "UntrustedSigningKey",
    "UpdateAvailable",
    "UpdateConfig",
    "UpdateError",
    "VerifiedPackage",
    "on_channel",
    "verify_package",
]

log = logging.getLogger(__name__)
T = TypeVar("T")
Metadata = Sequence[tuple[str, str]]


class UpdateError(MeterlineClientError):
    """A component update that cannot be used; the message says why."""

    def __init__(self, message: str, reason: str = "UPDATE_REFUSED") -> None:
        super().__init__(message, reason=reason)


class PackageTampered(UpdateError):
    """The downloaded bytes are not the advertised ones (size or SHA-256)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, "PACKAGE_TAMPERED")


class SignatureInvalid(UpdateError):
    """The signature does not verify with the pinned key."""

    def __init__(self, message: str) -> None:
        super().__init__(message, "SIGNATURE_INVALID")


class UntrustedSigningKey(UpdateError):
    """The component was signed by another key than the one pinned on the device."""

    def __init__(self, message: str) -> None:
        super().__init__(message, "UNTRUSTED_SIGNING_KEY")


@dataclass(frozen=True)
class UpdateConfig:
    """What the device checks for and whom it trusts."""

    public_key: str
    """The installation's component signing key as `meterline component key` prints it:
    base64 of its 32 raw bytes, or a PEM `PUBLIC KEY` block. Pinned: only packages this
    key signed are ever handed back, and a key a server sends is never used."""
    component: str = DEFAULT_NAME
    """The component's name, as the operator published it (`--name`)."""
    platform: str = DEFAULT_PLATFORM
    """The platform it is built for (`--platform`); "any" for one built for all."""
    current_version: str = ""
    """The version the device runs; only a newer one is offered. '' when it runs none."""
    max_bytes: int = 256 * 1024 * 1024
    """A component advertised as larger is refused before any byte is downloaded."""
    download_timeout: float = 600.0
    """Seconds one download attempt may take."""

    def __post_init__(self) -> None:
        public_key_from_text(self.public_key)
        check_label(self.component, "component")
        check_label(self.platform, "platform")
        if self.current_version:
            Version.parse(self.current_version)
        if self.max_bytes < 1:
            raise ValueError("max_bytes must be at least 1")
        if self.download_timeout <= 0:
            raise ValueError("download_timeout must be more than 0 seconds")

    @property
    def pinned_key(self) -> Ed25519PublicKey:
        return public_key_from_text(self.public_key)


@dataclass(frozen=True, slots=True)
class UpdateAvailable:
    """A newer component the server advertises; not yet downloaded nor verified."""

    name: str
    platform: str
    version: str
    size_bytes: int
    sha256: str
    """The advertised SHA-256 (64 lowercase hex digits); checked after the download."""
    signature: str
    """The advertised Ed25519 signature (base64); checked after the download."""
    signing_key_id: str
    """The key the server says signed it (for messages only; the pinned key decides)."""
    published_at: datetime | None


@dataclass(frozen=True, slots=True)
class VerifiedPackage:
    """A downloaded component whose size, SHA-256 and signature all check out."""

    name: str
    platform: str
    version: str
    size_bytes: int
    sha256: str
    data: bytes | None
    """The bytes, when downloaded to memory."""
    path: Path | None
    """The file, when downloaded to a destination."""

    def read_bytes(self) -> bytes:
        if self.data is not None:
            return self.data
        assert self.path is not None
        return self.path.read_bytes()


def verify_package(
    pinned: Ed25519PublicKey, update: UpdateAvailable, size: int, sha256: str
) -> None:
    """Refuse a package whose bytes (`size`, `sha256`: what was received) are not the
    advertised ones, or whose signature of the statement of (name, platform, version,
    size, sha256) does not verify with the pinned key."""
    if size != update.size_bytes or sha256 != update.sha256:
        raise PackageTampered(
            f"{update.name} {update.version}: the download ({size} bytes, sha256 "
            f"{sha256[:12]}…) is not the advertised package ({update.size_bytes} bytes, "
            f"sha256 {update.sha256[:12]}…); it was refused."
        )
    try:
        signed = statement(update.name, update.platform, update.version, size, sha256)
    except ComponentRuleError as error:
        raise UpdateError(f"The advertised component cannot be verified: {error}") from error
    if signature_is_valid(pinned, signed, update.signature):
        return
    pinned_id = key_id(pinned)
    if update.signing_key_id and update.signing_key_id != pinned_id:
        raise UntrustedSigningKey(
            f"{update.name} {update.version} was signed by key {update.signing_key_id}, but "
            f"this device trusts only key {pinned_id}; it was refused. Pin the "
            "installation's key (`meterline component key`)."
        )
    raise SignatureInvalid(
        f"The signature of {update.name} {update.version} for {update.platform} does not "
        f"verify with the pinned key {pinned_id}; the package was refused."
    )


class ChannelRunner(Protocol):
    """Runs an operation on a channel to a service manager, and may run it again on
    another after a failure it can recover from (the client's failover does)."""

    def __call__(self, operation: Callable[[grpc.aio.Channel], Awaitable[T]], /) -> Awaitable[T]:
        """The operation's result, or the SDK error its failure stands for."""


def on_channel(channel: grpc.aio.Channel) -> ChannelRunner:
    """A runner with one channel and no failover: a failed call raises the SDK's error."""

    async def run(operation: Callable[[grpc.aio.Channel], Awaitable[T]]) -> T:
        try:
            return await operation(channel)
        except grpc.aio.AioRpcError as error:
            raise from_rpc_error(error) from error

    return run


class _Transfer:
    """One download's progress: bytes in order, hashed as they come, to memory or to a
    `.part` file beside the destination. Survives a resume on another server."""

    def __init__(self, update: UpdateAvailable, destination: Path | None) -> None:
        self.update = update
        self.offset = 0
        self._hash = hashlib.sha256()
        self._memory = bytearray()
        self.destination = destination
        self.part = (
            None if destination is None else destination.with_name(destination.name + ".part")
        )
        self._file: BinaryIO | None = None

    async def add(self, offset: int, data: bytes) -> None:
        update = self.update
        if offset != self.offset:
            raise PackageTampered(
                f"{update.name} {update.version}: the server sent bytes at {offset} where "
                f"{self.offset} was next; the download was refused."
            )
        if self.offset + len(data) > update.size_bytes:
            raise PackageTampered(
                f"{update.name} {update.version}: the server sent more than the advertised "
                f"{update.size_bytes} bytes; the download was refused."
            )
        self._hash.update(data)
        self.offset += len(data)
        if self.part is None:
            self._memory.extend(data)
            return
        if self._file is None:
            self.part.parent.mkdir(parents=True, exist_ok=True)
            self._file = await asyncio.to_thread(self.part.open, "wb")
        await asyncio.to_thread(self._file.write, data)

    async def finish(self, pinned: Ed25519PublicKey) -> VerifiedPackage:
        update = self.update
        try:
            verify_package(pinned, update, self.offset, self._hash.hexdigest())
            await self._close()
            if self.part is not None and self.destination is not None:
                await asyncio.to_thread(os.replace, self.part, self.destination)
        except BaseException:
            await self.discard()
            raise
        return VerifiedPackage(
            name=update.name,
            platform=update.platform,
            version=update.version,
            size_bytes=self.offset,
            sha256=self._hash.hexdigest(),
            data=bytes(self._memory) if self.destination is None else None,
            path=self.destination,
        )

    async def _close(self) -> None:
        if self._file is not None:
            await asyncio.to_thread(self._file.close)
            self._file = None

    async def discard(self) -> None:
        await self._close()
        self._memory.clear()
        if self.part is not None:
            await asyncio.to_thread(self.part.unlink, True)


class ComponentUpdates:
    """The update check and the verified download, over a service manager the runner
    picks (see `on_channel`, or the client's `check_for_update()` / `download_update()`).
    `metadata` gives the call's access token metadata."""

    def __init__(
        self,
        config: UpdateConfig,
        run: ChannelRunner,
        metadata: Callable[[], Awaitable[Metadata]],
        call_timeout: float = 10.0,
    ) -> None:
        self.config = config
        self._run = run
        self._metadata = metadata
        self._call_timeout = call_timeout

    async def check(self) -> UpdateAvailable | None:
        """The newer component the server advertises, or None when there is none (none
        published, or not newer than `current_version`)."""
        config = self.config
        request = service_pb2.GetLatestComponentRequest(
            name=config.component,
            platform=config.platform,
            current_version=config.current_version,
        )

        async def call(channel: grpc.aio.Channel) -> service_pb2.Component | None:
            stub = service_pb2_grpc.ServiceManagerStub(channel)
            try:
                return await stub.GetLatestComponent(
                    request, metadata=await self._metadata(), timeout=self._call_timeout
                )
            except grpc.aio.AioRpcError as error:
                if error.code() is grpc.StatusCode.NOT_FOUND and (
                    error_reason(error) == "NO_COMPONENT"
                ):
                    return None
                raise

        found = await self._run(call)
        if found is None:
            return None
        return self._offer(found)

    def _offer(self, found: service_pb2.Component) -> UpdateAvailable | None:
        config = self.config
        try:
            version = Version.parse(found.version)
        except ComponentRuleError as error:
            raise UpdateError(
                f"The server advertises a version that cannot be used: {error}",
                "BAD_COMPONENT_ADVERTISEMENT",
            ) from error
        # The device decides what is newer, not the server: an older (validly signed)
        # version offered as an update would be a downgrade.
        if config.current_version and version <= Version.parse(config.current_version):
            if found.update_available:
                log.warning(
                    "the server offers %s %s, which is not newer than %s; ignored",
                    config.component,
                    found.version,
                    config.current_version,
                )
            return None
        if found.size_bytes > config.max_bytes:
            raise UpdateError(
                f"{config.component} {found.version} has {found.size_bytes} bytes, more than "
                f"this device accepts ({config.max_bytes}).",
                "COMPONENT_TOO_LARGE",
            )
        published = (
            found.publish_time.ToDatetime(tzinfo=UTC) if found.HasField("publish_time") else None
        )
        # Name and platform are the device's own: a package signed for another
        # component or platform then fails verification.
        return UpdateAvailable(
            name=config.component,
            platform=config.platform,
            version=found.version,
            size_bytes=found.size_bytes,
            sha256=found.sha256,
            signature=found.signature,
            signing_key_id=found.signing_key_id,
            published_at=published,
        )

    async def download(
        self, update: UpdateAvailable, destination: Path | None = None
    ) -> VerifiedPackage:
        """Download `update` and verify it. Into memory, or, with `destination`, into
        that file (written as `<destination>.part` and renamed only once verified; a
        refused download leaves no file). A broken stream resumes where it stopped when
        the runner tries again."""
        if update.size_bytes > self.config.max_bytes:
            raise UpdateError(
                f"{update.name} {update.version} has {update.size_bytes} bytes, more than this "
                f"device accepts ({self.config.max_bytes}).",
                "COMPONENT_TOO_LARGE",
            )
        transfer = _Transfer(update, destination)

        async def fetch(channel: grpc.aio.Channel) -> None:
            if transfer.offset >= update.size_bytes:
                return
            stub = service_pb2_grpc.ServiceManagerStub(channel)
            request = service_pb2.DownloadComponentRequest(
                name=update.name,
                platform=update.platform,
                version=update.version,
                offset=transfer.offset,
            )
            stream = stub.DownloadComponent(
                request, metadata=await self._metadata(), timeout=self.config.download_timeout
            )
            async for chunk in stream:
                await transfer.add(chunk.offset, chunk.data)

        try:
            await self._run(fetch)
        except BaseException:
            await transfer.discard()
            raise
        if transfer.offset != update.size_bytes:
            await transfer.discard()
            raise PackageTampered(
                f"{update.name} {update.version}: the download ended after {transfer.offset} "
                f"of the advertised {update.size_bytes} bytes; it was refused."
            )
        return await transfer.finish(self.config.pinned_key)
