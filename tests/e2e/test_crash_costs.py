"""What a crash costs: service-manager processes killed (SIGKILL) or stopped (SIGTERM) while
they own a session's Meter stream, a client that resumes elsewhere or never comes back, and
two live instances fighting over one session. Each instance keeps the sessions it meters in
memory and writes their usage in batches under a fencing epoch; whatever happens, the
account pays exactly the rated charge of the final usage, once.

The rating service and the billing manager run once for the module, on databases of their
own (so the short quota validity some tests give their service managers sweeps nothing
but this module's sessions); every test starts its own service managers."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import psycopg
import pytest
from psycopg.rows import dict_row

from meterline.billing.v1 import billing_pb2, billing_pb2_grpc
from meterline.kernel.config import Endpoints
from meterline.kernel.db import drop_database, ensure_database, libpq_dsn
from meterline.kernel.grpc_errors import error_reason
from meterline.kernel.processes import free_port, spawn_service, stop_processes
from meterline.rating.v1 import rating_pb2_grpc, types_pb2
from meterline.service.v1 import service_pb2, service_pb2_grpc
from tests.support import tls
from tests.support.clients import OPERATOR, device, ensure_tariff, new_account
from tests.support.scenario import Operator
from tests.support.stack import environment, operator_token, wait_for
from tests.support.stores import StoreUrls

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(40)]

PREFIX = "+4179"
ENDPOINT = "+41791234567"
PRICE_MICROS = 10_000
"""0.01 EUR a second, billed per second: the charge of n units is n * 10,000 micros."""
FUNDED_MICROS = 5_000_000
"""Enough for every slice the tests reserve (60 seconds, 600,000 micros, each)."""
DEADLINE = 10.0
HOLD = 8.0
"""How long test 4 keeps the session row locked while the instance shuts down."""
LONG_FLUSH = {"METERLINE_USAGE_FLUSH_MS": "30000"}
"""A flush interval no test lives to see: no periodic batch writes the usage."""


# -- the stack -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cluster:
    """Rating and billing processes, and what a service manager needs to join them."""

    stores: StoreUrls
    endpoints: Endpoints

    def env(self, address: str, overrides: Mapping[str, str]) -> dict[str, str]:
        return {
            **environment(self.stores, self.endpoints),
            "METERLINE_SERVICE_ADDRESS": address,
            **overrides,
        }


@pytest.fixture(scope="module")
def cluster(stores: StoreUrls, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    run = secrets.token_hex(4)
    names = {role: f"meterline_crash_{run}_{role}" for role in ("rating", "billing", "service")}
    urls = {role: ensure_database(stores.server_url, name) for role, name in names.items()}
    with psycopg.connect(libpq_dsn(stores.server_url), autocommit=True) as conn:
        # A statement whose client went away is ended within 20 ms, even while it waits
        # for a lock: a write an exiting process abandoned does not land later by chance.
        conn.execute(
            f'ALTER DATABASE "{names["service"]}" SET client_connection_check_interval = 20'
        )
    private = StoreUrls(
        server_url=stores.server_url,
        rating_url=urls["rating"],
        billing_url=urls["billing"],
        service_url=urls["service"],
        redis_url=stores.redis_url,
        redis_prefix=f"{stores.redis_prefix}-crash-{run}",
    )
    endpoints = Endpoints(
        rating=f"127.0.0.1:{free_port()}", billing=f"127.0.0.1:{free_port()}", service=""
    )
    logs = tmp_path_factory.mktemp("crash-costs")
    env = environment(private, endpoints)
    processes: list[subprocess.Popen[bytes]] = []
    try:
        started = [
            (address, spawn_service(role, env, logs / f"{role}.log"), logs / f"{role}.log")
            for role, address in (("rating", endpoints.rating), ("billing", endpoints.billing))
        ]
        processes.extend(process for _, process, _ in started)
        for address, process, log in started:
            wait_for(address, process, log)
        yield Cluster(private, endpoints)
    finally:
        stop_processes(processes)
        for name in names.values():
            drop_database(stores.server_url, name)


@dataclass
class Instance:
    """One `python -m service_manager` process."""

    address: str
    process: subprocess.Popen[bytes]
    log: Path

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)


@asynccontextmanager
async def service_managers(
    cluster: Cluster, log_dir: Path, *overrides: Mapping[str, str]
) -> AsyncIterator[list[Instance]]:
    """One service manager per mapping of environment overrides, all on the cluster's
    stores, started side by side; stopped (if still running) at the end."""
    instances: list[Instance] = []
    try:
        for number, extra in enumerate(overrides):
            address = f"127.0.0.1:{free_port()}"
            log = log_dir / f"service-{number}.log"
            process = spawn_service("service", cluster.env(address, extra), log)
            instances.append(Instance(address, process, log))
        for instance in instances:
            await asyncio.to_thread(wait_for, instance.address, instance.process, instance.log)
        yield instances
    finally:
        stop_processes([instance.process for instance in instances])


# -- calls -----------------------------------------------------------------------------------


class MeterCall:
    """One open Meter stream on one instance, as a device with a raw stub: each update is
    written and its answer read before the next."""

    def __init__(self, address: str, account_id: str, session_id: str) -> None:
        self._channel = tls.channel(address)
        stub = service_pb2_grpc.ServiceManagerStub(self._channel)
        self._call = stub.Meter(None, metadata=device(account_id), timeout=30)
        self.session_id = session_id

    async def send(self, sequence: int, used_units: int) -> service_pb2.MeterResponse:
        update = service_pb2.ResourceUtilizationUpdate(
            session_id=self.session_id, sequence=sequence, used_units=used_units
        )
        await asyncio.wait_for(self._call.write(update), DEADLINE)
        response = await asyncio.wait_for(self._call.read(), DEADLINE)
        assert isinstance(response, service_pb2.MeterResponse), "the stream ended"
        return response

    async def close(self) -> None:
        """End the stream from the client side, as a client that is done."""
        await asyncio.wait_for(self._call.done_writing(), DEADLINE)
        while isinstance(
            await asyncio.wait_for(self._call.read(), DEADLINE), service_pb2.MeterResponse
        ):
            pass  # until the end of the stream
        await self._channel.close(None)

    async def abandon(self) -> None:
        self._call.cancel()
        await self._channel.close(None)


@asynccontextmanager
async def meter_stream(address: str, account_id: str, session_id: str) -> AsyncIterator[MeterCall]:
    call = MeterCall(address, account_id, session_id)
    try:
        yield call
    finally:
        await call.abandon()


@asynccontextmanager
async def service_stub(address: str) -> AsyncIterator[service_pb2_grpc.ServiceManagerAsyncStub]:
    async with tls.channel(address) as channel:
        yield service_pb2_grpc.ServiceManagerStub(channel)


async def new_customer(cluster: Cluster) -> str:
    """A funded EUR account; the per-second tariff it calls."""
    async with tls.channel(cluster.endpoints.rating) as channel:
        await ensure_tariff(rating_pb2_grpc.RatingServiceStub(channel), PREFIX, PRICE_MICROS)
    async with tls.channel(cluster.endpoints.billing) as channel:
        return await new_account(billing_pb2_grpc.BillingManagerStub(channel), FUNDED_MICROS)


async def start_session(address: str, account_id: str) -> service_pb2.StartServiceResponse:
    async with service_stub(address) as stub:
        return await stub.StartService(
            service_pb2.StartServiceRequest(
                account_id=account_id, service_type=types_pb2.VOICE, endpoint=ENDPOINT
            ),
            metadata=device(account_id),
            timeout=DEADLINE,
        )


async def stop_session(
    address: str, session_id: str, used_units: int, who: tuple[tuple[str, str], ...]
) -> service_pb2.ServiceRecord:
    async with service_stub(address) as stub:
        return await stub.StopService(
            service_pb2.StopServiceRequest(session_id=session_id, used_units=used_units),
            metadata=who,
            timeout=DEADLINE,
        )


# -- the service database --------------------------------------------------------------------


def session_row(cluster: Cluster, session_id: str) -> dict[str, Any]:
    with psycopg.connect(libpq_dsn(cluster.stores.service_url), row_factory=dict_row) as conn:
        row = conn.execute(
            "SELECT status, used_units, client_used_units, last_sequence, owner_id, "
            "owner_epoch, termination_reason FROM sessions WHERE session_id = %s",
            (session_id,),
        ).fetchone()
    assert row is not None, f"no session {session_id} in the service database"
    return row


def service_records(cluster: Cluster, account_id: str) -> list[dict[str, Any]]:
    with psycopg.connect(libpq_dsn(cluster.stores.service_url), row_factory=dict_row) as conn:
        return conn.execute(
            "SELECT session_id, used_units, billed_units, charged_micros, termination_reason "
            "FROM service_records WHERE account_id = %s",
            (account_id,),
        ).fetchall()


async def persisted_usage(
    cluster: Cluster, session_id: str, used_units: int, within: float
) -> float:
    """Wait until the session's row shows `used_units` (a usage batch landed); return how
    long it took. Fails after `within` seconds."""
    began = time.monotonic()
    while True:
        row = session_row(cluster, session_id)
        if row["used_units"] == used_units:
            return time.monotonic() - began
        assert time.monotonic() - began < within, (
            f"usage {used_units} not written within {within} s: the row has {row}"
        )
        await asyncio.sleep(0.01)


async def settled_record(cluster: Cluster, account_id: str, within: float) -> dict[str, Any]:
    """Wait for the account's one service record (a liveness sweep writes it)."""
    deadline = time.monotonic() + within
    while True:
        records = service_records(cluster, account_id)
        if records:
            assert len(records) == 1, records
            return records[0]
        assert time.monotonic() < deadline, f"no service record within {within} s"
        await asyncio.sleep(0.1)


# -- the money -------------------------------------------------------------------------------


async def assert_charged_once(
    cluster: Cluster, account_id: str, session_id: str, used_units: int, reason: str
) -> None:
    """The money invariants: one service record, for `used_units` at the tariff; the
    ledger's revenue is exactly that charge; the balance is funded - captured; nothing
    is left held; every ledger transaction balances."""
    charge = used_units * PRICE_MICROS
    records = service_records(cluster, account_id)
    assert records == [
        {
            "session_id": session_id,
            "used_units": used_units,
            "billed_units": used_units,
            "charged_micros": charge,
            "termination_reason": reason,
        }
    ]
    row = session_row(cluster, session_id)
    assert (row["status"], row["used_units"]) == ("ENDED", used_units)

    operator = Operator(cluster.endpoints, operator_token())
    account = await operator.account(account_id)
    assert account.balance_micros == FUNDED_MICROS - charge
    assert account.held_micros == 0
    assert account.available_micros == FUNDED_MICROS - charge

    entries = await operator.ledger(account_id)
    by_transaction: dict[str, int] = {}
    for entry in entries:
        by_transaction[entry.transaction_id] = (
            by_transaction.get(entry.transaction_id, 0) + entry.amount_micros
        )
    assert by_transaction and all(total == 0 for total in by_transaction.values())
    revenue = [e for e in entries if e.ledger_account == billing_pb2.LEDGER_ACCOUNT_REVENUE]
    assert sum(e.amount_micros for e in revenue) == charge
    customer = (
        billing_pb2.LEDGER_ACCOUNT_CUSTOMER_AVAILABLE,
        billing_pb2.LEDGER_ACCOUNT_CUSTOMER_HELD,
    )
    assert sum(e.amount_micros for e in entries if e.ledger_account in customer) == (
        FUNDED_MICROS - charge
    )
    held = [e for e in entries if e.ledger_account == billing_pb2.LEDGER_ACCOUNT_CUSTOMER_HELD]
    assert sum(e.amount_micros for e in held) == 0


# -- 1. SIGKILL mid-batch, then resume -------------------------------------------------------


async def test_killed_before_its_batch_then_resumed_elsewhere_charges_exactly(
    cluster: Cluster, tmp_path: Path
) -> None:
    """The owner dies holding usage it never wrote; the client resumes on another
    instance by resending its last cumulative count: nothing lost, nothing twice."""
    async with service_managers(cluster, tmp_path, LONG_FLUSH, {}) as (first, second):
        account_id = await new_customer(cluster)
        session_id = (await start_session(first.address, account_id)).session_id

        async with meter_stream(first.address, account_id, session_id) as stream:
            for sequence, used in ((1, 10), (2, 25), (3, 40)):
                answer = await stream.send(sequence, used)
                assert (answer.acknowledged_sequence, answer.used_units) == (sequence, used)
                assert answer.charged_micros == used * PRICE_MICROS
            # 40 of a 60-second slice: the next slice is being reserved in the background.
            first.kill()
        row = session_row(cluster, session_id)
        assert (row["status"], row["used_units"], row["last_sequence"]) == ("ACTIVE", 0, 0)
        epoch_before = row["owner_epoch"]

        async with meter_stream(second.address, account_id, session_id) as stream:
            resumed = await stream.send(4, 40)  # the last count again, with the next sequence
            assert (resumed.acknowledged_sequence, resumed.used_units) == (4, 40)
            assert resumed.charged_micros == 400_000
            assert session_row(cluster, session_id)["owner_epoch"] > epoch_before
            beyond = await stream.send(5, 70)  # past the first slice
            assert (beyond.used_units, beyond.charged_micros) == (70, 700_000)
            assert beyond.granted_units >= 70
            last = await stream.send(6, 90)
            assert (last.acknowledged_sequence, last.charged_micros) == (6, 900_000)
            await stream.close()

        record = await stop_session(second.address, session_id, 90, device(account_id))
        assert (record.used_units, record.charged_micros) == (90, 900_000)
    await assert_charged_once(cluster, account_id, session_id, 90, "CLIENT_STOP")


# -- 2. SIGKILL, then silence ----------------------------------------------------------------


@pytest.mark.parametrize(
    "unwritten_report",
    [None, 40],
    ids=["silent-after-its-batch-landed", "last-report-killed-before-its-batch"],
)
async def test_killed_then_silent_is_settled_at_its_last_persisted_usage(
    cluster: Cluster, tmp_path: Path, unwritten_report: int | None
) -> None:
    """The owner dies and the client never comes back: the surviving instance's liveness
    sweep settles the session at the usage last written, at most one batch behind."""
    short = {"METERLINE_USAGE_FLUSH_MS": "50", "METERLINE_QUOTA_VALIDITY_SECONDS": "3"}
    async with service_managers(cluster, tmp_path, short, short) as (owner, survivor):
        account_id = await new_customer(cluster)
        session_id = (await start_session(owner.address, account_id)).session_id

        async with meter_stream(owner.address, account_id, session_id) as stream:
            answer = await stream.send(1, 30)
            assert answer.charged_micros == 300_000
            # Several flush intervals: the batch with 30 lands.
            await persisted_usage(cluster, session_id, 30, within=1.0)
            if unwritten_report is not None:
                later = await stream.send(2, unwritten_report)
                assert later.used_units == unwritten_report
            owner.kill()
            killed_at = time.monotonic()

        await asyncio.sleep(0.3)  # a statement sent before the kill has committed by now
        row = session_row(cluster, session_id)
        assert row["status"] == "ACTIVE"
        persisted = row["used_units"]
        assert persisted in ({30} if unwritten_report is None else {30, unwritten_report})

        record = await settled_record(cluster, account_id, within=15)
        waited = time.monotonic() - killed_at
        assert record["used_units"] == persisted
        assert record["termination_reason"] == "LIVENESS_TIMEOUT"
        assert record["charged_micros"] == persisted * PRICE_MICROS
        assert survivor.process.poll() is None
    assert 2.0 < waited < 15, f"settled {waited:.1f} s after the kill (validity 3 s)"
    await assert_charged_once(cluster, account_id, session_id, persisted, "LIVENESS_TIMEOUT")


# -- 3. fencing across two live instances -----------------------------------------------------


async def test_stream_taken_over_by_another_live_instance_fences_out_the_old_owner(
    cluster: Cluster, tmp_path: Path
) -> None:
    """A stream for the session opens on B while A's stream is still open: B takes the
    session over (a new epoch); A no longer writes for it, so what the stale stream sends
    there costs nothing."""
    async with service_managers(cluster, tmp_path, {}, {}) as (a, b):
        account_id = await new_customer(cluster)
        session_id = (await start_session(a.address, account_id)).session_id

        async with (
            meter_stream(a.address, account_id, session_id) as on_a,
            meter_stream(b.address, account_id, session_id) as on_b,
        ):
            for sequence, used in ((1, 10), (2, 20), (3, 30)):
                assert (await on_a.send(sequence, used)).used_units == used
            await persisted_usage(cluster, session_id, 30, within=1.0)
            epoch_on_a = session_row(cluster, session_id)["owner_epoch"]

            taken = await on_b.send(4, 40)
            assert (taken.acknowledged_sequence, taken.used_units) == (4, 40)
            assert taken.charged_micros == 400_000
            after = session_row(cluster, session_id)
            assert after["owner_epoch"] > epoch_on_a
            assert (await on_b.send(5, 50)).charged_micros == 500_000

            # The old owner's stream is still open: an update there must not count.
            stale_answers = []
            moved: grpc.aio.AioRpcError | None = None
            for sequence, used in ((6, 100), (7, 110)):
                try:
                    stale_answers.append(await on_a.send(sequence, used))
                except grpc.aio.AioRpcError as error:
                    moved = error
                    break
                # A may answer from memory before it learns of the takeover; its batch is
                # then refused by the epoch, and it lets the session go.
                await asyncio.sleep(0.2)
            assert moved is not None, f"A went on metering a moved session: {stale_answers}"
            assert moved.code() is grpc.StatusCode.UNAVAILABLE
            assert error_reason(moved) == "SESSION_MOVED"
            await asyncio.sleep(0.2)  # > 2 flush intervals: anything A would write is in
            row = session_row(cluster, session_id)
            assert (row["used_units"], row["owner_epoch"]) == (50, after["owner_epoch"])
            assert row["owner_id"] == after["owner_id"]

            for sequence, used in ((6, 60), (7, 70)):
                answer = await on_b.send(sequence, used)
                assert (answer.used_units, answer.charged_micros) == (used, used * PRICE_MICROS)
            await on_b.close()

        record = await stop_session(b.address, session_id, 70, device(account_id))
        assert (record.used_units, record.charged_micros) == (70, 700_000)
        assert session_row(cluster, session_id)["owner_epoch"] > after["owner_epoch"]
    await assert_charged_once(cluster, account_id, session_id, 70, "CLIENT_STOP")


# -- 4. a graceful stop writes the last usage ------------------------------------------------


async def write_waits_or_exits(
    cluster: Cluster, blocker_pid: int, process: subprocess.Popen[bytes], within: float
) -> None:
    """Wait until a statement waits for the lock the connection `blocker_pid` holds, or
    the process is gone."""
    deadline = time.monotonic() + within
    with psycopg.connect(libpq_dsn(cluster.stores.service_url), autocommit=True) as conn:
        while process.poll() is None:
            waiting = conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE %s = ANY(pg_blocking_pids(pid))",
                (blocker_pid,),
            ).fetchone()
            if waiting is not None and waiting[0] > 0:
                return
            assert time.monotonic() < deadline, f"no write and no exit within {within} s"
            await asyncio.sleep(0.01)


async def test_graceful_stop_writes_the_last_usage_before_exiting(
    cluster: Cluster, tmp_path: Path
) -> None:
    """SIGTERM while a stream is open and its usage is only in memory: the instance
    writes that usage before it exits, even when the database is slow to take it (here
    the row is locked for a few seconds), and another instance then settles it there."""
    async with service_managers(cluster, tmp_path, LONG_FLUSH, {}) as (owner, other):
        account_id = await new_customer(cluster)
        session_id = (await start_session(owner.address, account_id)).session_id

        async with meter_stream(owner.address, account_id, session_id) as stream:
            for sequence, used in ((1, 20), (2, 40), (3, 55)):
                assert (await stream.send(sequence, used)).used_units == used
            assert session_row(cluster, session_id)["used_units"] == 0  # only in memory

            with psycopg.connect(libpq_dsn(cluster.stores.service_url)) as lock:
                lock.execute(
                    "SELECT 1 FROM sessions WHERE session_id = %s FOR UPDATE", (session_id,)
                )
                owner.process.send_signal(signal.SIGTERM)
                await write_waits_or_exits(cluster, lock.info.backend_pid, owner.process, 20)
                # The database is slow, not stuck: the lock goes after a while, or once the
                # process is gone (a write it left waiting then ends with its connection).
                with contextlib.suppress(subprocess.TimeoutExpired):
                    await asyncio.to_thread(owner.process.wait, HOLD)
                lock.rollback()
            code = await asyncio.to_thread(owner.process.wait, 20)

        assert code == 0
        row = session_row(cluster, session_id)
        assert (row["status"], row["used_units"], row["last_sequence"]) == ("ACTIVE", 55, 3)

        # An operator's stop with 0 settles exactly what was written.
        record = await stop_session(other.address, session_id, 0, OPERATOR)
        assert (record.used_units, record.charged_micros) == (55, 550_000)
    await assert_charged_once(cluster, account_id, session_id, 55, "OPERATOR")
