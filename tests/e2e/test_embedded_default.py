"""The v1 scenario on the embedded default: no URLs set, so `meterline up` starts real
PostgreSQL and Redis from the wheels on free loopback ports, and the demo runs there."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from meterline.kernel.config import Endpoints
from meterline.kernel.dev_certificates import DevCertificates
from meterline.kernel.processes import free_port, port_is_free
from tests.support.scenario import run_prepaid_voice_scenario
from tests.support.stack import TOKEN_SECRET, operator_token

pytestmark = [pytest.mark.e2e, pytest.mark.embedded]

METERLINE_CLI = [sys.executable, "-m", "meterline.cli.main"]


def _embedded_env(data_dir: Path) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("METERLINE_") or key == "METERLINE_LOG_LEVEL"
    }
    env.update(
        METERLINE_DATA_DIR=str(data_dir),
        METERLINE_TOKEN_SECRET=TOKEN_SECRET,
        METERLINE_RATING_ADDRESS=f"127.0.0.1:{free_port()}",
        METERLINE_BILLING_ADDRESS=f"127.0.0.1:{free_port()}",
        METERLINE_SERVICE_ADDRESS=f"127.0.0.1:{free_port()}",
        METERLINE_WEB_ADDRESS=f"127.0.0.1:{free_port()}",
    )
    return env


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return (
        Path(f"/proc/{pid}/status").exists() and "zombie" in Path(f"/proc/{pid}/status").read_text()
    )


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as page:
        return str(page.read().decode())


def _free_ports(count: int) -> int:
    """The first of `count` consecutive free loopback ports."""
    while True:
        first = free_port()
        if first + count <= 65536 and all(
            port_is_free(f"127.0.0.1:{first + n}") for n in range(count)
        ):
            return first


async def test_scenario_on_the_embedded_default(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    env = _embedded_env(data_dir)
    # One METERLINE_METRICS_ADDRESS for `up`: each service takes a port of its own.
    metrics = _free_ports(3)
    env["METERLINE_METRICS_ADDRESS"] = f"127.0.0.1:{metrics}"
    up = subprocess.Popen(  # noqa: ASYNC220 - it only starts the process
        [*METERLINE_CLI, "up"],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    state_file = data_dir / "stack.json"
    try:
        deadline = time.monotonic() + 120
        while not state_file.exists():
            assert up.poll() is None, up.stdout.read().decode() if up.stdout else ""
            assert time.monotonic() < deadline, "meterline up did not start in 120 s"
            await asyncio.sleep(0.2)
        state = json.loads(state_file.read_text())
        assert state["embedded"] is True
        stores = state["stores"]
        # The plain form, which psql takes too (docs/operations.md).
        assert stores["rating_database_url"].startswith("postgresql://")
        assert ":5432/" not in stores["rating_database_url"]
        assert not stores["redis_url"].endswith(":6379/0")
        # TLS with the certificates `meterline up` made in its data folder.
        tls = DevCertificates(data_dir / "tls")
        assert state["tls"]["plaintext"] is False
        assert Path(state["tls"]["ca_file"]) == tls.ca.resolve()
        assert (tls.server_key.stat().st_mode & 0o777) == 0o600
        await run_prepaid_voice_scenario(
            Endpoints(**state["endpoints"]),
            operator_token(),
            stores["service_database_url"],
            stores["redis_url"],
            stores["redis_prefix"],
            ca_file=tls.ca,
        )
        pids = [state["processes"][name] for name in ("postgres", "redis", "rating")]
        for port in range(metrics, metrics + 3):
            page = await asyncio.to_thread(_scrape, port)
            assert 'meterline_rpc_calls_total{code="OK"' in page, port
    finally:
        up.send_signal(signal.SIGTERM)
        up.wait(timeout=60)
    assert up.returncode == 0
    assert not state_file.exists()
    assert all(_gone(pid) for pid in pids)


def test_the_readme_demo_command(tmp_path: Path) -> None:
    env = _embedded_env(tmp_path / "data")
    result = subprocess.run(
        [*METERLINE_CLI, "up", "--demo", "--json"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    summary = json.loads(result.stdout)
    assert summary["charged_micros"] == 420_000
    assert summary["balance"] == "0.58"
    assert summary["used_units"] == 42
    assert summary["termination_reason"] == "CLIENT_STOP"
    assert summary["updates"] >= 3  # the charge ticked up live
    # Over TLS, with the certificates `meterline up` made in its data folder.
    assert DevCertificates(tmp_path / "data" / "tls").usable()
