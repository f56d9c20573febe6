"""A service started while its database (or Redis) cannot be reached prints one sentence
naming the URL, with the password masked, and what to check, and exits 1: no traceback.
The store is a closed loopback port."""

from __future__ import annotations

import subprocess
import sys

import pytest

from meterline.kernel.config import Endpoints
from meterline.kernel.processes import SERVICE_PACKAGES, free_port
from tests.support.stack import environment
from tests.support.stores import StoreUrls

pytestmark = pytest.mark.e2e


def _start(role: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", SERVICE_PACKAGES[role]],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _assert_one_sentence(done: subprocess.CompletedProcess[str], *expected: str) -> None:
    assert done.returncode == 1, done.stderr
    output = (done.stdout + done.stderr).strip()
    assert "Traceback" not in output
    assert "hunter2" not in output  # the password
    (line,) = [line for line in output.splitlines() if line.startswith("error: ")]
    for part in expected:
        assert part in line, line


@pytest.mark.parametrize(
    ("role", "variable", "what"),
    [
        ("rating", "METERLINE_RATING_DATABASE_URL", "rating database"),
        ("billing", "METERLINE_BILLING_DATABASE_URL", "account database"),
        ("service", "METERLINE_SERVICE_DATABASE_URL", "service database"),
    ],
)
def test_a_database_that_cannot_be_reached_is_one_line(
    stores: StoreUrls, role: str, variable: str, what: str
) -> None:
    closed = free_port()
    url = f"postgresql://meterline:hunter2@127.0.0.1:{closed}/meterline"
    env = {
        **environment(
            stores, Endpoints(rating="127.0.0.1:0", billing="127.0.0.1:0", service="127.0.0.1:0")
        ),
        variable: url,
    }
    _assert_one_sentence(
        _start(role, env),
        f"the {what} at postgresql://meterline:***@127.0.0.1:{closed}/meterline ({variable})",
        "Connection refused",
        "Check that PostgreSQL runs there",
    )


def test_a_redis_that_cannot_be_reached_is_one_line(stores: StoreUrls) -> None:
    closed = free_port()
    env = {
        **environment(stores, Endpoints(service="127.0.0.1:0")),
        "METERLINE_REDIS_URL": f"redis://:hunter2@127.0.0.1:{closed}/0",
    }
    _assert_one_sentence(
        _start("service", env),
        f"the Redis at redis://:***@127.0.0.1:{closed}/0 (METERLINE_REDIS_URL)",
        "Check that Redis runs there",
    )
