"""TLS on every channel, with real servers on loopback ports: the test stack serves TLS;
a wrong CA, plaintext against TLS and (with mutual TLS) a missing client certificate are
refused; a service without certificates and without METERLINE_PLAINTEXT does not start;
`meterline certs dev` writes certificates a service can use; the CLI says in one line when
it does not trust the server."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

import rating_service.server
from meterline.billing.v1 import billing_pb2
from meterline.kernel.config import ClientAuth, TlsSettings
from meterline.kernel.dev_certificates import DevCertificates, make_dev_certificates
from meterline.kernel.grpc_server import client_channel
from meterline.kernel.runtime import ServiceHandle
from meterline.kernel.tls import NO_CERTIFICATE, channel_credentials
from meterline.rating.v1 import types_pb2
from meterline.service.v1 import service_pb2
from tests.support import tls
from tests.support.clients import OPERATOR, device, ensure_tariff, new_account, stubs
from tests.support.stack import TOKEN_SECRET, InProcessStack, start_in_process
from tests.support.stores import StoreUrls

pytestmark = pytest.mark.integration

METERLINE_CLI = [sys.executable, "-m", "meterline.cli.main"]


async def health(channel: grpc.aio.Channel) -> int:
    """The server's overall health status, asked over `channel` (raises AioRpcError)."""
    response = await health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(), timeout=5
    )
    return int(response.status)


async def refused(channel: grpc.aio.Channel) -> grpc.aio.AioRpcError:
    """The error of a health check that must fail; the channel is closed."""
    async with channel:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await health(channel)
    assert raised.value.code() is grpc.StatusCode.UNAVAILABLE
    return raised.value


def secure(address: str, settings: TlsSettings) -> grpc.aio.Channel:
    return client_channel(address, channel_credentials(settings))


@pytest.fixture(scope="module")
def other_ca(tmp_path_factory: pytest.TempPathFactory) -> DevCertificates:
    """A second set: an authority the test stack's certificates do not come from."""
    return make_dev_certificates(tmp_path_factory.mktemp("other-ca"))


# -- one-way TLS, the default -----------------------------------------------------------------


async def test_every_service_serves_tls_end_to_end(stack: InProcessStack) -> None:
    for address in (stack.endpoints.rating, stack.endpoints.billing, stack.endpoints.service):
        async with tls.channel(address) as channel:
            assert await health(channel) == health_pb2.HealthCheckResponse.SERVING
    # A start goes device → service manager → billing manager and rating service: every
    # hop over TLS (the service manager trusts the same CA).
    api = stubs(stack.endpoints)
    try:
        prefix = f"+99{uuid.uuid4().int % 10**6:06d}"
        await ensure_tariff(api.rating, prefix, 1_000)
        account_id = await new_account(api.billing, funded_micros=1_000_000)
        started = await api.service.StartService(
            service_pb2.StartServiceRequest(
                account_id=account_id, service_type=types_pb2.VOICE, endpoint=f"{prefix}1"
            ),
            metadata=device(account_id),
        )
        assert started.session_id and started.granted_units > 0
        await api.service.StopService(
            service_pb2.StopServiceRequest(session_id=started.session_id, used_units=0),
            metadata=device(account_id),
        )
    finally:
        await api.close()


async def test_a_wrong_ca_is_refused(stack: InProcessStack, other_ca: DevCertificates) -> None:
    error = await refused(secure(stack.endpoints.billing, TlsSettings(ca_file=other_ca.ca)))
    assert "CERTIFICATE_VERIFY_FAILED" in (error.details() or "")
    # Nor do the system's authorities vouch for a development certificate.
    await refused(secure(stack.endpoints.billing, TlsSettings()))


async def test_plaintext_against_a_tls_server_is_refused(stack: InProcessStack) -> None:
    await refused(grpc.aio.insecure_channel(stack.endpoints.billing))


async def test_a_name_the_certificate_does_not_carry_is_refused(stack: InProcessStack) -> None:
    port = stack.endpoints.rating.rpartition(":")[2]
    async with tls.channel(f"localhost:{port}") as channel:  # a name it carries
        assert await health(channel) == health_pb2.HealthCheckResponse.SERVING
    # 127.0.0.2 is loopback too, but not in the certificate.
    handle = await rating_service.server.start(stack.settings, "127.0.0.2:0")
    try:
        error = await refused(tls.channel(f"127.0.0.2:{handle.port}"))
        assert "Hostname Verification" in (error.details() or "")
    finally:
        await handle.close(grace=0.5)


async def test_plaintext_is_served_only_when_asked_for(stack: InProcessStack) -> None:
    plain = replace(stack.settings, tls=TlsSettings(plaintext=True))
    handle = await rating_service.server.start(plain, "127.0.0.1:0")
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{handle.port}") as channel:
            assert await health(channel) == health_pb2.HealthCheckResponse.SERVING
        await refused(tls.channel(f"127.0.0.1:{handle.port}"))
    finally:
        await handle.close(grace=0.5)


# -- mutual TLS -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
async def mutual(stores: StoreUrls) -> AsyncIterator[InProcessStack]:
    """All three services requiring client certificates from the test CA."""
    required = replace(tls.server_settings(), client_auth=ClientAuth.REQUIRE)
    running = await start_in_process(stores, tls=required)
    try:
        yield running
    finally:
        await running.close()


async def test_mutual_tls_refuses_a_client_without_a_certificate(
    mutual: InProcessStack,
) -> None:
    for address in (mutual.endpoints.rating, mutual.endpoints.billing, mutual.endpoints.service):
        await refused(tls.channel(address))


async def test_mutual_tls_refuses_a_certificate_of_another_authority(
    mutual: InProcessStack, other_ca: DevCertificates
) -> None:
    foreign = TlsSettings(
        ca_file=tls.dev_certificates().ca,
        cert_file=other_ca.client_cert,
        key_file=other_ca.client_key,
    )
    await refused(secure(mutual.endpoints.billing, foreign))


async def test_mutual_tls_accepts_a_valid_client_certificate(mutual: InProcessStack) -> None:
    api = stubs(mutual.endpoints, tls.mutual_channel)
    try:
        account_id = await new_account(api.billing, funded_micros=500_000)
        account = await api.billing.GetAccount(
            billing_pb2.GetAccountRequest(account_id=account_id), metadata=OPERATOR
        )
        assert account.balance_micros == 500_000
        # The service manager presents its own certificate to the billing manager and the
        # rating service, which require one too.
        prefix = f"+98{uuid.uuid4().int % 10**6:06d}"
        await ensure_tariff(api.rating, prefix, 1_000)
        started = await api.service.StartService(
            service_pb2.StartServiceRequest(
                account_id=account_id, service_type=types_pb2.VOICE, endpoint=f"{prefix}1"
            ),
            metadata=device(account_id),
        )
        assert started.granted_units > 0
        await api.service.StopService(
            service_pb2.StopServiceRequest(session_id=started.session_id, used_units=0),
            metadata=device(account_id),
        )
    finally:
        await api.close()


# -- a service process without certificates ---------------------------------------------------


def service_environment(**extra: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("METERLINE_")}
    return {**env, "METERLINE_TOKEN_SECRET": TOKEN_SECRET, **extra}


async def run(*command: str, env: dict[str, str]) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        *command,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


@pytest.mark.parametrize("package", ["rating_service", "billing_manager", "service_manager"])
async def test_a_service_without_certificates_refuses_to_start(package: str) -> None:
    code, out, err = await run(sys.executable, "-m", package, env=service_environment())
    assert code == 2
    assert err == f"error: {NO_CERTIFICATE}\n", err  # one line, no traceback
    assert out == ""


async def test_an_unreadable_certificate_is_one_line_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "missing.pem"
    env = service_environment(
        METERLINE_TLS_CERT_FILE=str(missing),
        METERLINE_TLS_KEY_FILE=str(tls.dev_certificates().server_key),
    )
    code, _, err = await run(sys.executable, "-m", "rating_service", env=env)
    assert code == 2
    assert err.startswith(f"error: METERLINE_TLS_CERT_FILE: cannot read {missing}")
    assert err.count("\n") == 1


# -- meterline certs dev ----------------------------------------------------------------------


async def test_certs_dev_writes_files_a_service_can_use(
    stack: InProcessStack, tmp_path: Path
) -> None:
    folder = tmp_path / "certs"
    command = [*METERLINE_CLI, "certs", "dev", "--dir", str(folder), "--name", "rating-primary"]
    code, out, err = await run(*command, env=service_environment())
    assert code == 0, err
    made = DevCertificates(folder)
    for path in made.files:
        assert f"wrote {path}" in out
    assert "rating-primary" in out
    for key in (made.server_key, made.client_key):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600

    served = TlsSettings(cert_file=made.server_cert, key_file=made.server_key, ca_file=made.ca)
    handle: ServiceHandle = await rating_service.server.start(
        replace(stack.settings, tls=replace(served, client_auth=ClientAuth.REQUIRE)),
        "127.0.0.1:0",
    )
    try:
        address = f"127.0.0.1:{handle.port}"
        as_client = TlsSettings(
            ca_file=made.ca, cert_file=made.client_cert, key_file=made.client_key
        )
        async with secure(address, as_client) as channel:
            assert await health(channel) == health_pb2.HealthCheckResponse.SERVING
        await refused(secure(address, TlsSettings(ca_file=made.ca)))  # no client certificate
    finally:
        await handle.close(grace=0.5)

    before = {path: path.read_bytes() for path in made.files}
    code, out, err = await run(*command, env=service_environment())
    assert code == 1
    assert err.startswith("error: ") and "--force" in err and err.count("\n") == 1
    assert {path: path.read_bytes() for path in made.files} == before
    code, _, err = await run(*command, "--force", env=service_environment())
    assert code == 0, err
    assert made.ca.read_bytes() != before[made.ca]


# -- the CLI ----------------------------------------------------------------------------------


def cli_environment(stack: InProcessStack, **extra: str) -> dict[str, str]:
    return service_environment(
        METERLINE_RATING_ADDRESS=stack.endpoints.rating,
        METERLINE_BILLING_ADDRESS=stack.endpoints.billing,
        METERLINE_SERVICE_ADDRESS=stack.endpoints.service,
        **extra,
    )


async def test_the_cli_says_when_it_does_not_trust_the_server(
    stack: InProcessStack, other_ca: DevCertificates
) -> None:
    env = cli_environment(stack, METERLINE_TLS_CA_FILE=str(other_ca.ca))
    code, _, err = await run(*METERLINE_CLI, "sessions", "list", env=env)
    assert code == 1
    assert err.startswith("error: cannot connect to the service: the server's certificate is")
    assert "METERLINE_TLS_CA_FILE" in err and str(other_ca.ca) in err
    assert err.count("\n") == 1, err  # one line: no traceback, no gRPC log lines


async def test_the_cli_says_when_it_speaks_plaintext_to_tls(stack: InProcessStack) -> None:
    env = cli_environment(stack, METERLINE_PLAINTEXT="1")
    code, _, err = await run(*METERLINE_CLI, "sessions", "list", env=env)
    assert code == 1
    assert "requires TLS" in err and err.count("\n") == 1, err


async def test_the_cli_finds_the_ca_of_the_stack_meterline_up_runs(
    stack: InProcessStack, tmp_path: Path
) -> None:
    certificates = tls.dev_certificates()
    # What `meterline up` writes into its data folder while the stack runs.
    (tmp_path / "stack.json").write_text(
        json.dumps(
            {
                "tls": {
                    "plaintext": False,
                    "ca_file": str(certificates.ca),
                    "cert_file": str(certificates.client_cert),
                    "key_file": str(certificates.client_key),
                }
            }
        )
    )
    env = cli_environment(stack, METERLINE_DATA_DIR=str(tmp_path))
    code, out, err = await run(*METERLINE_CLI, "sessions", "list", "--json", env=env)
    assert code == 0, err
    assert isinstance(json.loads(out), list)
    (tmp_path / "stack.json").unlink()  # no stack runs there: the system's roots
    code, _, err = await run(*METERLINE_CLI, "sessions", "list", env=env)
    assert code == 1 and "not signed by an authority" in err
