"""`meterline web` as a user runs it: a process of its own that serves the sign-in page
over HTTPS with the services' certificate, and refuses an address it cannot use with one
line; `credential issue --portal` only with an account."""

from __future__ import annotations

import http.client
import json
import os
import select
import signal
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from meterline.kernel.config import TlsSettings
from meterline.kernel.processes import free_port, spawn, stop_processes
from meterline.web.server import wait_until_answering
from tests.support import tls
from tests.support.stack import TOKEN_SECRET, InProcessStack

pytestmark = pytest.mark.integration
CLI = [sys.executable, "-m", "meterline.cli.main"]


def _env(stack: InProcessStack) -> dict[str, str]:
    return {
        **os.environ,
        "METERLINE_TOKEN_SECRET": TOKEN_SECRET,
        "METERLINE_BILLING_ADDRESS": stack.endpoints.billing,
        "METERLINE_SERVICE_ADDRESS": stack.endpoints.service,
        "METERLINE_RATING_ADDRESS": stack.endpoints.rating,
        **tls.tls_environment(),
    }


def test_meterline_web_serves_the_sign_in_page_over_https(
    stack: InProcessStack, tmp_path: Path
) -> None:
    address = f"127.0.0.1:{free_port()}"
    log = tmp_path / "web.log"
    process = spawn([*CLI, "web", "--address", address], log, death_signal=15, env=_env(stack))
    try:
        wait_until_answering(
            address, process, log, TlsSettings(ca_file=tls.dev_certificates().ca), seconds=30
        )
    finally:
        stop_processes([process])
    assert f"web page serving on https://{address}" in log.read_text()


def _json_on_stdout(process: subprocess.Popen[bytes], seconds: float) -> dict[str, Any]:
    """The JSON object the process prints on stdout (over one or more lines)."""
    assert process.stdout is not None
    fd = process.stdout.fileno()
    deadline = time.monotonic() + seconds
    text = b""
    while time.monotonic() < deadline:
        readable, _, _ = select.select([fd], [], [], 0.2)
        if not readable:
            assert process.poll() is None, f"the page exited with {process.returncode}"
            continue
        chunk = os.read(fd, 4096)
        assert chunk, f"stdout closed after {text!r}"
        text += chunk
        try:
            found: dict[str, Any] = json.loads(text)
        except json.JSONDecodeError:
            continue
        return found
    raise AssertionError(f"no JSON object on stdout within {seconds} s: {text!r}")


def _answers(address: str) -> int:
    host, port = address.rsplit(":", 1)
    context = ssl.create_default_context(cafile=str(tls.dev_certificates().ca))
    connection = http.client.HTTPSConnection(host, int(port), timeout=5, context=context)
    try:
        connection.request("GET", "/sign-in")
        return connection.getresponse().status
    finally:
        connection.close()


def test_meterline_web_json_says_where_it_serves_once_it_answers(
    stack: InProcessStack, tmp_path: Path
) -> None:
    address = f"127.0.0.1:{free_port()}"
    with open(tmp_path / "web.err", "wb") as errors:
        process = subprocess.Popen(
            [*CLI, "web", "--address", address, "--json"],
            env=_env(stack),
            stdout=subprocess.PIPE,
            stderr=errors,
        )
    try:
        said = _json_on_stdout(process, 30)
        assert _answers(address) == 200  # at once: it was said once the page answered
        assert process.poll() is None  # and it goes on serving
        process.send_signal(signal.SIGINT)
        rest, _ = process.communicate(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert said == {
        "status": "serving",
        "pid": process.pid,
        "web_url": f"https://{address}",
        "address": address,
        "ca_file": str(tls.dev_certificates().ca),
    }
    assert rest == b""  # nothing else on stdout: no text line beside the JSON


def test_meterline_web_json_refuses_an_address_in_use_as_one_json_line(
    stack: InProcessStack,
) -> None:
    address = stack.endpoints.billing  # taken by the billing manager
    done = subprocess.run(
        [*CLI, "web", "--address", address, "--json"],
        env=_env(stack),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (done.returncode, done.stdout) == (2, "")
    (line,) = done.stderr.strip().splitlines()
    refused = json.loads(line)
    assert refused["exit_code"] == 2
    assert refused["error"].startswith(f"the web page cannot listen on {address}")


def test_meterline_web_refuses_an_address_in_use_in_one_line(
    stack: InProcessStack, tmp_path: Path
) -> None:
    address = stack.endpoints.billing  # taken by the billing manager
    done = subprocess.run(
        [*CLI, "web", "--address", address],
        env=_env(stack),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr.strip().startswith(f"error: the web page cannot listen on {address}")
    assert len(done.stderr.strip().splitlines()) == 1


def test_a_portal_credential_needs_an_account(stack: InProcessStack) -> None:
    done = subprocess.run(
        [*CLI, "credential", "issue", "--operator", "--portal"],
        env=_env(stack),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "--portal goes with --account" in done.stderr
