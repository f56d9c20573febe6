"""Gateways as first-class peers, with real processes: a rating service, a billing manager
and two service managers (A and B) on databases of this module's own, over TLS, driven by
the CLI and by raw gRPC the way a gateway written from the protos would call.

- A gateway registered with the CLI gets a credential and carries a session started by
  identity; an unregistered name is refused; a disabled gateway gets no new sessions; a
  ticket verifies with the public key alone and a tampered one does not.
- A gateway watching, disconnected while three sessions end and one enters final units,
  reconnecting with its cursor: receives all four, in order, once.
- A session on a small balance: a low-balance notice, the final units, a top-up that lifts
  them with a new grant pushed on the stream within a second, the session going on, then
  BALANCE_EXHAUSTED at exactly the funded amount; the gateway sees every notice.
- A gateway reporting past the balance: the record shows the billed units, the unbilled
  ones and the discrepancy; nothing is charged beyond the holds.

Each case spans both instances: notices decided on one reach a watch on the other."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import secrets
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import grpc
import jwt
import psycopg
import pytest
from psycopg.rows import dict_row

from meterline.auth.v1 import auth_pb2, auth_pb2_grpc
from meterline.billing.v1 import billing_pb2, billing_pb2_grpc
from meterline.kernel.config import Endpoints
from meterline.kernel.db import drop_database, ensure_database, libpq_dsn
from meterline.kernel.grpc_errors import error_reason
from meterline.kernel.principals import Principal, PrincipalKind
from meterline.kernel.processes import free_port, spawn_service, stop_processes
from meterline.kernel.tickets import verify_ticket
from meterline.rating.v1 import rating_pb2_grpc, types_pb2
from meterline.service.v1 import service_pb2, service_pb2_grpc
from tests.support import tls
from tests.support.clients import OPERATOR, ensure_tariff
from tests.support.stack import TOKEN_SECRET, environment, metadata, token_for, wait_for
from tests.support.stores import StoreUrls

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(60)]

PREFIX = "+4420"
ENDPOINT = "+442071234567"
EXPENSIVE = "+4421"
PRICE = 10_000
"""0.01 EUR a second, billed per second."""
SLICE = 10
LOW = 80_000
"""The low-balance threshold of these processes: 0.08 EUR."""
SERVICE_ENV = {
    "METERLINE_SLICE_SECONDS": str(SLICE),
    "METERLINE_LOW_BALANCE_THRESHOLD": "0.08",
    "METERLINE_GATEWAY_LIVENESS_SECONDS": "30",
}
DEADLINE = 10.0
Metadata = tuple[tuple[str, str], ...]


# -- the cluster -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Cluster:
    stores: StoreUrls
    endpoints: Endpoints
    """Rating, billing, and service manager A."""
    second: str
    """Service manager B."""
    run: str

    @property
    def first(self) -> str:
        return self.endpoints.service


@pytest.fixture(scope="module")
def cluster(stores: StoreUrls, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    run = secrets.token_hex(3)
    names = {role: f"meterline_gw_{run}_{role}" for role in ("rating", "billing", "service")}
    urls = {role: ensure_database(stores.server_url, name) for role, name in names.items()}
    private = StoreUrls(
        server_url=stores.server_url,
        rating_url=urls["rating"],
        billing_url=urls["billing"],
        service_url=urls["service"],
        redis_url=stores.redis_url,
        redis_prefix=f"{stores.redis_prefix}-gw-{run}",
    )
    endpoints = Endpoints(
        rating=f"127.0.0.1:{free_port()}",
        billing=f"127.0.0.1:{free_port()}",
        service=f"127.0.0.1:{free_port()}",
    )
    second = f"127.0.0.1:{free_port()}"
    logs = tmp_path_factory.mktemp("gateway-peers")
    env = {**environment(private, endpoints), **SERVICE_ENV}
    processes: list[subprocess.Popen[bytes]] = []
    try:
        for role, address in (("rating", endpoints.rating), ("billing", endpoints.billing)):
            process = spawn_service(role, env, logs / f"{role}.log")
            processes.append(process)
            wait_for(address, process, logs / f"{role}.log")
        started = []
        for name, address in (("a", endpoints.service), ("b", second)):
            log = logs / f"service-{name}.log"
            process = spawn_service("service", {**env, "METERLINE_SERVICE_ADDRESS": address}, log)
            processes.append(process)
            started.append((address, process, log))
        for address, process, log in started:
            wait_for(address, process, log)
        yield Cluster(private, endpoints, second, run)
    finally:
        stop_processes(processes)
        for name in names.values():
            drop_database(stores.server_url, name)


def meterline(cluster: Cluster, *args: str) -> tuple[int, str, str]:
    """The CLI, as an operator types it, against service manager A."""
    env = {
        **os.environ,
        "METERLINE_TOKEN_SECRET": TOKEN_SECRET,
        "METERLINE_RATING_ADDRESS": cluster.endpoints.rating,
        "METERLINE_BILLING_ADDRESS": cluster.endpoints.billing,
        "METERLINE_SERVICE_ADDRESS": cluster.first,
        **tls.client_environment(),
    }
    done = subprocess.run(
        [sys.executable, "-m", "meterline.cli.main", *args],
        env=env,
        capture_output=True,
        timeout=60,
        check=False,
    )
    return done.returncode, done.stdout.decode(), done.stderr.decode()


@asynccontextmanager
async def service(address: str) -> AsyncIterator[service_pb2_grpc.ServiceManagerAsyncStub]:
    async with tls.channel(address) as channel:
        yield service_pb2_grpc.ServiceManagerStub(channel)


async def funded_account(cluster: Cluster, micros: int) -> str:
    async with tls.channel(cluster.endpoints.rating) as channel:
        await ensure_tariff(rating_pb2_grpc.RatingServiceStub(channel), PREFIX, PRICE)
    async with tls.channel(cluster.endpoints.billing) as channel:
        stub = billing_pb2_grpc.BillingManagerStub(channel)
        account = await stub.CreateAccount(
            billing_pb2.CreateAccountRequest(display_name="Subscriber", currency="EUR"),
            metadata=OPERATOR,
        )
        await fund(cluster, account.account_id, micros)
        return str(account.account_id)


async def fund(cluster: Cluster, account_id: str, micros: int) -> None:
    async with tls.channel(cluster.endpoints.billing) as channel:
        await billing_pb2_grpc.BillingManagerStub(channel).FundAccount(
            billing_pb2.FundAccountRequest(
                account_id=account_id, amount_micros=micros, idempotency_key=uuid.uuid4().hex
            ),
            metadata=OPERATOR,
            timeout=DEADLINE,
        )


async def account(cluster: Cluster, account_id: str) -> billing_pb2.Account:
    async with tls.channel(cluster.endpoints.billing) as channel:
        return await billing_pb2_grpc.BillingManagerStub(channel).GetAccount(
            billing_pb2.GetAccountRequest(account_id=account_id), metadata=OPERATOR
        )


def gateway_token(gateway_id: str, ttl: timedelta | None = None) -> Metadata:
    principal = Principal(PrincipalKind.GATEWAY, subject=f"gat_{gateway_id}", gateway_id=gateway_id)
    return metadata(token_for(principal, ttl))


async def register(cluster: Cluster, gateway_id: str, region: str = "") -> None:
    async with service(cluster.first) as stub:
        await stub.RegisterGateway(
            service_pb2.RegisterGatewayRequest(
                gateway_id=gateway_id,
                address="10.1.2.3:5060",
                service_types=[types_pb2.VOICE],
                region=region or gateway_id,
            ),
            metadata=OPERATOR,
            timeout=DEADLINE,
        )


async def add_identity(cluster: Cluster, account_id: str, msisdn: str) -> None:
    async with service(cluster.second) as stub:
        await stub.AddAccountIdentity(
            service_pb2.AddAccountIdentityRequest(
                account_id=account_id,
                identity=service_pb2.SubscriberIdentity(
                    kind=service_pb2.IDENTITY_KIND_MSISDN, value=msisdn
                ),
            ),
            metadata=OPERATOR,
            timeout=DEADLINE,
        )


async def start_by_identity(
    address: str, who: Metadata, msisdn: str, endpoint: str = ENDPOINT
) -> service_pb2.StartServiceResponse:
    async with service(address) as stub:
        return await stub.StartService(
            service_pb2.StartServiceRequest(
                identity=service_pb2.SubscriberIdentity(
                    kind=service_pb2.IDENTITY_KIND_MSISDN, value=msisdn
                ),
                service_type=types_pb2.VOICE,
                endpoint=endpoint,
                request_id=uuid.uuid4().hex,
            ),
            metadata=who,
            timeout=DEADLINE,
        )


async def stop(
    address: str, who: Metadata, session_id: str, used: int
) -> service_pb2.ServiceRecord:
    async with service(address) as stub:
        return await stub.StopService(
            service_pb2.StopServiceRequest(session_id=session_id, used_units=used),
            metadata=who,
            timeout=DEADLINE,
        )


def new_msisdn() -> str:
    return "+4477009" + str(secrets.randbelow(10**6)).rjust(6, "0")


class Watch:
    """A gateway's WatchTerminations, read one notice at a time with a deadline."""

    def __init__(self, address: str, who: Metadata, gateway_id: str, resume_after: int) -> None:
        self._channel = tls.channel(address)
        stub = service_pb2_grpc.ServiceManagerStub(self._channel)
        self.call = stub.WatchTerminations(
            service_pb2.WatchTerminationsRequest(gateway_id=gateway_id, resume_after=resume_after),
            metadata=who,
        )
        self._pending: asyncio.Future[Any] | None = None

    async def next(self, within: float = DEADLINE) -> service_pb2.Termination:
        """The next notice; TimeoutError if none comes within `within` seconds (the read
        stays pending, so the watch is not cancelled)."""
        if self._pending is None:
            self._pending = asyncio.ensure_future(self.call.read())
        done, _ = await asyncio.wait([self._pending], timeout=within)
        if not done:
            raise TimeoutError
        notice, self._pending = self._pending.result(), None
        assert isinstance(notice, service_pb2.Termination), "the watch ended"
        return notice

    async def close(self) -> None:
        self.call.cancel()
        await self._channel.close(None)


class Stream:
    """A Meter stream that accepts pushes: updates written and answers read separately."""

    def __init__(self, address: str, who: Metadata, session_id: str) -> None:
        self._channel = tls.channel(address)
        stub = service_pb2_grpc.ServiceManagerStub(self._channel)
        self.call = stub.Meter(metadata=who, timeout=60)
        self.session_id = session_id

    async def send(self, sequence: int, used: int) -> service_pb2.MeterResponse:
        await self.call.write(
            service_pb2.ResourceUtilizationUpdate(
                session_id=self.session_id,
                sequence=sequence,
                used_units=used,
                accept_pushes=True,
            )
        )
        return await self.read()

    async def read(self, within: float = DEADLINE) -> service_pb2.MeterResponse:
        answer = await asyncio.wait_for(self.call.read(), within)
        assert isinstance(answer, service_pb2.MeterResponse), "the stream ended"
        return answer

    async def close(self) -> None:
        self.call.cancel()
        await self._channel.close(None)


def kinds(notices: list[service_pb2.Termination]) -> list[tuple[str, str]]:
    return [
        (service_pb2.NoticeKind.Name(n.kind).removeprefix("NOTICE_KIND_"), n.session_id)
        for n in notices
    ]


def service_record(cluster: Cluster, session_id: str) -> dict[str, Any]:
    with psycopg.connect(libpq_dsn(cluster.stores.service_url), row_factory=dict_row) as conn:
        row = conn.execute(
            "SELECT * FROM service_records WHERE session_id = %s", (session_id,)
        ).fetchone()
    assert row is not None
    return row


async def assert_ledger(cluster: Cluster, account_id: str, funded: int, charged: int) -> None:
    """Exactly the charge was captured; nothing is held; the balance is what is left."""
    found = await account(cluster, account_id)
    assert (found.balance_micros, found.held_micros) == (funded - charged, 0)


# -- 1. the registry, credentials, identities, tickets ----------------------------------------


async def test_a_gateway_registered_with_the_cli_carries_a_session_by_identity(
    cluster: Cluster,
) -> None:
    name = f"edge-{cluster.run}"
    code, out, err = await asyncio.to_thread(
        meterline,
        cluster, "gateway", "add", name, "--address", "sip.example.com:5060",
        "--service-types", "VOICE,VIDEO", "--region", f"r-{cluster.run}", "--capacity", "5",
    )  # fmt: skip
    assert code == 0, err
    assert f"registered gateway {name}" in out
    code, out, err = await asyncio.to_thread(meterline, cluster, "gateway", "list", "--json")
    assert code == 0, err
    listed = {g["gateway_id"]: g for g in json.loads(out)}
    assert listed[name]["state"] == "GATEWAY_STATE_ENABLED" and not listed[name]["healthy"]
    assert "not reported liveness" in listed[name]["unhealthy_reason"]

    code, _, err = await asyncio.to_thread(
        meterline, cluster, "credential", "issue", "--gateway", f"nowhere-{cluster.run}"
    )
    assert code == 2 and "no gateway" in err
    code, out, err = await asyncio.to_thread(
        meterline, cluster, "credential", "issue", "--gateway", name, "--json"
    )
    assert code == 0, err
    credential = json.loads(out)
    code, pem, err = await asyncio.to_thread(meterline, cluster, "gateway", "key", "--pem")
    assert code == 0 and "BEGIN PUBLIC KEY" in pem, err

    account_id = await funded_account(cluster, 1_000_000)
    msisdn = new_msisdn()
    code, out, err = await asyncio.to_thread(
        meterline, cluster, "account", "identity", "add", account_id, "--msisdn", msisdn
    )
    assert code == 0 and msisdn in out, err

    # The gateway logs in with its credential, as a vendor's gateway would.
    async with tls.channel(cluster.endpoints.billing) as channel:
        issued = await auth_pb2_grpc.AuthServiceStub(channel).IssueToken(
            auth_pb2.IssueTokenRequest(
                client_id=credential["client_id"], client_secret=credential["client_secret"]
            )
        )
    assert issued.kind == auth_pb2.PRINCIPAL_KIND_GATEWAY
    me = metadata(issued.access_token)

    started = await start_by_identity(cluster.second, me, msisdn)
    assert (started.account_id, started.gateway.gateway_id) == (account_id, name)
    assert started.gateway.address == "sip.example.com:5060"
    ticket = started.gateway.token
    claims = verify_ticket(ticket, pem, name)
    assert (claims["sub"], claims["svc"], claims["ep"]) == (started.session_id, "VOICE", ENDPOINT)
    header, body, signature = ticket.split(".")
    forged = json.loads(base64.urlsafe_b64decode(body + "=="))
    forged["aud"] = "another-gateway"
    tampered = ".".join(
        [
            header,
            base64.urlsafe_b64encode(json.dumps(forged).encode()).rstrip(b"=").decode(),
            signature,
        ]
    )
    with pytest.raises(jwt.InvalidSignatureError):
        verify_ticket(tampered, pem, "another-gateway")

    async with service(cluster.first) as stub:  # metered on A, started on B
        report = await stub.ReportGatewayUsage(
            service_pb2.ReportGatewayUsageRequest(session_id=started.session_id, used_units=7),
            metadata=me,
            timeout=DEADLINE,
        )
        assert report.charged_micros == 7 * PRICE
        with pytest.raises(grpc.aio.AioRpcError) as others:
            await stub.ReportGatewayUsage(
                service_pb2.ReportGatewayUsageRequest(session_id=started.session_id, used_units=8),
                metadata=gateway_token("local"),
                timeout=DEADLINE,
            )
        assert others.value.code() is grpc.StatusCode.PERMISSION_DENIED
    record = await stop(cluster.first, me, started.session_id, 9)
    assert (record.charged_micros, record.gateway_id) == (9 * PRICE, name)

    # Alive once it sends a heartbeat (to B): a device's start in its region goes to it.
    async with service(cluster.second) as stub:
        beat = await stub.GatewayHeartbeat(
            service_pb2.GatewayHeartbeatRequest(gateway_id=name), metadata=me, timeout=DEADLINE
        )
    assert beat.gateway.healthy and beat.heartbeat_interval.seconds == 10
    device = metadata(
        token_for(Principal(PrincipalKind.DEVICE, subject="dev_e2e", account_id=account_id))
    )
    request = service_pb2.StartServiceRequest(
        account_id=account_id,
        service_type=types_pb2.VOICE,
        endpoint=ENDPOINT,
        region=f"r-{cluster.run}",
    )
    async with service(cluster.first) as stub:
        chosen = await stub.StartService(request, metadata=device, timeout=DEADLINE)
    assert chosen.gateway.gateway_id == name
    await stop(cluster.first, device, chosen.session_id, 1)

    # Disabled: no new sessions, neither chosen nor started by the gateway itself.
    code, out, err = await asyncio.to_thread(meterline, cluster, "gateway", "disable", name)
    assert code == 0 and "disabled" in out, err
    await asyncio.sleep(2.5)  # each instance reads the registry every 2 s
    for address in (cluster.first, cluster.second):
        async with service(address) as stub:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.StartService(request, metadata=device, timeout=DEADLINE)
        assert refused.value.code() is grpc.StatusCode.FAILED_PRECONDITION
        assert error_reason(refused.value) == "NO_GATEWAY"
        assert f"{name} is disabled" in (refused.value.details() or "")
    with pytest.raises(grpc.aio.AioRpcError) as itself:
        await start_by_identity(cluster.first, me, msisdn)
    assert error_reason(itself.value) == "NO_GATEWAY"
    await assert_ledger(cluster, account_id, 1_000_000, 10 * PRICE)


# -- 2. the durable notice stream ------------------------------------------------------------


async def test_a_gateway_reconnecting_with_its_cursor_gets_everything_in_order_once(
    cluster: Cluster,
) -> None:
    name = f"watch-{cluster.run}"
    await register(cluster, name)
    me = gateway_token(name)
    plenty = await funded_account(cluster, 5_000_000)
    # The final-units session calls a dearer destination (0.10 a second): its last units
    # come while 0.50 is left, above the low-balance threshold, so no low-balance notice.
    async with tls.channel(cluster.endpoints.rating) as channel:
        await ensure_tariff(rating_pb2_grpc.RatingServiceStub(channel), EXPENSIVE, 10 * PRICE)
    small = await funded_account(cluster, 1_500_000)
    numbers = {plenty: new_msisdn(), small: new_msisdn()}
    for account_id, msisdn in numbers.items():
        await add_identity(cluster, account_id, msisdn)

    watch = Watch(cluster.first, me, name, 0)
    began = time.monotonic()
    assert await asyncio.wait_for(watch.call.initial_metadata(), 2) is not None
    subscribed = await watch.next(2)
    assert time.monotonic() - began < 2
    assert (subscribed.kind, subscribed.cursor) == (service_pb2.NOTICE_KIND_SUBSCRIBED, 0)
    cursor = subscribed.cursor
    await watch.close()  # the gateway goes away

    ended = []
    for address in (cluster.first, cluster.second, cluster.first):
        session_id = (await start_by_identity(address, me, numbers[plenty])).session_id
        await stop(address, me, session_id, 3)
        ended.append(session_id)
    final = (
        await start_by_identity(cluster.second, me, numbers[small], f"{EXPENSIVE}1234567")
    ).session_id
    stream = Stream(cluster.second, me, final)
    try:
        assert (await stream.send(1, 6)).termination.final_unit_indication is False
        await asyncio.sleep(0.3)  # the second slice (5 s for 0.50) is reserved meanwhile
        last = await stream.send(2, 10)
        assert last.termination.final_unit_indication and not last.termination.ended
        assert not last.low_balance
    finally:
        await stream.close()

    back = Watch(cluster.first, me, name, cursor)  # reconnects to A, with its cursor
    try:
        notices = [await back.next() for _ in range(5)]
        assert kinds(notices) == [
            ("SUBSCRIBED", ""),
            ("ENDED", ended[0]),
            ("ENDED", ended[1]),
            ("ENDED", ended[2]),
            ("FINAL_UNITS", final),
        ]
        assert [n.cursor for n in notices[1:]] == [1, 2, 3, 4]
        assert notices[4].granted_units == 15 and notices[4].account_id == small
        with pytest.raises(TimeoutError):
            await back.next(0.5)  # nothing twice
        # A termination decided on B reaches the watch on A at once.
        await stop(cluster.second, OPERATOR, final, 0)
        late = await back.next(3)
        assert (late.kind, late.session_id, late.cursor, late.reason) == (
            service_pb2.NOTICE_KIND_ENDED,
            final,
            5,
            service_pb2.TERMINATION_REASON_OPERATOR,
        )
    finally:
        await back.close()

    # A watch whose token expires is ended with UNAUTHENTICATED.
    short = Watch(cluster.second, gateway_token(name, timedelta(seconds=2)), name, 5)
    try:
        assert (await short.next(2)).kind == service_pb2.NOTICE_KIND_SUBSCRIBED
        with pytest.raises(grpc.aio.AioRpcError) as expired:
            await short.next(8)
        assert expired.value.code() is grpc.StatusCode.UNAUTHENTICATED
        assert error_reason(expired.value) == "TOKEN_EXPIRED"
    finally:
        await short.close()


# -- 3. low balance, final units, a top-up pushed ---------------------------------------------


async def test_a_top_up_during_the_final_units_is_granted_and_pushed_at_once(
    cluster: Cluster,
) -> None:
    name = f"topup-{cluster.run}"
    await register(cluster, name)
    me = gateway_token(name)
    account_id = await funded_account(cluster, 3 * SLICE * PRICE)  # 0.30: 30 seconds
    msisdn = new_msisdn()
    await add_identity(cluster, account_id, msisdn)
    watch = Watch(cluster.second, me, name, 0)  # the gateway watches B
    assert (await watch.next(2)).kind == service_pb2.NOTICE_KIND_SUBSCRIBED
    session_id = (await start_by_identity(cluster.first, me, msisdn)).session_id
    stream = Stream(cluster.first, me, session_id)  # and meters on A
    try:
        for sequence, used in ((1, 6), (2, 16)):
            answer = await stream.send(sequence, used)
            assert not answer.low_balance and not answer.HasField("termination")
            await asyncio.sleep(0.3)  # the next slice is reserved ahead meanwhile
        low = await stream.send(3, 23)
        assert (low.low_balance, low.balance_micros, low.estimated_time_left.seconds) == (
            True,
            70_000,
            7,
        )
        final = await stream.send(4, 26)
        assert final.termination.final_unit_indication and final.granted_units == 30

        began = time.monotonic()
        await fund(cluster, account_id, SLICE * PRICE)  # the top-up: 0.10
        pushed = await stream.read(within=3)
        waited = time.monotonic() - began
        assert pushed.pushed and pushed.granted_units == 40
        assert not pushed.HasField("termination") and pushed.acknowledged_sequence == 4
        assert waited < 1.0, f"the new grant came {waited:.2f} s after the top-up"

        assert (await stream.send(5, 33)).low_balance
        again = await stream.send(6, 36)
        assert again.termination.final_unit_indication
        cut = await stream.send(7, 41)
        assert cut.termination.ended
        assert cut.termination.reason == service_pb2.TERMINATION_REASON_BALANCE_EXHAUSTED
        notices = [await watch.next() for _ in range(6)]
    finally:
        await stream.close()
        await watch.close()
    assert kinds(notices) == [
        ("LOW_BALANCE", session_id),
        ("FINAL_UNITS", session_id),
        ("FINAL_UNITS_LIFTED", session_id),
        ("LOW_BALANCE", session_id),
        ("FINAL_UNITS", session_id),
        ("ENDED", session_id),
    ]
    assert notices[2].granted_units == 40
    assert notices[5].reason == service_pb2.TERMINATION_REASON_BALANCE_EXHAUSTED
    record = service_record(cluster, session_id)
    assert (record["billed_units"], record["charged_micros"]) == (40, 4 * SLICE * PRICE)
    await assert_ledger(cluster, account_id, 4 * SLICE * PRICE, 4 * SLICE * PRICE)


# -- 4. a gateway reporting past the balance -------------------------------------------------


async def test_usage_reported_past_the_balance_is_recorded_and_never_charged(
    cluster: Cluster,
) -> None:
    """1.00 at 0.60 a minute: 100 s. The device counts 80 on A, the gateway reports 150
    on B: 100 billed, 50 unbilled, the discrepancy 70, the session ended at the grant."""
    name = f"over-{cluster.run}"
    await register(cluster, name)
    me = gateway_token(name)
    account_id = await funded_account(cluster, 1_000_000)
    msisdn = new_msisdn()
    await add_identity(cluster, account_id, msisdn)
    watch = Watch(cluster.first, me, name, 0)
    assert (await watch.next(2)).kind == service_pb2.NOTICE_KIND_SUBSCRIBED
    session_id = (await start_by_identity(cluster.first, me, msisdn)).session_id
    device = metadata(
        token_for(Principal(PrincipalKind.DEVICE, subject="dev_over", account_id=account_id))
    )
    stream = Stream(cluster.first, device, session_id)
    try:
        for sequence, used in enumerate((20, 40, 60, 80), start=1):
            assert (await stream.send(sequence, used)).used_units == used
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.3)  # the device's usage is written
        async with service(cluster.second) as stub:
            report = await stub.ReportGatewayUsage(
                service_pb2.ReportGatewayUsageRequest(session_id=session_id, used_units=150),
                metadata=me,
                timeout=DEADLINE,
            )
        notices = []
        while not notices or notices[-1].kind != service_pb2.NOTICE_KIND_ENDED:
            notices.append(await watch.next())
    finally:
        await stream.close()
        await watch.close()
    record = report.record
    assert record.termination_reason == service_pb2.TERMINATION_REASON_BALANCE_EXHAUSTED
    assert (record.used_units, record.billed_units, record.unbilled_units) == (150, 100, 50)
    assert (record.client_used_units, record.gateway_used_units) == (80, 150)
    assert record.usage_discrepancy == 70
    assert "balance paid for 100" in record.unbilled_reason
    assert record.charged_micros == report.charged_micros == 1_000_000
    stored = service_record(cluster, session_id)
    assert (stored["unbilled_units"], stored["usage_discrepancy"]) == (50, 70)
    assert notices[-1].reason == service_pb2.TERMINATION_REASON_BALANCE_EXHAUSTED
    await assert_ledger(cluster, account_id, 1_000_000, 1_000_000)
