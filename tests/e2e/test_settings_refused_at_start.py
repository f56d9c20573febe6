"""Settings a service cannot use stop it at start with one line and exit code 2, before
any store is touched (the stores here are closed loopback ports: reaching for them would
be exit 1 and the store's sentence instead)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from meterline.kernel.processes import SERVICE_PACKAGES, free_port

pytestmark = pytest.mark.e2e


def _start(role: str, **settings: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("METERLINE_")}
    closed = free_port()
    env = {
        **clean,
        "METERLINE_PLAINTEXT": "1",
        "METERLINE_TOKEN_SECRET": "s" * 40,
        "METERLINE_RATING_DATABASE_URL": f"postgresql://m@127.0.0.1:{closed}/r",
        "METERLINE_SERVICE_DATABASE_URL": f"postgresql://m@127.0.0.1:{closed}/s",
        "METERLINE_REDIS_URL": f"redis://127.0.0.1:{closed}/0",
        "METERLINE_RATING_ADDRESS": "127.0.0.1:0",
        "METERLINE_SERVICE_ADDRESS": "127.0.0.1:0",
        **settings,
    }
    return subprocess.run(
        [sys.executable, "-m", SERVICE_PACKAGES[role]],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _one_line(done: subprocess.CompletedProcess[str], *expected: str) -> None:
    assert done.returncode == 2, done.stderr
    output = (done.stdout + done.stderr).strip()
    assert "Traceback" not in output, output
    (line,) = [line for line in output.splitlines() if line.startswith("error: ")]
    for part in expected:
        assert part in line, line


def test_a_peer_list_of_host_names_is_refused_before_the_stores() -> None:
    _one_line(
        _start("service", METERLINE_RATING_PEERS="rating-a.internal:50051,rating-b:50051"),
        "METERLINE_RATING_PEERS: 'rating-a.internal:50051' is not an IP address",
        "dns:///name:port",
    )


def test_a_metrics_address_in_use_is_one_line() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        _one_line(
            _start("rating", METERLINE_METRICS_ADDRESS=address),
            f"METERLINE_METRICS_ADDRESS {address} cannot be served",
        )
