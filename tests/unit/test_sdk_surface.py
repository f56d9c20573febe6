"""The SDK's public surface is deliberate: adding or removing a name is a decision. The
synchronous facade offers the same names; the config refuses what cannot work; the SDK
imports no server code; the SDK's amounts read as the servers' do."""

from __future__ import annotations

import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

import client_sdk
import client_sdk.sync
from client_sdk import (
    ClientConfig,
    FailoverConfig,
    KeepAliveConfig,
    Rate,
    RetryConfig,
    TlsConfig,
    Unit,
    VolumeTier,
)
from client_sdk._money import format_amount
from client_sdk.session import heartbeat_interval
from meterline.kernel.money import format_amount as servers_format_amount
from meterline.service.v1 import service_pb2

pytestmark = pytest.mark.unit

PUBLIC = {
    "AccountEvent",
    "AccountSuspended",
    "ActiveService",
    "AuthenticationError",
    "AuthenticationFailed",
    "Balance",
    "BandPrice",
    "BillingUpdate",
    "ClientConfig",
    "FailoverConfig",
    "InsufficientFunds",
    "InvalidRequest",
    "KeepAliveConfig",
    "LimitExceeded",
    "MeterlineClient",
    "MeterlineClientError",
    "NoGateway",
    "NotFound",
    "PackageTampered",
    "PermissionDenied",
    "Rate",
    "RetryConfig",
    "ServerError",
    "ServersUnavailable",
    "ServiceRecord",
    "ServiceRefused",
    "ServiceSession",
    "ServiceType",
    "SessionEnded",
    "SignatureInvalid",
    "TerminationReason",
    "TimeBand",
    "TlsConfig",
    "Unit",
    "UnknownEndpoint",
    "UntrustedSigningKey",
    "UpdateAvailable",
    "UpdateConfig",
    "UpdateError",
    "UsageSource",
    "VerifiedPackage",
    "VolumeTier",
}

SYNC_TWINS = {"MeterlineClient", "ServiceSession"}
"""The names client_sdk.sync defines itself (blocking); every other name is shared."""


def test_exported_names() -> None:
    assert set(client_sdk.__all__) == PUBLIC
    for name in PUBLIC:
        assert getattr(client_sdk, name) is not None


def test_the_synchronous_facade_has_the_same_names() -> None:
    assert set(client_sdk.sync.__all__) == PUBLIC
    for name in PUBLIC - SYNC_TWINS:
        assert getattr(client_sdk.sync, name) is getattr(client_sdk, name)
    for name in SYNC_TWINS:
        blocking, awaitable = getattr(client_sdk.sync, name), getattr(client_sdk, name)
        assert blocking is not awaitable
        # Async-only: the updates() iterator has a blocking twin of the same name; the
        # ComponentUpdates object is for asyncio code.
        public = {m for m in dir(awaitable) if not m.startswith("_")} - {"component_updates"}
        assert public <= set(dir(blocking)), public - set(dir(blocking))


def test_config_refuses_what_cannot_work() -> None:
    with pytest.raises(ValueError, match="service_addresses"):
        ClientConfig([], ["a:1"], "id", "secret")
    with pytest.raises(ValueError, match="client_id and client_secret"):
        ClientConfig(["a:1"], ["a:1"], "", "secret")
    with pytest.raises(ValueError, match="report_interval"):
        ClientConfig(["a:1"], ["a:1"], "id", "secret", report_interval=0)
    assert "secret" not in repr(ClientConfig(["a:1"], ["a:1"], "id", "s3cr3t"))


@pytest.mark.parametrize(
    ("make", "words"),
    [
        (lambda: ClientConfig("a:1", ["a:1"], "id", "s"), "not one string"),
        (lambda: ClientConfig(["a"], ["a:1"], "id", "s"), "has no port"),
        (lambda: ClientConfig(["a:1", "a:1"], ["a:1"], "id", "s"), "twice"),
        (lambda: ClientConfig(["a:1"], ["a:99999"], "id", "s"), "has no port"),
        (lambda: ClientConfig(["a:1"], ["a:1"], "id", "s", heartbeat_interval=0), "heartbeat"),
        (lambda: ClientConfig(["a:1"], ["a:1"], "id", "s", token_refresh_margin=-1), "margin"),
        (lambda: ClientConfig(["a:1"], ["a:1"], "id", "s", retry=None), "RetryConfig"),  # type: ignore[arg-type]
        (lambda: RetryConfig(max_attempts=0), "max_attempts"),
        (lambda: RetryConfig(initial_backoff=1, max_backoff=0.5), "max_backoff"),
        (lambda: RetryConfig(max_elapsed=float("inf")), "max_elapsed"),
        (lambda: FailoverConfig(ack_timeout=0), "ack_timeout"),
        (lambda: FailoverConfig(call_timeout=-1), "call_timeout"),
        (lambda: FailoverConfig(failure_threshold=0), "failure_threshold"),
        (lambda: FailoverConfig(cool_down=0), "cool_down"),
        (lambda: KeepAliveConfig(interval=0), "interval"),
        (lambda: TlsConfig(plaintext=True, ca_file="ca.pem"), "plaintext"),  # type: ignore[arg-type]
    ],
)
def test_every_sub_config_is_checked(make: object, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        make()  # type: ignore[operator]


def test_addresses_may_be_grpc_targets() -> None:
    config = ClientConfig(["dns:///sm.example:443", "[::1]:50053"], ["unix:/run/b.sock"], "i", "s")
    assert config.service_addresses[1] == "[::1]:50053"


def test_the_heartbeat_is_a_third_of_the_liveness_timeout_unless_configured() -> None:
    started = service_pb2.StartServiceResponse()
    assert heartbeat_interval(None, started) == 40.0  # the servers' default of 120 s
    started.quota_valid_until.GetCurrentTime()
    started.quota_valid_until.seconds += 30
    assert 9.5 < heartbeat_interval(None, started) <= 10.0
    assert heartbeat_interval(2.5, started) == 2.5


def test_the_sdk_imports_no_server_code() -> None:
    """A device imports client_sdk without database drivers, servers or the kernel."""
    code = (
        "import sys, client_sdk, client_sdk.sync\n"
        "banned = ('sqlalchemy', 'psycopg', 'psycopg_pool', 'redis', 'alembic', 'jwt', "
        "'typer', 'yaml', 'meterline.kernel', 'meterline.cli', 'service_manager', "
        "'billing_manager', 'rating_service')\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in banned "
        "or m.startswith(banned))\n"
        "assert not loaded, loaded\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@given(st.integers(min_value=-(2**63), max_value=2**63 - 1))
def test_amounts_read_as_the_servers_write_them(micros: int) -> None:
    assert format_amount(micros) == servers_format_amount(micros)


def test_a_rate_describes_itself_for_a_display() -> None:
    per_minute = Rate("t", "+44", Unit.SECOND, 10_000, 6, 60, 100_000, "EUR", 30)
    assert per_minute.increments == "30/6"
    assert per_minute.describe() == (
        "0.01 EUR per second, billed 30/6, minimum 60 seconds, setup fee 0.10 EUR"
    )
    tiers = (VolumeTier(1_000_000_000, 20_000), VolumeTier(0, 10_000))
    volume = Rate("t", "", Unit.BYTE, 0, 1, 0, 0, "EUR", unit_size=1_000_000, tiers=tiers)
    assert volume.describe() == (
        "EUR per 1,000,000 bytes by volume (up to 1,000,000,000: 0.02; beyond: 0.01), billed 1/1"
    )
