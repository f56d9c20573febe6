"""Signed client components on a real stack: an operator publishes with the CLI, a device
checks and downloads through the SDK; packages changed in the database after publishing
(other bytes, another signature) and a wrongly pinned key are refused by the device."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import stat
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import grpc
import psycopg
import pytest
from cryptography.hazmat.primitives import serialization

from client_sdk import ClientConfig, MeterlineClient
from client_sdk.components import public_key_base64, statement
from client_sdk.updates import (
    ComponentUpdates,
    PackageTampered,
    SignatureInvalid,
    UntrustedSigningKey,
    UpdateConfig,
)
from meterline.kernel.db import libpq_dsn
from meterline.service.v1 import service_pb2
from tests.support import tls
from tests.support.clients import OPERATOR, Stubs, device, device_credential, new_account
from tests.support.stack import TOKEN_SECRET, InProcessStack
from tests.support.stores import StoreUrls

pytestmark = pytest.mark.integration

PLATFORM = "linux-x86_64"
T = TypeVar("T")


async def meterline(stack: InProcessStack, data_dir: Path, *args: str) -> tuple[int, str, str]:
    env = {
        **os.environ,
        "METERLINE_TOKEN_SECRET": TOKEN_SECRET,
        "METERLINE_DATA_DIR": str(data_dir),
        "METERLINE_RATING_ADDRESS": stack.endpoints.rating,
        "METERLINE_BILLING_ADDRESS": stack.endpoints.billing,
        "METERLINE_SERVICE_ADDRESS": stack.endpoints.service,
        **tls.client_environment(),
    }
    env.pop("METERLINE_COMPONENT_SIGNING_KEY_FILE", None)
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "meterline.cli.main",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def device_client(
    stack: InProcessStack, api: Stubs, updates: UpdateConfig | None = None
) -> MeterlineClient:
    account_id = await new_account(api.billing)
    client_id, secret = await device_credential(api.auth, account_id)
    config = ClientConfig(
        service_addresses=[stack.endpoints.service],
        auth_addresses=[stack.endpoints.billing],
        client_id=client_id,
        client_secret=secret,
        tls=tls.client_tls(),
        updates=updates,
    )
    return await MeterlineClient(config).__aenter__()


def package(size: int, seed: str) -> bytes:
    """Deterministic bytes that do not compress."""
    out = bytearray()
    counter = 0
    while len(out) < size:
        out.extend(hashlib.sha256(f"{seed}-{counter}".encode()).digest())
        counter += 1
    return bytes(out[:size])


async def test_publish_with_the_cli_then_check_and_download_with_the_sdk(
    stack: InProcessStack, api: Stubs, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    name = f"it-{uuid.uuid4().hex[:8]}"

    code, out, err = await meterline(stack, data_dir, "component", "key", "--json")
    assert code == 0, err
    shown = json.loads(out)
    public_key = shown["public_key"]
    key_file = data_dir / "component-signing-key.pem"
    assert shown["key_file"] == str(key_file) and "made the component signing key" in err
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    # The same key, in PEM, on the next call; nothing made again.
    code, pem, err = await meterline(stack, data_dir, "component", "key", "--pem")
    assert code == 0 and "made" not in err
    loaded = serialization.load_pem_public_key(pem.encode())
    assert public_key_base64(loaded) == public_key  # type: ignore[arg-type]

    old, new = package(300_000, "old"), package(700_001, "new")  # several chunks
    (tmp_path / "old.bin").write_bytes(old)
    (tmp_path / "new.bin").write_bytes(new)
    for file, version in (("old.bin", "1.1.0"), ("new.bin", "1.2.0")):
        code, out, err = await meterline(
            stack,
            data_dir,
            "component",
            "publish",
            str(tmp_path / file),
            "--version",
            version,
            "--name",
            name,
            "--platform",
            PLATFORM,
        )
        assert code == 0, err
        assert out.startswith(f"published {name} {version} for {PLATFORM}")
    # Again with the same file: nothing changes. Another file as the same version: refused.
    publish_new = ("component", "publish", str(tmp_path / "new.bin"), "--name", name)
    code, out, err = await meterline(
        stack, data_dir, *publish_new, "--version", "1.2.0", "--platform", PLATFORM
    )
    assert code == 0 and "was already published" in out, err
    code, _, err = await meterline(
        stack,
        data_dir,
        "component",
        "publish",
        str(tmp_path / "old.bin"),
        "--name",
        name,
        "--version",
        "1.2",
        "--platform",
        PLATFORM,
    )
    assert code == 1 and "already published" in err and "new version" in err

    code, out, err = await meterline(stack, data_dir, "component", "list", "--name", name, "--json")
    assert code == 0, err
    listed = json.loads(out)
    assert [c["version"] for c in listed] == ["1.2.0", "1.1.0"]
    assert listed[0]["sha256"] == hashlib.sha256(new).hexdigest()

    client = await device_client(stack, api)
    try:
        updates = UpdateConfig(
            public_key=public_key, component=name, platform=PLATFORM, current_version="1.1.0"
        )
        update = await client.check_for_update(updates)
        assert update is not None
        assert (update.version, update.size_bytes) == ("1.2.0", len(new))
        assert update.sha256 == hashlib.sha256(new).hexdigest()
        verified = await client.download_update(updates, update)
        assert verified.data == new and verified.version == "1.2.0"
        destination = tmp_path / "downloads" / f"{name}-1.2.0.bin"
        on_disk = await client.download_update(updates, update, destination)
        assert on_disk.path == destination and destination.read_bytes() == new

        # Nothing newer, and nothing published under another name or platform.
        current = UpdateConfig(
            public_key=public_key, component=name, platform=PLATFORM, current_version="1.2"
        )
        assert await client.check_for_update(current) is None
        for component, platform in ((f"{name}-x", PLATFORM), (name, "android-arm64")):
            elsewhere = UpdateConfig(public_key, component=component, platform=platform)
            assert await client.check_for_update(elsewhere) is None

        # A device that pinned another key refuses the package, and keeps no file.
        stranger = UpdateConfig(
            public_key=base64.b64encode(b"\x07" * 32).decode(),
            component=name,
            platform=PLATFORM,
            current_version="1.1.0",
        )
        other_update = await client.check_for_update(stranger)
        assert other_update is not None
        refused_at = tmp_path / "refused.bin"
        with pytest.raises(UntrustedSigningKey, match=shown["key_id"]):
            await client.download_update(stranger, other_update, refused_at)
        assert not await asyncio.to_thread(lambda: list(tmp_path.glob("refused*")))
    finally:
        await client.close()

    # With the update config in ClientConfig, connecting checks by itself.
    connected = await device_client(stack, api, updates)
    try:
        assert connected.update_available is not None
        assert connected.update_available.version == "1.2.0"
        assert (await connected.check_for_update()) == connected.update_available
    finally:
        await connected.close()


async def publish_directly(
    api: Stubs, data: bytes, name: str, version: str
) -> tuple[UpdateConfig, bytes]:
    """Publish over the wire with a fresh key, as the CLI does; returns the device's config
    pinning that key, and the key's private bytes."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    digest = hashlib.sha256(data).hexdigest()
    signature = key.sign(statement(name, PLATFORM, version, len(data), digest))
    manifest = service_pb2.ComponentManifest(
        name=name,
        platform=PLATFORM,
        version=version,
        size_bytes=len(data),
        sha256=digest,
        signature=base64.b64encode(signature).decode(),
        public_key=public_key_base64(key.public_key()),
    )
    requests = [service_pb2.PublishComponentRequest(manifest=manifest)] + [
        service_pb2.PublishComponentRequest(data=data[i : i + 100_000])
        for i in range(0, len(data), 100_000)
    ]
    response = await api.service.PublishComponent(iter(requests), metadata=OPERATOR)
    assert response.created
    config = UpdateConfig(public_key=manifest.public_key, component=name, platform=PLATFORM)
    raw = key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    return config, raw


def flip_one_byte(stores: StoreUrls, name: str) -> None:
    """What someone with write access to the database might do: change byte 10 of the
    second stored chunk (doing it twice restores it)."""
    with psycopg.connect(libpq_dsn(stores.service_url), autocommit=True) as conn:
        conn.execute(
            "UPDATE component_chunks SET data = set_byte(data, 9, 255 - get_byte(data, 9)) "
            "WHERE chunk_index = 1 AND component_id = "
            "(SELECT component_id FROM components WHERE name = %s)",
            (name,),
        )


def rewrite(stores: StoreUrls, name: str, column: str, value: str) -> None:
    assert column in ("sha256", "signature")
    with psycopg.connect(libpq_dsn(stores.service_url), autocommit=True) as conn:
        conn.execute(f"UPDATE components SET {column} = %s WHERE name = %s", (value, name))


async def test_a_package_changed_after_publishing_is_refused(
    stack: InProcessStack, api: Stubs, stores: StoreUrls
) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    name = f"it-{uuid.uuid4().hex[:8]}"
    data = package(600_000, name)
    config, raw_key = await publish_directly(api, data, name, "3.0.0")
    client = await device_client(stack, api)
    try:
        update = await client.check_for_update(config)
        assert update is not None
        assert (await client.download_update(config, update)).data == data

        # Other bytes than the advertised digest: refused as tampered.
        flip_one_byte(stores, name)
        with pytest.raises(PackageTampered, match="not the advertised package"):
            await client.download_update(config, update)

        # The advertised digest rewritten to match them: the signature does not verify.
        changed = bytearray(data)
        changed[256 * 1024 + 9] = 255 - changed[256 * 1024 + 9]
        rewrite(stores, name, "sha256", hashlib.sha256(changed).hexdigest())
        rewritten = await client.check_for_update(config)
        assert rewritten is not None and rewritten.sha256 != update.sha256
        with pytest.raises(SignatureInvalid):
            await client.download_update(config, rewritten)

        # The genuine bytes and digest again, with a genuine signature by the same key of
        # another version (2.9.0): a replay, refused.
        flip_one_byte(stores, name)
        rewrite(stores, name, "sha256", update.sha256)
        key = Ed25519PrivateKey.from_private_bytes(raw_key)
        replayed = key.sign(statement(name, PLATFORM, "2.9.0", len(data), update.sha256))
        rewrite(stores, name, "signature", base64.b64encode(replayed).decode())
        offered = await client.check_for_update(config)
        assert offered is not None and offered.sha256 == update.sha256
        with pytest.raises(SignatureInvalid):
            await client.download_update(config, offered)
    finally:
        await client.close()


async def test_only_an_operator_publishes_and_every_caller_needs_a_token(
    stack: InProcessStack, api: Stubs
) -> None:
    account_id = await new_account(api.billing)
    manifest = service_pb2.ComponentManifest(name="client", version="1.0.0", size_bytes=1)
    requests = [service_pb2.PublishComponentRequest(manifest=manifest)]
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await api.service.PublishComponent(iter(requests), metadata=device(account_id))
    assert refused.value.code() is grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await api.service.ListComponents(
            service_pb2.ListComponentsRequest(), metadata=device(account_id)
        )
    assert refused.value.code() is grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await api.service.GetLatestComponent(service_pb2.GetLatestComponentRequest())
    assert refused.value.code() is grpc.StatusCode.UNAUTHENTICATED
    # A manifest whose signature does not verify is refused before any byte is stored.
    bad = service_pb2.ComponentManifest(
        name="client",
        platform=PLATFORM,
        version="1.0.0",
        size_bytes=3,
        sha256=hashlib.sha256(b"abc").hexdigest(),
        signature=base64.b64encode(b"\x01" * 64).decode(),
        public_key=base64.b64encode(b"\x07" * 32).decode(),
    )
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await api.service.PublishComponent(
            iter(
                [
                    service_pb2.PublishComponentRequest(manifest=bad),
                    service_pb2.PublishComponentRequest(data=b"abc"),
                ]
            ),
            metadata=OPERATOR,
        )
    assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "signature does not match" in (refused.value.details() or "")


async def test_a_download_resumes_from_an_offset_in_small_messages(api: Stubs) -> None:
    name = f"it-{uuid.uuid4().hex[:8]}"
    data = package(700_000, name)
    await publish_directly(api, data, name, "1.0.0")
    request = service_pb2.DownloadComponentRequest(
        name=name, platform=PLATFORM, version="1.0.0", offset=300_001
    )
    chunks = [c async for c in api.service.DownloadComponent(request, metadata=OPERATOR)]
    assert chunks[0].offset == 300_001
    assert b"".join(c.data for c in chunks) == data[300_001:]
    assert max(len(c.data) for c in chunks) <= 256 * 1024
    missing = service_pb2.DownloadComponentRequest(name=name, platform=PLATFORM, version="9.0")
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        async for _ in api.service.DownloadComponent(missing, metadata=OPERATOR):
            pass
    assert refused.value.code() is grpc.StatusCode.NOT_FOUND


class BreakingChannel:
    """A real channel whose server streams fail with UNAVAILABLE after their first
    message, as a stream cut by a dying server does; it notes each download's offset."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._channel = channel
        self.offsets: list[int] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._channel, name)

    def unary_stream(self, *args: Any, **kwargs: Any) -> Any:
        real = self._channel.unary_stream(*args, **kwargs)

        def call(request: Any, **options: Any) -> AsyncIterator[Any]:
            self.offsets.append(request.offset)

            async def cut() -> AsyncIterator[Any]:
                async for message in real(request, **options):
                    yield message
                    raise grpc.aio.AioRpcError(
                        grpc.StatusCode.UNAVAILABLE,
                        grpc.aio.Metadata(),
                        grpc.aio.Metadata(),
                        "connection cut",
                        None,
                    )

            return cut()

        return call


async def test_a_broken_download_resumes_where_it_stopped(
    stack: InProcessStack, api: Stubs
) -> None:
    name = f"it-{uuid.uuid4().hex[:8]}"
    data = package(900_000, name)
    config, _ = await publish_directly(api, data, name, "1.0.0")
    account_id = await new_account(api.billing)
    channel = tls.channel(stack.endpoints.service)
    breaking = BreakingChannel(channel)

    async def run(operation: Callable[[grpc.aio.Channel], Awaitable[T]]) -> T:
        # The first attempts go through the breaking channel; a last one through the
        # real one, as a failover to a healthy server would.
        for attempt in range(3):
            try:
                return await operation(breaking if attempt < 2 else channel)  # type: ignore[arg-type]
            except grpc.aio.AioRpcError as error:
                assert error.code() is grpc.StatusCode.UNAVAILABLE
        raise AssertionError("unreachable")

    async def token() -> tuple[tuple[str, str], ...]:
        return device(account_id)

    try:
        updates = ComponentUpdates(config, run, token)
        update = await updates.check()
        assert update is not None
        package_ = await updates.download(update)
        assert package_.data == data
        chunk = 256 * 1024
        assert breaking.offsets == [0, chunk]
    finally:
        await channel.close(None)
