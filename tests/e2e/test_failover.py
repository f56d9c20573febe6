"""Failover: the primary service manager dies mid-session (SIGKILL); the SDK moves to
the secondary, resumes the same session, and nothing is lost or charged twice."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from client_sdk import ClientConfig, MeterlineClient, ServiceType, TlsConfig
from meterline.billing.v1 import billing_pb2
from meterline.kernel.config import Endpoints
from meterline.kernel.processes import free_port, spawn_service, stop_processes, wait_until_serving
from tests.support.scenario import ENDPOINT, Operator
from tests.support.stack import environment, operator_token
from tests.support.stores import StoreUrls

pytestmark = pytest.mark.e2e


async def test_primary_dies_mid_session(stores: StoreUrls, tmp_path: Path) -> None:
    primary = f"127.0.0.1:{free_port()}"
    secondary = f"127.0.0.1:{free_port()}"
    endpoints = Endpoints(
        rating=f"127.0.0.1:{free_port()}", billing=f"127.0.0.1:{free_port()}", service=primary
    )
    env = environment(stores, endpoints)
    processes = []
    try:
        for role, address, extra in (
            ("rating", endpoints.rating, {}),
            ("billing", endpoints.billing, {}),
            ("service", primary, {}),
            ("service", secondary, {"METERLINE_SERVICE_ADDRESS": secondary}),
        ):
            log = tmp_path / f"{role}-{address.rsplit(':', 1)[1]}.log"
            process = spawn_service(role, {**env, **extra}, log)
            processes.append(process)
            wait_until_serving(address, process, log)

        operator = Operator(endpoints, operator_token())
        await operator.import_voice_tariff()
        account_id = await operator.funded_account(1_000_000, key=f"failover-{primary}")
        client_id, secret = await operator.device_credential(account_id)
        config = ClientConfig(
            service_addresses=[primary, secondary],
            auth_addresses=[endpoints.billing],
            client_id=client_id,
            client_secret=secret,
            tls=TlsConfig(plaintext=True),
        )
        async with MeterlineClient(config) as client:
            session = await client.start_service(ServiceType.VOICE, ENDPOINT)
            assert (await session.report(30)).charged_micros == 300_000

            processes[2].send_signal(signal.SIGKILL)
            processes[2].wait(timeout=10)

            moved = await session.report(70)  # past the first slice: a second hold
            assert moved.charged_micros == 700_000
            assert client.service_pool.current == secondary
            again = await session.report(90)
            assert (again.sequence, again.charged_micros) == (3, 900_000)
            record = await session.stop(90)

        assert record.charged_micros == 900_000
        account = await operator.account(account_id)
        assert (account.balance_micros, account.held_micros) == (100_000, 0)
        entries = await operator.ledger(account_id)
        revenue = sum(
            e.amount_micros
            for e in entries
            if e.ledger_account == billing_pb2.LEDGER_ACCOUNT_REVENUE
        )
        assert revenue == 900_000
    finally:
        stop_processes(processes)
