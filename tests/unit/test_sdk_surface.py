"""The SDK's public surface is deliberate: adding or removing a name is a decision."""

from __future__ import annotations

import pytest

import client_sdk

pytestmark = pytest.mark.unit

PUBLIC = {
    "AuthenticationError",
    "Balance",
    "BillingUpdate",
    "ClientConfig",
    "MeterlineClient",
    "MeterlineClientError",
    "Rate",
    "ServersUnavailable",
    "ServiceRecord",
    "ServiceRefused",
    "ServiceSession",
    "ServiceType",
    "TerminationReason",
    "TlsConfig",
    "Unit",
    "UsageSource",
}


def test_exported_names() -> None:
    assert set(client_sdk.__all__) == PUBLIC
    for name in PUBLIC:
        assert getattr(client_sdk, name) is not None


def test_config_refuses_what_cannot_work() -> None:
    with pytest.raises(ValueError, match="service_addresses"):
        client_sdk.ClientConfig([], ["a:1"], "id", "secret")
    with pytest.raises(ValueError, match="client_id and client_secret"):
        client_sdk.ClientConfig(["a:1"], ["a:1"], "", "secret")
    with pytest.raises(ValueError, match="report_interval"):
        client_sdk.ClientConfig(["a:1"], ["a:1"], "id", "secret", report_interval=0)
    assert "secret" not in repr(client_sdk.ClientConfig(["a:1"], ["a:1"], "id", "s3cr3t"))
