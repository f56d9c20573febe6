"""The operator's side of client components: the installation's Ed25519 signing key (made
on first use in the data folder, beside the token secret, or the file
METERLINE_COMPONENT_SIGNING_KEY_FILE names), and signed manifests of component files.

The private key never leaves this machine: the CLI signs the statement of (name,
platform, version, size, sha256) and uploads the signature with the bytes; the service
manager stores both and devices verify with the public key they pinned."""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from client_sdk.components import (
    ComponentRuleError,
    Version,
    check_label,
    key_id,
    public_key_base64,
    statement,
)
from meterline.kernel.config import ConfigError, Settings, component_signing_key_file
from meterline.service.v1 import service_pb2

UPLOAD_CHUNK_BYTES = 1024 * 1024
"""Bytes per upload message (the message limit is 8 MiB)."""


@dataclass(frozen=True)
class SigningKey:
    key: Ed25519PrivateKey
    path: Path
    created: bool
    """True when this call made the key."""

    @property
    def public_base64(self) -> str:
        return public_key_base64(self.key.public_key())

    @property
    def public_pem(self) -> str:
        return (
            self.key.public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            .decode("ascii")
        )

    @property
    def key_id(self) -> str:
        return key_id(self.key.public_key())


def _read_key(path: Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError) as error:
        raise ConfigError(
            f"{path} is not an unencrypted PEM private key ({error}); make an Ed25519 key "
            f"with `openssl genpkey -algorithm ed25519 -out {path}`"
        ) from error
    except OSError as error:
        raise ConfigError(f"cannot read the component signing key {path}: {error}") from error
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"{path} is not an Ed25519 key; component signatures need one")
    return key


def signing_key(settings: Settings) -> SigningKey:
    """The installation's signing key. The default file in the data folder is made on
    first use (mode 0600); a file METERLINE_COMPONENT_SIGNING_KEY_FILE names must exist,
    since a silently new key would make every device refuse the next update."""
    path, configured = component_signing_key_file(settings)
    if path.exists():
        return SigningKey(_read_key(path), path, created=False)
    if configured:
        raise ConfigError(
            f"METERLINE_COMPONENT_SIGNING_KEY_FILE={path} does not exist. Point it at the "
            "installation's key, or make one with "
            f"`openssl genpkey -algorithm ed25519 -out {path}`."
        )
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Exclusive: two first uses at once keep one key, not the last writer's.
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return SigningKey(_read_key(path), path, created=False)
    except OSError as error:
        raise ConfigError(
            f"cannot make the component signing key {path}: {error}; set METERLINE_DATA_DIR "
            "to a folder you may write, or METERLINE_COMPONENT_SIGNING_KEY_FILE to a key"
        ) from error
    with os.fdopen(descriptor, "wb") as file:
        file.write(pem)
    return SigningKey(key, path, created=True)


def file_digest(path: Path) -> tuple[int, str]:
    """Size and SHA-256 (hex) of a file, read in pieces."""
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as file:
        while piece := file.read(UPLOAD_CHUNK_BYTES):
            digest.update(piece)
            size += len(piece)
    return size, digest.hexdigest()


def signed_manifest(
    signer: SigningKey, path: Path, name: str, platform: str, version: str
) -> service_pb2.ComponentManifest:
    """The manifest of a component file: what it is, its size and digest, and the
    signature of their statement."""
    try:
        check_label(name, "--name")
        check_label(platform, "--platform")
        Version.parse(version)
    except ComponentRuleError as error:
        raise ConfigError(str(error)) from error
    try:
        size, sha256 = file_digest(path)
    except OSError as error:
        raise ConfigError(f"cannot read {path}: {error}") from error
    if size == 0:
        raise ConfigError(f"{path} is empty; a component has at least one byte")
    signature = signer.key.sign(statement(name, platform, version, size, sha256))
    return service_pb2.ComponentManifest(
        name=name,
        platform=platform,
        version=version,
        size_bytes=size,
        sha256=sha256,
        signature=base64.b64encode(signature).decode("ascii"),
        public_key=signer.public_base64,
    )


def publish_requests(
    manifest: service_pb2.ComponentManifest, path: Path
) -> Iterator[service_pb2.PublishComponentRequest]:
    """The messages of a publish: the manifest, then the file in pieces. The server
    checks that the bytes are the ones the manifest states."""
    yield service_pb2.PublishComponentRequest(manifest=manifest)
    with path.open("rb") as file:
        while piece := file.read(UPLOAD_CHUNK_BYTES):
            yield service_pb2.PublishComponentRequest(data=piece)
