"""What a published client component is, as both ends must agree on it: its names, its
version order, the statement its signature covers and the formats of the public key.

The SDK verifies with these rules; the CLI signs and the service manager checks uploads
with the same ones, so there is one definition. The module depends on `cryptography`
only (no gRPC, no server code), so a device installs nothing more for it.

The statement an Ed25519 signature covers is six lines of ASCII, each ending in a line
feed, in this order::

    meterline-component-signature-v1
    name: client
    platform: linux-x86_64
    version: 1.4.0
    size: 1048576
    sha256: 9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08

Signing the statement and not the bytes alone binds the signature to one name, platform
and version: a signature of version 1.3 cannot be shown as a signature of 1.4, nor the
package of one platform as that of another.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from dataclasses import dataclass
from functools import total_ordering

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

__all__ = [
    "DEFAULT_NAME",
    "DEFAULT_PLATFORM",
    "STATEMENT_HEADER",
    "ComponentRuleError",
    "Version",
    "check_label",
    "check_sha256",
    "key_id",
    "public_key_base64",
    "public_key_from_text",
    "signature_is_valid",
    "statement",
]

STATEMENT_HEADER = "meterline-component-signature-v1"
DEFAULT_NAME = "client"
"""The component name when none is given."""
DEFAULT_PLATFORM = "any"
"""The platform of a component built for every platform, and the default of a check."""

_LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
_VERSION = re.compile(
    r"(?P<release>(?:0|[1-9][0-9]{0,8})(?:\.(?:0|[1-9][0-9]{0,8})){0,5})"
    r"(?:-(?P<pre>[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?"
)
_SHA256 = re.compile(r"[0-9a-f]{64}")
_MAX_VERSION_LENGTH = 64
_RAW_KEY_BYTES = 32
_SIGNATURE_BYTES = 64


class ComponentRuleError(ValueError):
    """A name, version, digest or key that breaks the rules; the message says which."""


def check_label(value: str, what: str) -> str:
    """A component name or platform: 1-100 of letters, digits, '.', '_' and '-', starting
    with a letter or digit. Returns it unchanged."""
    if not _LABEL.fullmatch(value):
        raise ComponentRuleError(
            f"{what} {value!r} is not usable: use 1-100 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit."
        )
    return value


def check_sha256(value: str) -> str:
    """A SHA-256 as 64 lowercase hex digits. Returns it unchanged."""
    if not _SHA256.fullmatch(value):
        raise ComponentRuleError(f"{value!r} is not a SHA-256 in 64 lowercase hex digits.")
    return value


@total_ordering
@dataclass(frozen=True, slots=True, eq=False)
class Version:
    """A component version: dot-separated numbers (up to six, no leading zeros), optionally
    a '-' and a pre-release label, e.g. `2.10.1` or `3.0.0-rc.2`. Versions compare as
    numbers (2.10 is after 2.9, and 1.2 equals 1.2.0); a pre-release comes before its
    release, and pre-release labels compare as in Semantic Versioning."""

    text: str
    release: tuple[int, ...]
    """The numbers without trailing zeros: 1.2.0 and 1.2 are both (1, 2)."""
    pre: tuple[tuple[int, int | str], ...] | None

    @classmethod
    def parse(cls, text: str) -> Version:
        found = _VERSION.fullmatch(text) if len(text) <= _MAX_VERSION_LENGTH else None
        if found is None:
            raise ComponentRuleError(
                f"version {text!r} is not usable: write numbers separated by dots (1.4.0), "
                "optionally followed by '-' and a pre-release label (1.4.0-rc.1)."
            )
        numbers = [int(part) for part in found["release"].split(".")]
        while numbers and numbers[-1] == 0:
            numbers.pop()
        pre = None
        if found["pre"] is not None:
            pre = tuple(
                (0, int(part)) if part.isdigit() else (1, part) for part in found["pre"].split(".")
            )
        return cls(text, tuple(numbers), pre)

    @property
    def normal(self) -> str:
        """The form two equal versions share: 1.2.0 and 1.2 are both `1.2`."""
        release = ".".join(str(number) for number in self.release) or "0"
        if self.pre is None:
            return release
        return release + "-" + ".".join(str(part) for _, part in self.pre)

    def _key(self) -> tuple[object, ...]:
        # A release sorts after each of its pre-releases.
        return (self.release, (1,) if self.pre is None else (0, self.pre))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Version):
            return NotImplemented
        return self._key() == other._key()

    def __lt__(self, other: Version) -> bool:
        return self._key() < other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __str__(self) -> str:
        return self.text


def statement(name: str, platform: str, version: str, size: int, sha256: str) -> bytes:
    """The exact bytes a component's Ed25519 signature covers (see the module docstring)."""
    check_label(name, "component name")
    check_label(platform, "platform")
    Version.parse(version)
    check_sha256(sha256)
    if size < 1:
        raise ComponentRuleError(f"a component has at least one byte, not {size}")
    lines = (
        STATEMENT_HEADER,
        f"name: {name}",
        f"platform: {platform}",
        f"version: {version}",
        f"size: {size}",
        f"sha256: {sha256}",
    )
    return "".join(line + "\n" for line in lines).encode("ascii")


def public_key_from_text(text: str | bytes) -> Ed25519PublicKey:
    """An Ed25519 public key written as `meterline component key` prints it: base64 of the
    32 raw bytes, or a PEM `PUBLIC KEY` block (SubjectPublicKeyInfo)."""
    raw = text.encode("ascii", "replace") if isinstance(text, str) else bytes(text)
    raw = raw.strip()
    if raw.startswith(b"-----BEGIN"):
        try:
            key = serialization.load_pem_public_key(raw)
        except ValueError as error:
            raise ComponentRuleError(f"the PEM public key cannot be read: {error}") from error
        if not isinstance(key, Ed25519PublicKey):
            raise ComponentRuleError("the PEM public key is not an Ed25519 key")
        return key
    try:
        decoded = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError) as error:
        raise ComponentRuleError(
            "the public key is neither base64 of 32 raw bytes nor a PEM PUBLIC KEY block"
        ) from error
    if len(decoded) != _RAW_KEY_BYTES:
        raise ComponentRuleError(
            f"an Ed25519 public key has 32 bytes; this base64 decodes to {len(decoded)}"
        )
    return Ed25519PublicKey.from_public_bytes(decoded)


def _raw(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def public_key_base64(key: Ed25519PublicKey) -> str:
    """The key as base64 of its 32 raw bytes (44 characters)."""
    return base64.b64encode(_raw(key)).decode("ascii")


def key_id(key: Ed25519PublicKey) -> str:
    """A short name for a key in messages: the first 16 hex digits of the SHA-256 of its
    raw bytes. Naming a key is not trusting it: signatures are checked with the key."""
    return hashlib.sha256(_raw(key)).hexdigest()[:16]


def signature_is_valid(key: Ed25519PublicKey, message: bytes, signature: str) -> bool:
    """True when `signature` (base64) is `key`'s Ed25519 signature of `message`."""
    try:
        decoded = base64.b64decode(signature, validate=True)
    except (binascii.Error, ValueError):
        return False
    if len(decoded) != _SIGNATURE_BYTES:
        return False
    try:
        key.verify(decoded, message)
    except InvalidSignature:
        return False
    return True
