"""TLS for the tests: one set of development certificates per test run, made by the code
`meterline certs dev` runs, and the settings, environment and channels that use it. The
services the tests start serve the set's server certificate; clients trust its CA."""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc

from client_sdk import TlsConfig
from meterline.kernel.config import TlsSettings
from meterline.kernel.dev_certificates import DevCertificates, make_dev_certificates
from meterline.kernel.grpc_server import client_channel
from meterline.kernel.tls import channel_credentials


@functools.cache
def dev_certificates() -> DevCertificates:
    """The test run's certificates (made once per process, removed when it exits)."""
    directory = Path(tempfile.mkdtemp(prefix="meterline-test-tls-"))
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    return make_dev_certificates(directory)


def client_tls() -> TlsConfig:
    """The SDK's TLS for the tests' stacks: trust the test CA."""
    return TlsConfig(ca_file=dev_certificates().ca)


def device_tls() -> TlsConfig:
    """The SDK's TLS with the test client certificate, for servers that require one."""
    certificates = dev_certificates()
    return TlsConfig(
        ca_file=certificates.ca,
        cert_file=certificates.client_cert,
        key_file=certificates.client_key,
    )


def server_settings() -> TlsSettings:
    """What the tests' services listen with (and present to their peers)."""
    certificates = dev_certificates()
    return TlsSettings(
        cert_file=certificates.server_cert,
        key_file=certificates.server_key,
        ca_file=certificates.ca,
    )


def client_settings() -> TlsSettings:
    """What the tests' own channels (and the CLI they run) use: trust the test CA."""
    return TlsSettings(ca_file=dev_certificates().ca)


def tls_environment() -> dict[str, str]:
    """`server_settings` as the environment of a service process."""
    certificates = dev_certificates()
    return {
        "METERLINE_TLS_CERT_FILE": str(certificates.server_cert),
        "METERLINE_TLS_KEY_FILE": str(certificates.server_key),
        "METERLINE_TLS_CA_FILE": str(certificates.ca),
        "METERLINE_TLS_CLIENT_AUTH": "none",
        "METERLINE_PLAINTEXT": "0",
    }


def client_environment() -> dict[str, str]:
    """`client_settings` as the environment of a client process (the CLI)."""
    return {"METERLINE_TLS_CA_FILE": str(dev_certificates().ca), "METERLINE_PLAINTEXT": "0"}


@functools.cache
def client_credentials() -> grpc.ChannelCredentials:
    """`client_settings` as channel credentials (for `wait_until_serving` and the like)."""
    credentials = channel_credentials(client_settings())
    assert credentials is not None
    return credentials


def channel(address: str, options: Sequence[tuple[str, Any]] = ()) -> grpc.aio.Channel:
    """A channel to one of the tests' services, trusting the test CA; gRPC's default
    options unless others are given (`grpc_server.CHANNEL_OPTIONS` are the services')."""
    return client_channel(address, client_credentials(), options)


@functools.cache
def _mutual_credentials() -> grpc.ChannelCredentials:
    certificates = dev_certificates()
    credentials = channel_credentials(
        TlsSettings(
            ca_file=certificates.ca,
            cert_file=certificates.client_cert,
            key_file=certificates.client_key,
        )
    )
    assert credentials is not None
    return credentials


def mutual_channel(address: str, options: Sequence[tuple[str, Any]] = ()) -> grpc.aio.Channel:
    """A channel presenting the test client certificate, for servers that require one."""
    return client_channel(address, _mutual_credentials(), options)
