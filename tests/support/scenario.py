"""The prepaid voice scenario of the v1 issue, run through the SDK against any running
stack: fund 1.00, call a 0.60-a-minute destination billed per second for 42 seconds with
several usage updates (one repeated, one out of order), stop, and check everything."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import grpc
import psycopg
import redis

from client_sdk import ClientConfig, MeterlineClient, ServiceType, TlsConfig
from client_sdk.stream import MeterStream
from meterline.auth.v1 import auth_pb2, auth_pb2_grpc
from meterline.billing.v1 import billing_pb2, billing_pb2_grpc
from meterline.kernel.config import Endpoints, TlsSettings
from meterline.kernel.db import libpq_dsn
from meterline.kernel.grpc_server import client_channel
from meterline.kernel.tls import channel_credentials
from meterline.rating.v1 import rating_pb2, rating_pb2_grpc, types_pb2
from meterline.service.v1 import service_pb2, service_pb2_grpc
from tests.support import tls
from tests.support.stack import metadata

VOICE_PREFIX = "+4420"
ENDPOINT = "+442071234567"


@dataclass
class Operator:
    """Operator-side calls the scenario needs."""

    endpoints: Endpoints
    token: str
    ca_file: Path | None = None
    """The CA the stack's certificates come from; None: the test run's."""

    def channel(self, address: str) -> grpc.aio.Channel:
        if self.ca_file is None:
            return tls.channel(address)
        return client_channel(address, channel_credentials(TlsSettings(ca_file=self.ca_file)))

    async def import_voice_tariff(self) -> None:
        async with self.channel(self.endpoints.rating) as channel:
            await rating_pb2_grpc.RatingServiceStub(channel).ImportTariffs(
                rating_pb2.ImportTariffsRequest(
                    tariffs=[
                        rating_pb2.Tariff(
                            service_type=types_pb2.VOICE,
                            prefix=VOICE_PREFIX,
                            unit=types_pb2.SECOND,
                            price_per_unit_micros=10_000,  # 0.60 a minute, per second
                            increment_units=1,
                            currency="EUR",
                            description="London, per second",
                        )
                    ]
                ),
                metadata=metadata(self.token),
            )

    async def funded_account(self, amount_micros: int, key: str) -> str:
        async with self.channel(self.endpoints.billing) as channel:
            stub = billing_pb2_grpc.BillingManagerStub(channel)
            account = await stub.CreateAccount(
                billing_pb2.CreateAccountRequest(display_name="Ada", currency="EUR"),
                metadata=metadata(self.token),
            )
            await stub.FundAccount(
                billing_pb2.FundAccountRequest(
                    account_id=account.account_id, amount_micros=amount_micros, idempotency_key=key
                ),
                metadata=metadata(self.token),
            )
            return str(account.account_id)

    async def device_credential(self, account_id: str) -> tuple[str, str]:
        async with self.channel(self.endpoints.billing) as channel:
            created = await auth_pb2_grpc.AuthServiceStub(channel).CreateCredential(
                auth_pb2.CreateCredentialRequest(
                    kind=auth_pb2.PRINCIPAL_KIND_DEVICE, account_id=account_id
                ),
                metadata=metadata(self.token),
            )
            return created.client_id, created.client_secret

    async def account(self, account_id: str) -> billing_pb2.Account:
        async with self.channel(self.endpoints.billing) as channel:
            return await billing_pb2_grpc.BillingManagerStub(channel).GetAccount(
                billing_pb2.GetAccountRequest(account_id=account_id), metadata=metadata(self.token)
            )

    async def ledger(self, account_id: str) -> list[billing_pb2.LedgerEntry]:
        entries: list[billing_pb2.LedgerEntry] = []
        token = ""
        async with self.channel(self.endpoints.billing) as channel:
            stub = billing_pb2_grpc.BillingManagerStub(channel)
            while True:
                page = await stub.ListLedgerEntries(
                    billing_pb2.ListLedgerEntriesRequest(
                        account_id=account_id, page_size=2, page_token=token
                    ),
                    metadata=metadata(self.token),
                )
                entries.extend(page.entries)
                token = page.next_page_token
                if not token:
                    return entries

    async def active_sessions(self, account_id: str) -> list[service_pb2.ActiveSession]:
        """The account's active sessions (the stack may be shared with other tests)."""
        async with self.channel(self.endpoints.service) as channel:
            response = await service_pb2_grpc.ServiceManagerStub(channel).ListActiveSessions(
                service_pb2.ListActiveSessionsRequest(account_id=account_id),
                metadata=metadata(self.token),
            )
            return list(response.sessions)


async def run_prepaid_voice_scenario(
    endpoints: Endpoints,
    operator_token: str,
    service_database_url: str,
    redis_url: str,
    redis_prefix: str,
    ca_file: Path | None = None,
) -> None:
    """`ca_file`: the CA the stack's certificates come from; None: the test run's."""
    operator = Operator(endpoints, operator_token, ca_file)
    await operator.import_voice_tariff()
    account_id = await operator.funded_account(1_000_000, key="scenario-funding")
    client_id, secret = await operator.device_credential(account_id)

    config = ClientConfig(
        service_addresses=[endpoints.service],
        auth_addresses=[endpoints.billing],
        client_id=client_id,
        client_secret=secret,
        tls=tls.client_tls() if ca_file is None else TlsConfig(ca_file=ca_file),
    )
    async with MeterlineClient(config) as client:
        assert client.account_id == account_id
        session = await client.start_service(ServiceType.VOICE, ENDPOINT)
        assert session.rate.price_per_unit_micros == 10_000
        assert session.rate.prefix == VOICE_PREFIX
        assert session.granted_units > 0
        active = await operator.active_sessions(account_id)
        assert [item.session_id for item in active] == [session.session_id]
        assert active[0].account_id == account_id and active[0].endpoint == ENDPOINT

        first = await session.report(10)
        assert (first.sequence, first.charged_micros) == (1, 100_000)
        second = await session.report(25)
        assert (second.sequence, second.charged_micros) == (2, 250_000)
        assert second.balance_micros == 750_000

        # A repeated and an out-of-order update are acknowledged and change nothing.
        raw = MeterStream(client.service_pool, client.tokens, session.session_id)
        repeated = await raw.send(2, 25)
        assert (repeated.acknowledged_sequence, repeated.charged_micros) == (2, 250_000)
        stale = await raw.send(1, 10)
        assert (stale.acknowledged_sequence, stale.used_units) == (2, 25)
        assert stale.charged_micros == 250_000
        await raw.close()

        third = await session.report(42)
        assert (third.sequence, third.charged_micros, third.balance_micros) == (3, 420_000, 580_000)
        record = await session.stop(42)

    assert record.charged_micros == 420_000
    assert record.charged == "0.42"
    assert record.used_units == 42 and record.billed_units == 42
    assert record.account_id == account_id
    assert record.service_type is ServiceType.VOICE
    assert record.endpoint == ENDPOINT
    assert record.rate.price_per_unit_micros == 10_000
    assert record.termination_reason == "CLIENT_STOP"
    assert record.duration.total_seconds() >= 0

    account = await operator.account(account_id)
    assert account.balance_micros == 580_000
    assert account.available_micros == 580_000
    assert account.held_micros == 0

    # The ledger: every transaction sums to zero, the account's entries sum to its
    # balance, and exactly the rated charge was captured.
    entries = await operator.ledger(account_id)
    by_transaction: dict[str, int] = {}
    for entry in entries:
        by_transaction[entry.transaction_id] = (
            by_transaction.get(entry.transaction_id, 0) + entry.amount_micros
        )
    assert by_transaction and all(total == 0 for total in by_transaction.values())
    customer = (
        billing_pb2.LEDGER_ACCOUNT_CUSTOMER_AVAILABLE,
        billing_pb2.LEDGER_ACCOUNT_CUSTOMER_HELD,
    )
    assert sum(e.amount_micros for e in entries if e.ledger_account in customer) == 580_000
    revenue = [e for e in entries if e.ledger_account == billing_pb2.LEDGER_ACCOUNT_REVENUE]
    assert sum(e.amount_micros for e in revenue) == 420_000

    # One service record with the right fields, and presence gone.
    with psycopg.connect(libpq_dsn(service_database_url)) as conn:
        rows = conn.execute(
            "SELECT account_id, service_type, endpoint, used_units, charged_micros, "
            "termination_reason FROM service_records WHERE account_id = %s",
            (account_id,),
        ).fetchall()
    assert rows == [(account_id, "VOICE", ENDPOINT, 42, 420_000, "CLIENT_STOP")]
    assert await operator.active_sessions(account_id) == []
    presence = redis.Redis.from_url(redis_url)
    assert not presence.exists(f"{redis_prefix}:presence:session:{record.session_id}")
    assert presence.zscore(f"{redis_prefix}:presence:active", record.session_id) is None
