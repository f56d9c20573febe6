"""Signed client components, without I/O: the version order, the signed statement, the
SDK's verification (a valid package passes; tampered bytes, a wrong signature, a wrong
pinned key and a signature replayed onto another version are each refused), the CLI's
signing key and manifests, and the service manager's publish and download rules over
the in-memory store."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import stat
from collections.abc import AsyncIterator, Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from client_sdk.components import (
    ComponentRuleError,
    Version,
    key_id,
    public_key_base64,
    public_key_from_text,
    statement,
)
from client_sdk.updates import (
    PackageTampered,
    SignatureInvalid,
    UntrustedSigningKey,
    UpdateAvailable,
    UpdateConfig,
    UpdateError,
    _Transfer,
    verify_package,
)
from meterline.cli.components import publish_requests, signed_manifest, signing_key
from meterline.kernel.config import ConfigError, Settings, load_settings
from meterline.kernel.errors import AlreadyExists, InvalidArgument, NotFound, PermissionDenied
from meterline.kernel.principals import Principal, PrincipalKind
from service_manager.app.components import ComponentCatalog
from service_manager.domain.components import (
    ComponentKey,
    Manifest,
    Rechunker,
    UploadCheck,
    latest,
    update_available,
)
from tests.support.component_fakes import InMemoryComponentStore

pytestmark = pytest.mark.unit

PACKAGE = bytes(range(256)) * 4000  # 1 024 000 bytes: several stored chunks
OPERATOR = Principal(kind=PrincipalKind.OPERATOR, subject="ops")
DEVICE = Principal(kind=PrincipalKind.DEVICE, subject="dev", account_id="acct_1")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sign(key: Ed25519PrivateKey, name: str, platform: str, version: str, data: bytes) -> str:
    message = statement(name, platform, version, len(data), sha256(data))
    return base64.b64encode(key.sign(message)).decode()


def advertised(
    key: Ed25519PrivateKey,
    data: bytes = PACKAGE,
    version: str = "1.4.0",
    name: str = "client",
    platform: str = "linux-x86_64",
) -> UpdateAvailable:
    return UpdateAvailable(
        name=name,
        platform=platform,
        version=version,
        size_bytes=len(data),
        sha256=sha256(data),
        signature=sign(key, name, platform, version, data),
        signing_key_id=key_id(key.public_key()),
        published_at=None,
    )


# -- the rules both ends share --------------------------------------------------------


def test_versions_compare_as_numbers_with_prereleases_first() -> None:
    ordered = ["0.9", "1.2.0-alpha", "1.2.0-alpha.2", "1.2.0-alpha.10", "1.2.0-beta", "1.2"]
    ordered += ["1.2.1", "1.10.0", "2.0.0"]
    parsed = [Version.parse(text) for text in ordered]
    assert sorted(reversed(parsed)) == parsed
    assert Version.parse("1.2") == Version.parse("1.2.0")
    assert Version.parse("1.2.0").normal == Version.parse("1.2").normal == "1.2"
    for bad in ("", "v1.2", "1.02", "1..2", "1.2+build", "1.2 ", "1.2\nname: x", "9" * 70):
        with pytest.raises(ComponentRuleError):
            Version.parse(bad)


def test_the_statement_is_exactly_six_lines() -> None:
    digest = "ab" * 32
    assert statement("client", "any", "1.4.0", 1234, digest) == (
        b"meterline-component-signature-v1\n"
        b"name: client\n"
        b"platform: any\n"
        b"version: 1.4.0\n"
        b"size: 1234\n"
        b"sha256: " + digest.encode() + b"\n"
    )
    with pytest.raises(ComponentRuleError):
        statement("client\nversion: 9", "any", "1.4.0", 1234, digest)
    with pytest.raises(ComponentRuleError):
        statement("client", "any", "1.4.0", 1234, digest.upper())


def test_a_public_key_reads_as_base64_or_pem() -> None:
    public = Ed25519PrivateKey.generate().public_key()
    pem = public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    raw = public_key_base64(public)
    assert len(raw) == 44
    assert public_key_base64(public_key_from_text(pem.decode())) == raw
    assert public_key_base64(public_key_from_text(f"  {raw}\n")) == raw
    for bad in ("", "not base64!", base64.b64encode(b"x" * 31).decode(), "-----BEGIN junk"):
        with pytest.raises(ComponentRuleError):
            public_key_from_text(bad)
    with pytest.raises(ValueError):
        UpdateConfig(public_key="nope")


# -- the SDK's verification ---------------------------------------------------------------


def test_a_valid_package_is_verified() -> None:
    key = Ed25519PrivateKey.generate()
    verify_package(key.public_key(), advertised(key), len(PACKAGE), sha256(PACKAGE))


def test_tampered_bytes_are_refused() -> None:
    key = Ed25519PrivateKey.generate()
    update = advertised(key)
    tampered = bytearray(PACKAGE)
    tampered[500_000] ^= 0x01
    with pytest.raises(PackageTampered) as refused:
        verify_package(key.public_key(), update, len(tampered), sha256(bytes(tampered)))
    assert refused.value.reason == "PACKAGE_TAMPERED"
    with pytest.raises(PackageTampered):
        verify_package(key.public_key(), update, len(PACKAGE) - 1, sha256(PACKAGE[:-1]))


def test_tampered_bytes_advertised_as_genuine_are_refused_by_the_signature() -> None:
    """A server that also rewrites the advertised digest still cannot forge the signature."""
    key = Ed25519PrivateKey.generate()
    tampered = PACKAGE[:-1] + b"\x00"
    update = replace(advertised(key), sha256=sha256(tampered))
    with pytest.raises(SignatureInvalid):
        verify_package(key.public_key(), update, len(tampered), sha256(tampered))


def test_a_wrong_signature_is_refused() -> None:
    key = Ed25519PrivateKey.generate()
    forged = base64.b64encode(os.urandom(64)).decode()
    for signature in (forged, "not base64", ""):
        update = replace(advertised(key), signature=signature)
        with pytest.raises(SignatureInvalid) as refused:
            verify_package(key.public_key(), update, len(PACKAGE), sha256(PACKAGE))
        assert refused.value.reason == "SIGNATURE_INVALID"


def test_a_wrong_pinned_key_is_refused() -> None:
    signer, pinned = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    with pytest.raises(UntrustedSigningKey) as refused:
        verify_package(pinned.public_key(), advertised(signer), len(PACKAGE), sha256(PACKAGE))
    assert key_id(pinned.public_key()) in refused.value.message
    assert refused.value.reason == "UNTRUSTED_SIGNING_KEY"
    # Without the key id, the same package is still refused.
    update = replace(advertised(signer), signing_key_id="")
    with pytest.raises(SignatureInvalid):
        verify_package(pinned.public_key(), update, len(PACKAGE), sha256(PACKAGE))


@pytest.mark.parametrize(
    "field", [{"version": "1.5.0"}, {"platform": "android-arm64"}, {"name": "dialer"}]
)
def test_a_signature_replayed_onto_another_version_platform_or_name_is_refused(
    field: dict[str, Any],
) -> None:
    """The same bytes and the genuine signature of 1.4.0 for linux-x86_64, shown as
    something else: the statement differs, so the signature does not verify."""
    key = Ed25519PrivateKey.generate()
    replayed = replace(advertised(key), **field)
    with pytest.raises(SignatureInvalid):
        verify_package(key.public_key(), replayed, len(PACKAGE), sha256(PACKAGE))


async def test_a_download_refuses_bytes_out_of_order_or_beyond_the_size(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    update = advertised(key, data=b"abcdef")
    transfer = _Transfer(update, None)
    await transfer.add(0, b"abc")
    with pytest.raises(PackageTampered, match="at 4 where 3"):
        await transfer.add(4, b"def")
    with pytest.raises(PackageTampered, match="more than the advertised"):
        await transfer.add(3, b"defg")

    destination = tmp_path / "pkg" / "client-1.4.0.bin"
    good = _Transfer(update, destination)
    await good.add(0, b"abcdef")
    package = await good.finish(key.public_key())
    assert package.path == destination and destination.read_bytes() == b"abcdef"
    assert package.read_bytes() == b"abcdef" and package.data is None
    assert not destination.with_name(destination.name + ".part").exists()

    refused_at = tmp_path / "refused.bin"
    bad = _Transfer(update, refused_at)
    await bad.add(0, b"abcdeX")
    with pytest.raises(PackageTampered):
        await bad.finish(key.public_key())
    assert not await asyncio.to_thread(lambda: list(tmp_path.glob("refused*")))


# -- the operator's key and manifests -----------------------------------------------------


def test_the_signing_key_is_made_once_private_and_kept(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    first = signing_key(settings)
    assert first.created and first.path == tmp_path / "data" / "component-signing-key.pem"
    assert stat.S_IMODE(first.path.stat().st_mode) == 0o600
    again = signing_key(settings)
    assert not again.created and again.public_base64 == first.public_base64


def test_a_configured_key_file_must_exist_and_be_ed25519(tmp_path: Path) -> None:
    missing = tmp_path / "missing.pem"
    settings = load_settings({"METERLINE_COMPONENT_SIGNING_KEY_FILE": str(missing)})
    with pytest.raises(ConfigError, match="does not exist"):
        signing_key(settings)
    assert not missing.exists()
    missing.write_text("not a key")
    with pytest.raises(ConfigError, match="not an unencrypted PEM"):
        signing_key(settings)
    key = Ed25519PrivateKey.generate()
    missing.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    assert signing_key(settings).public_base64 == public_key_base64(key.public_key())


def test_a_signed_manifest_verifies_in_the_sdk(tmp_path: Path) -> None:
    signer = signing_key(Settings(data_dir=tmp_path))
    path = tmp_path / "client.bin"
    path.write_bytes(PACKAGE)
    manifest = signed_manifest(signer, path, "client", "linux-x86_64", "1.4.0")
    assert manifest.size_bytes == len(PACKAGE) and manifest.sha256 == sha256(PACKAGE)
    update = UpdateAvailable(
        name="client",
        platform="linux-x86_64",
        version="1.4.0",
        size_bytes=manifest.size_bytes,
        sha256=manifest.sha256,
        signature=manifest.signature,
        signing_key_id=signer.key_id,
        published_at=None,
    )
    pinned = UpdateConfig(public_key=signer.public_base64).pinned_key
    verify_package(pinned, update, len(PACKAGE), sha256(PACKAGE))
    parts = list(publish_requests(manifest, path))
    assert parts[0].WhichOneof("part") == "manifest"
    assert b"".join(part.data for part in parts[1:]) == PACKAGE
    with pytest.raises(ConfigError):
        signed_manifest(signer, path, "client", "linux-x86_64", "v1")


# -- the service manager's rules ------------------------------------------------------------

KEY = ComponentKey("client", "linux-x86_64")


def manifest_of(key: Ed25519PrivateKey, data: bytes, version: str = "1.4.0") -> Manifest:
    return Manifest.checked(
        KEY,
        version,
        len(data),
        sha256(data),
        sign(key, KEY.name, KEY.platform, version, data),
        public_key_base64(key.public_key()),
        max_bytes=10_000_000,
    )


async def pieces(data: bytes, size: int = 100_000) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


async def collected(parts: AsyncIterator[tuple[int, bytes]]) -> list[tuple[int, bytes]]:
    return [part async for part in parts]


def test_a_manifest_must_be_signed_by_the_key_it_names() -> None:
    key, other = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    good = manifest_of(key, PACKAGE)
    assert good.signing_key_id == key_id(key.public_key())
    with pytest.raises(InvalidArgument, match="signature does not match") as refused:
        Manifest.checked(
            KEY,
            "1.4.0",
            len(PACKAGE),
            sha256(PACKAGE),
            good.signature,
            public_key_base64(other.public_key()),
            max_bytes=10_000_000,
        )
    assert refused.value.reason == "BAD_COMPONENT_SIGNATURE"
    with pytest.raises(InvalidArgument, match="at most 10"):
        Manifest.checked(
            KEY, "1.4.0", len(PACKAGE), sha256(PACKAGE), good.signature, "", max_bytes=10
        )


def test_an_upload_must_be_what_its_manifest_states() -> None:
    key = Ed25519PrivateKey.generate()
    manifest = manifest_of(key, b"abcdef")
    check = UploadCheck(manifest)
    check.add(b"abc")
    check.add(b"def")
    check.finish()
    longer = UploadCheck(manifest)
    with pytest.raises(InvalidArgument, match="longer"):
        longer.add(b"abcdefg")
    changed = UploadCheck(manifest)
    changed.add(b"abcdeX")
    with pytest.raises(InvalidArgument, match="SHA-256"):
        changed.finish()


def test_rechunking_makes_chunks_of_exactly_the_size() -> None:
    cutter = Rechunker(4)
    out: list[bytes] = []
    for piece in (b"ab", b"cdefghij", b"k"):
        out.extend(cutter.push(piece))
    out.append(cutter.rest())
    assert out == [b"abcd", b"efgh", b"ijk"]


def test_the_latest_is_the_highest_version_and_older_devices_update() -> None:
    assert latest([]) is None
    assert update_available(Version.parse("1.4.0"), "")
    assert update_available(Version.parse("1.4.0"), "1.4.0-rc.1")
    assert not update_available(Version.parse("1.4.0"), "1.4")
    with pytest.raises(InvalidArgument):
        update_available(Version.parse("1.4.0"), "one")


async def test_publish_check_and_download_over_the_store() -> None:
    key = Ed25519PrivateKey.generate()
    catalog = ComponentCatalog(InMemoryComponentStore(), max_bytes=10_000_000)
    with pytest.raises(NotFound):
        await catalog.latest(KEY, "")

    first = await catalog.publish(OPERATOR, manifest_of(key, b"old", "1.10.0"), pieces(b"old"))
    assert first.created
    newer = await catalog.publish(OPERATOR, manifest_of(key, PACKAGE, "1.9.0"), pieces(PACKAGE))
    # 1.10 is newer than 1.9 whatever the order of publishing.
    found = await catalog.latest(KEY, "1.9.0")
    assert found.component.version.text == "1.10.0" and found.update_available
    assert not (await catalog.latest(KEY, "1.10")).update_available

    whole = await collected(await catalog.download(KEY, "1.9.0"))
    assert b"".join(data for _, data in whole) == PACKAGE
    assert [offset for offset, _ in whole][:2] == [0, newer.component.chunk_bytes]
    tail = await collected(await catalog.download(KEY, "1.9.0", offset=300_001))
    assert tail[0][0] == 300_001 and b"".join(d for _, d in tail) == PACKAGE[300_001:]
    assert await collected(await catalog.download(KEY, "1.9.0", offset=len(PACKAGE))) == []
    with pytest.raises(InvalidArgument):
        await catalog.download(KEY, "1.9.0", offset=len(PACKAGE) + 1)
    with pytest.raises(NotFound):
        await catalog.download(KEY, "1.9.1")


async def test_publishing_a_version_again() -> None:
    key = Ed25519PrivateKey.generate()
    store = InMemoryComponentStore()
    catalog = ComponentCatalog(store, max_bytes=10_000_000)
    await catalog.publish(OPERATOR, manifest_of(key, PACKAGE), pieces(PACKAGE))
    # Identical bytes and signature: nothing changes, and it says so.
    again = await catalog.publish(OPERATOR, manifest_of(key, PACKAGE), pieces(PACKAGE))
    assert not again.created and len(store.components) == 1
    # Other bytes under the same version, or the same version written another way: refused.
    for version in ("1.4.0", "1.4"):
        with pytest.raises(AlreadyExists, match="already published") as refused:
            await catalog.publish(OPERATOR, manifest_of(key, b"other", version), pieces(b"other"))
        assert refused.value.reason == "COMPONENT_VERSION_EXISTS"
    assert len(store.components) == 1


async def test_only_operators_publish_and_a_bad_upload_stores_nothing() -> None:
    key = Ed25519PrivateKey.generate()
    store = InMemoryComponentStore()
    catalog = ComponentCatalog(store, max_bytes=10_000_000)
    with pytest.raises(PermissionDenied):
        await catalog.publish(DEVICE, manifest_of(key, PACKAGE), pieces(PACKAGE))
    with pytest.raises(PermissionDenied):
        await catalog.listed(DEVICE)
    changed = PACKAGE[:-1] + b"\x00"
    with pytest.raises(InvalidArgument, match="SHA-256"):
        await catalog.publish(OPERATOR, manifest_of(key, PACKAGE), pieces(changed))
    assert store.components == {}


def test_update_config_checks_its_fields() -> None:
    public = public_key_base64(Ed25519PrivateKey.generate().public_key())
    config = UpdateConfig(public_key=public, component="dialer", current_version="2.0")
    assert config.platform == "any"
    bad: Iterable[dict[str, object]] = (
        {"component": "a b"},
        {"platform": ""},
        {"current_version": "two"},
        {"max_bytes": 0},
    )
    for fields in bad:
        with pytest.raises(ValueError):
            UpdateConfig(public_key=public, **fields)  # type: ignore[arg-type]
    assert issubclass(PackageTampered, UpdateError)
