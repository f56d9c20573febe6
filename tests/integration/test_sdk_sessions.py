"""The SDK against real servers (in this process, over TLS, with a liveness timeout of two
seconds): an expired token is refreshed without the caller noticing; the heartbeat keeps
a session whose caller reports by hand alive past the liveness timeout; refusals arrive
as typed errors with the server's reason; the rate carries what a display needs; and the
synchronous facade runs a whole session in a plain script, without asyncio."""

from __future__ import annotations

import asyncio
import json
import math
import sys
import textwrap
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest

from client_sdk import (
    ClientConfig,
    InsufficientFunds,
    MeterlineClient,
    ServiceRefused,
    ServiceType,
    TerminationReason,
    Unit,
    UnknownEndpoint,
)
from meterline.billing.v1 import billing_pb2
from meterline.kernel.config import QuotaPolicy
from meterline.kernel.principals import Principal, PrincipalKind
from meterline.rating.v1 import rating_pb2, types_pb2
from meterline.service.v1 import service_pb2
from tests.support import tls
from tests.support.clients import (
    OPERATOR,
    Stubs,
    device_credential,
    ensure_tariff,
    new_account,
    stubs,
)
from tests.support.stack import InProcessStack, start_in_process, token_for
from tests.support.stores import StoreUrls

pytestmark = pytest.mark.integration

VALIDITY = 2
"""The stack's liveness timeout in seconds: a session silent this long is ended."""
PREFIX = "+3399"
ENDPOINT = "+33991234"
PRICE = 10_000


@pytest.fixture(scope="module")
async def short_liveness(stores: StoreUrls) -> AsyncIterator[InProcessStack]:
    running = await start_in_process(stores, QuotaPolicy(validity_seconds=VALIDITY))
    try:
        yield running
    finally:
        await running.close()


@pytest.fixture
async def api(short_liveness: InProcessStack) -> AsyncIterator[Stubs]:
    connected = stubs(short_liveness.endpoints)
    await ensure_tariff(connected.rating, PREFIX, PRICE)
    try:
        yield connected
    finally:
        await connected.close()


async def credential(api: Stubs, funded: int = 5_000_000) -> tuple[str, str, str]:
    account_id = await new_account(api.billing, funded)
    client_id, secret = await device_credential(api.auth, account_id)
    return account_id, client_id, secret


def config(stack: InProcessStack, client_id: str, secret: str) -> ClientConfig:
    return ClientConfig(
        service_addresses=[stack.endpoints.service],
        auth_addresses=[stack.endpoints.billing],
        client_id=client_id,
        client_secret=secret,
        tls=tls.client_tls(),
    )


async def active_sessions(api: Stubs, account_id: str) -> list[str]:
    active = await api.service.ListActiveSessions(
        service_pb2.ListActiveSessionsRequest(account_id=account_id), metadata=OPERATOR
    )
    return [item.session_id for item in active.sessions]


def plant_expired_token(client: MeterlineClient, account_id: str) -> None:
    """Give the client a token that the servers find expired in a moment while the device
    believes it good for long (its clock is wrong): only the server's answer tells."""
    principal = Principal(kind=PrincipalKind.DEVICE, subject="device", account_id=account_id)
    client.tokens._token = token_for(principal, ttl=timedelta(seconds=1))
    client.tokens._refresh_at = math.inf


async def test_an_expired_token_is_refreshed_without_the_caller_noticing(
    short_liveness: InProcessStack, api: Stubs
) -> None:
    account_id, client_id, secret = await credential(api)
    async with MeterlineClient(config(short_liveness, client_id, secret)) as client:
        assert client.tokens.refreshes == 1
        plant_expired_token(client, account_id)
        await asyncio.sleep(2.1)  # the planted token's `exp` (whole seconds) has passed

        session = await client.start_service(ServiceType.VOICE, ENDPOINT)  # a unary call
        assert client.tokens.refreshes == 2
        assert (await session.report(4)).charged_micros == 40_000

        plant_expired_token(client, account_id)
        await asyncio.sleep(2.1)
        await session._stream.close()  # the next update opens a stream with that token
        assert (await session.report(6)).charged_micros == 60_000
        assert client.tokens.refreshes == 3

        plant_expired_token(client, account_id)
        await asyncio.sleep(2.1)
        assert (await client.balance()).account_id == account_id  # the billing manager
        assert client.tokens.refreshes == 4
        record = await session.stop(6)
    assert (record.used_units, record.charged_micros) == (6, 60_000)


async def test_heartbeat_keeps_a_hand_reporting_session_alive_past_the_liveness_timeout(
    short_liveness: InProcessStack, api: Stubs
) -> None:
    account_id, client_id, secret = await credential(api)
    async with MeterlineClient(config(short_liveness, client_id, secret)) as client:
        session = await client.start_service(ServiceType.VOICE, ENDPOINT)
        # Learned from the grant: a third of the liveness timeout.
        assert 0.5 <= session.heartbeat_interval <= VALIDITY / 3 + 0.05
        first = await session.report(5)
        assert first.sequence == 1

        await asyncio.sleep(3 * VALIDITY)  # the caller reports nothing for three timeouts
        assert not session.ended
        assert await active_sessions(api, account_id) == [session.session_id]
        later = await session.report(7)
        assert later.sequence > 4, "the heartbeats carried sequences of their own"
        assert (later.used_units, later.charged_micros) == (7, 70_000)
        record = await session.stop(7)
    assert record.termination_reason is TerminationReason.CLIENT_STOP
    assert (record.used_units, record.charged_micros) == (7, 70_000)


async def test_refusals_are_typed_errors_with_the_servers_reason(
    short_liveness: InProcessStack, api: Stubs
) -> None:
    _, client_id, secret = await credential(api, funded=0)
    async with MeterlineClient(config(short_liveness, client_id, secret)) as client:
        with pytest.raises(InsufficientFunds) as poor:
            await client.start_service(ServiceType.VOICE, ENDPOINT)
        assert poor.value.reason == "INSUFFICIENT_FUNDS" and poor.value.message
        with pytest.raises(UnknownEndpoint) as nowhere:
            # An application no tariff names (voice and video have catch-all tariffs in
            # the example sheets other tests import).
            await client.start_service(ServiceType.APPLICATION, f"no-such-app-{uuid.uuid4().hex}")
        assert nowhere.value.reason == "UNKNOWN_ENDPOINT"


async def test_the_rate_shows_what_a_display_needs(
    short_liveness: InProcessStack, api: Stubs
) -> None:
    await api.rating.UpsertTariff(
        rating_pb2.UpsertTariffRequest(
            tariff=rating_pb2.Tariff(
                service_type=types_pb2.FILE_DOWNLOAD,
                prefix="files.example",
                unit=types_pb2.BYTE,
                price_per_unit_micros=50_000,
                unit_size=1_000_000,
                increment_units=1000,
                first_increment_units=100_000,
                setup_fee_micros=20_000,
                currency="EUR",
            )
        ),
        metadata=OPERATOR,
    )
    _, client_id, secret = await credential(api)
    async with MeterlineClient(config(short_liveness, client_id, secret)) as client:
        session = await client.start_service(ServiceType.FILE_DOWNLOAD, "files.example")
        rate = session.rate
        assert (rate.unit, rate.unit_size, rate.increments) == (Unit.BYTE, 1_000_000, "100000/1000")
        assert (rate.price, rate.setup_fee, rate.service_type) == (
            "0.05",
            "0.02",
            ServiceType.FILE_DOWNLOAD,
        )
        assert rate.describe() == (
            "0.05 EUR per 1,000,000 bytes, billed 100000/1000, setup fee 0.02 EUR"
        )
        await session.stop(0)


SYNC_SCRIPT = textwrap.dedent(
    """
    import json
    import sys
    from pathlib import Path

    from client_sdk.sync import ClientConfig, MeterlineClient, ServiceType, TlsConfig

    settings = json.loads(sys.argv[1])
    config = ClientConfig(
        service_addresses=[settings["service"]],
        auth_addresses=[settings["billing"]],
        client_id=settings["client_id"],
        client_secret=settings["secret"],
        report_interval=0.05,
        tls=TlsConfig(ca_file=Path(settings["ca"])),
    )
    seconds = 0
    with MeterlineClient(config) as client:
        automatic = client.start_service(
            ServiceType.VOICE, settings["endpoint"], usage_source=lambda: seconds
        )
        seen = []
        for update in automatic.updates():
            seen.append(update.used_units)
            seconds = min(seconds + 1, 5)
            if update.used_units >= 5:
                break
        with client.start_service(ServiceType.VOICE, settings["endpoint"]) as by_hand:
            by_hand.report(2)
            last = by_hand.report(3)
        first = automatic.stop(5)
        print(json.dumps({
            "seen": seen,
            "automatic": [first.used_units, first.charged_micros, first.termination_reason],
            "by_hand": [by_hand.record.used_units, by_hand.record.charged_micros],
            "last_charge": last.charged,
            "balance": client.balance().balance_micros,
        }))
    """
)


async def test_the_synchronous_facade_runs_a_whole_session_in_a_plain_script(
    short_liveness: InProcessStack, api: Stubs, tmp_path: Path
) -> None:
    assert "async" not in SYNC_SCRIPT and "await" not in SYNC_SCRIPT
    account_id, client_id, secret = await credential(api, funded=1_000_000)
    script = tmp_path / "device.py"
    script.write_text(SYNC_SCRIPT)
    settings = {
        "service": short_liveness.endpoints.service,
        "billing": short_liveness.endpoints.billing,
        "client_id": client_id,
        "secret": secret,
        "ca": str(tls.dev_certificates().ca),
        "endpoint": ENDPOINT,
    }
    # The servers run in this process's event loop: wait for the script without blocking it.
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(script),
        json.dumps(settings),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode == 0, err.decode()
    result = json.loads(out.decode().strip().splitlines()[-1])
    assert result["seen"][-1] == 5 and result["seen"] == sorted(result["seen"])
    assert result["automatic"] == [5, 50_000, "CLIENT_STOP"]
    assert result["by_hand"] == [3, 30_000]
    assert result["last_charge"] == "0.03"
    assert result["balance"] == 1_000_000 - 80_000
    assert await active_sessions(api, account_id) == []


ROOT = Path(__file__).resolve().parents[2]


async def run_device(*command: str) -> str:
    """Run a device program against the in-process stack, without blocking its loop."""
    process = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=ROOT
    )
    out, err = await asyncio.wait_for(process.communicate(), timeout=60)
    assert process.returncode == 0, out.decode() + err.decode()
    return out.decode()


async def test_the_guides_example_runs(short_liveness: InProcessStack, api: Stubs) -> None:
    await ensure_tariff(api.rating, "+4420", 10_000)
    _, client_id, secret = await credential(api, funded=1_000_000)
    out = await run_device(
        sys.executable,
        "docs/examples/device_session.py",
        f"--client-id={client_id}",
        f"--client-secret={secret}",
        f"--ca={tls.dev_certificates().ca}",
        f"--service={short_liveness.endpoints.service}",
        f"--billing={short_liveness.endpoints.billing}",
        "--seconds=3",
        "--speed=20",
    )
    assert "available 1.00 EUR" in out
    assert "0.01 EUR per second, billed 1/1" in out
    assert out.strip().splitlines()[-1] == "ended (CLIENT_STOP): 3 s, charged 0.03 EUR"


async def test_the_readme_snippet_runs(short_liveness: InProcessStack, api: Stubs) -> None:
    """The README's SDK snippet, as printed, with this stack's addresses and credential."""
    readme = (ROOT / "README.md").read_text()
    snippet = readme.split("## Embedding the SDK", 1)[1].split("```python", 1)[1]
    snippet = snippet.split("```", 1)[0]
    await ensure_tariff(api.rating, "+4420", 10_000)
    _, client_id, secret = await credential(api, funded=1_000_000)
    for printed, here in (
        ('"127.0.0.1:50053"', f'"{short_liveness.endpoints.service}"'),
        ('"127.0.0.1:50052"', f'"{short_liveness.endpoints.billing}"'),
        (
            'client_id="dev_…", client_secret="…",',
            f'client_id="{client_id}", client_secret="{secret}", report_interval=0.05,',
        ),
        ('".meterline/tls/ca.pem"', f'"{tls.dev_certificates().ca}"'),
    ):
        assert snippet.count(printed) == 1, f"the README's snippet no longer has {printed}"
        snippet = snippet.replace(printed, here)
    out = await run_device(sys.executable, "-c", snippet)
    assert out.strip().splitlines()[-1] == "charged 0.11 EUR"


async def test_a_device_tops_up_with_a_voucher_once(
    short_liveness: InProcessStack, api: Stubs
) -> None:
    batch = await api.billing.CreateVouchers(
        billing_pb2.CreateVouchersRequest(count=1, amount_micros=2_500_000, currency="EUR"),
        metadata=OPERATOR,
    )
    (code,) = batch.codes
    _, client_id, secret = await credential(api, funded=1_000_000)
    async with MeterlineClient(config(short_liveness, client_id, secret)) as client:
        before = await client.balance()
        after = await client.redeem_voucher(code.lower().replace("-", " "))
        assert after.balance_micros == before.balance_micros + 2_500_000
        assert (await client.balance()).balance_micros == after.balance_micros
        # The same code again on this account: the first funding, not a second one.
        assert (await client.redeem_voucher(code)).balance_micros == after.balance_micros
        assert (await client.balance()).balance_micros == after.balance_micros
    _, other_id, other_secret = await credential(api, funded=0)
    async with MeterlineClient(config(short_liveness, other_id, other_secret)) as other:
        with pytest.raises(ServiceRefused) as used:
            await other.redeem_voucher(code)
        assert used.value.reason == "VOUCHER_USED"
        assert (await other.balance()).balance_micros == 0
