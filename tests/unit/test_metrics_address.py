"""METERLINE_METRICS_ADDRESS as an operator sets it: one process per address, so
`meterline up` gives each service its own port, and an address that cannot be served
stops a process with one sentence naming the setting."""

from __future__ import annotations

import socket

import pytest

from meterline.cli.stack import StackError, metrics_addresses
from meterline.kernel.config import ConfigError, load_settings
from meterline.kernel.metrics import serve_metrics

pytestmark = pytest.mark.unit


def test_up_gives_each_service_its_own_metrics_port() -> None:
    assert metrics_addresses("") == {}
    assert metrics_addresses("127.0.0.1:9464") == {
        "rating": "127.0.0.1:9464",
        "billing": "127.0.0.1:9465",
        "service": "127.0.0.1:9466",
    }
    # Port 0: each picks one of its own (and logs it).
    assert set(metrics_addresses("127.0.0.1:0").values()) == {"127.0.0.1:0"}
    for bad in ("nope", "127.0.0.1:", "127.0.0.1:65535"):
        with pytest.raises(StackError, match="METERLINE_METRICS_ADDRESS"):
            metrics_addresses(bad)


def test_an_address_that_cannot_be_served_is_a_setting_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match=r"METERLINE_METRICS_ADDRESS 127\.0\.0\.1:\d+ cannot"):
            serve_metrics(f"127.0.0.1:{port}")
    with pytest.raises(ConfigError, match="is not host:port"):
        serve_metrics("localhost")


def test_a_metrics_address_that_is_not_host_port_is_refused_with_the_settings() -> None:
    """Read once with every setting, so `meterline up` refuses it (exit 2) before it
    starts anything, as each service does."""
    assert load_settings({"METERLINE_METRICS_ADDRESS": " 127.0.0.1:9464 "}).metrics_address == (
        "127.0.0.1:9464"
    )
    assert load_settings({}).metrics_address == ""
    for bad in ("nope", "127.0.0.1:", "127.0.0.1:99999"):
        with pytest.raises(ConfigError, match="METERLINE_METRICS_ADDRESS"):
            load_settings({"METERLINE_METRICS_ADDRESS": bad})
