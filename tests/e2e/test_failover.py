"""Failover with real processes and TLS: 300 SDK sessions (20 devices, 15 each) stream
their usage through the primary service manager, a secondary runs beside it on the same
databases, and the primary is killed (SIGKILL) or frozen (SIGSTOP for 30 s). Every session
resumes on the secondary in time; new work goes to the secondary while the primary is
away and back to it once it is healthy; and after stop, every service record's usage and
charge are exactly what its client used, and every account paid exactly that, once.

The resume time of a session is from the signal to the first of its updates the
secondary acknowledged; the tests print p50 and max."""

from __future__ import annotations

import asyncio
import math
import statistics
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace

import pytest

from client_sdk import MeterlineClient, ServiceSession, ServiceType
from meterline.kernel.embedded import start_embedded_postgres, stop_embedded_postgres
from tests.support.sdk_cluster import (
    ENDPOINT,
    PRICE_MICROS,
    Cluster,
    Device,
    cluster,
    devices,
    operator_api,
    sdk_config,
    service_managers,
    service_records,
)
from tests.support.stores import StoreUrls

# Time bounds on failover, and two service managers with 300 sessions: alone.
pytestmark = [pytest.mark.e2e, pytest.mark.exclusive]

DEVICES = 20
SESSIONS_PER_DEVICE = 15
REPORT_INTERVAL = 0.5
"""Each session reports its next cumulative count (one more unit) this often, by hand."""
STARTING = 20
FUNDED_MICROS = 100_000_000
KILL_RESUME_LIMIT = 2.0
FREEZE_RESUME_LIMIT = 5.0
FREEZE_SECONDS = 30.0


@pytest.fixture(scope="module")
def failover_cluster(
    stores: StoreUrls, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    # A PostgreSQL of its own: two service managers with 300 sessions hold about 50
    # connections, more than the shared one has spare beside the other workers' stacks.
    data_dir = tmp_path_factory.mktemp("failover-postgres")
    server_url, _ = start_embedded_postgres(data_dir)
    try:
        own = replace(stores, server_url=server_url)
        with cluster(own, tmp_path_factory.mktemp("failover"), "failover") as running:
            yield running
    finally:
        stop_embedded_postgres(data_dir)


@dataclass
class Driven:
    """One session and the loop that reports for it: (time, server, sent, acknowledged)."""

    session: ServiceSession
    device: Device
    used: int = 0
    answers: list[tuple[float, str | None, int, int]] = field(default_factory=list)
    task: asyncio.Task[None] | None = None

    async def drive(self, running: asyncio.Event) -> None:
        while running.is_set():
            self.used += 1
            update = await self.session.report(self.used)
            self.answers.append(
                (time.monotonic(), self.session.server, self.used, update.used_units)
            )
            await asyncio.sleep(REPORT_INTERVAL)

    def resumed_at(self, since: float, server: str) -> float | None:
        for at, answered_by, _, _ in self.answers:
            if at > since and answered_by == server:
                return at
        return None


@dataclass
class Fleet:
    clients: list[MeterlineClient]
    by_client: dict[int, Device]
    sessions: list[Driven] = field(default_factory=list)
    running: asyncio.Event = field(default_factory=asyncio.Event)
    starting: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(STARTING))

    async def start(self, client: MeterlineClient, count: int) -> list[Driven]:
        """`count` sessions of `client`, each reporting from its start on. Starts are
        paced (STARTING at a time): devices do not all start in the same millisecond."""
        device = self.by_client[id(client)]

        async def one() -> Driven:
            async with self.starting:
                session = await client.start_service(ServiceType.VOICE, ENDPOINT)
            item = Driven(session, device)
            item.task = asyncio.create_task(item.drive(self.running))
            self.sessions.append(item)
            return item

        self.running.set()
        return list(await asyncio.gather(*(one() for _ in range(count))))

    async def wait_resumed(self, since: float, server: str, limit: float) -> list[float]:
        """Each session's resume time after `since` on `server` (waiting up to 3 x limit)."""
        deadline = time.monotonic() + 3 * limit
        while time.monotonic() < deadline:
            self.raise_failures()
            times = [s.resumed_at(since, server) for s in self.sessions]
            if all(t is not None for t in times):
                return [t - since for t in times if t is not None]
            await asyncio.sleep(0.05)
        missing = sum(1 for s in self.sessions if s.resumed_at(since, server) is None)
        raise AssertionError(f"{missing} of {len(self.sessions)} sessions did not resume")

    def raise_failures(self) -> None:
        for item in self.sessions:
            if item.task is not None and item.task.done() and item.task.exception():
                raise AssertionError(f"session {item.session.session_id} failed") from (
                    item.task.exception()
                )

    async def stop(self) -> None:
        self.running.clear()
        await asyncio.gather(*(s.task for s in self.sessions if s.task is not None))
        limit = asyncio.Semaphore(50)

        async def stop_one(item: Driven) -> None:
            async with limit:
                record = await item.session.stop(item.used)
            assert (record.used_units, record.charged_micros) == (
                item.used,
                item.used * PRICE_MICROS,
            )

        await asyncio.gather(*(stop_one(s) for s in self.sessions))

    def check_every_answer_was_exact(self) -> None:
        """Every acknowledgment carried the count just sent: nothing lost on the way."""
        wrong = [
            (s.session.session_id, sent, acked)
            for s in self.sessions
            for _, _, sent, acked in s.answers
            if sent != acked
        ]
        assert not wrong, wrong[:5]


@asynccontextmanager
async def fleet(cluster: Cluster, addresses: list[str]) -> AsyncIterator[Fleet]:
    """DEVICES logged-in clients over `addresses`, each with SESSIONS_PER_DEVICE sessions
    streaming; closed at the end."""
    funded = await devices(cluster, DEVICES, FUNDED_MICROS)
    clients = [MeterlineClient(sdk_config(device, addresses, cluster)) for device in funded]
    running = Fleet(clients, {id(c): d for c, d in zip(clients, funded, strict=True)})
    try:
        await asyncio.gather(*(client.login() for client in clients))
        await asyncio.gather(*(running.start(c, SESSIONS_PER_DEVICE) for c in clients))
        yield running
    finally:
        running.running.clear()
        for item in running.sessions:
            if item.task is not None:
                item.task.cancel()
        await asyncio.gather(*(s.task for s in running.sessions if s.task), return_exceptions=True)
        await asyncio.gather(*(client.close() for client in clients))


async def check_the_money(cluster: Cluster, driven: list[Driven]) -> None:
    """Each service record holds exactly the usage its client sent last, at the tariff;
    each account paid exactly the sum of its sessions' charges, once, and holds nothing."""
    records = service_records(cluster)
    for item in driven:
        record = records[item.session.session_id]
        assert (record["used_units"], record["billed_units"], record["charged_micros"]) == (
            item.used,
            item.used,
            item.used * PRICE_MICROS,
        ), record
        assert record["termination_reason"] == "CLIENT_STOP"
    charges: dict[str, int] = {}
    for item in driven:
        account = item.device.account_id
        charges[account] = charges.get(account, 0) + item.used * PRICE_MICROS
    async with operator_api(cluster) as api:
        for account_id, charged in charges.items():
            account = await api.account(account_id)
            assert (account.balance_micros, account.held_micros, account.available_micros) == (
                FUNDED_MICROS - charged,
                0,
                FUNDED_MICROS - charged,
            ), account_id


def figures(name: str, times: list[float]) -> str:
    ordered = sorted(times)
    p50 = statistics.median(ordered)
    p99 = ordered[max(0, math.ceil(0.99 * len(ordered)) - 1)]
    return (
        f"{name}: {len(times)} sessions resumed on the secondary; "
        f"p50 {p50:.2f} s, p99 {p99:.2f} s, max {ordered[-1]:.2f} s"
    )


def show(capsys: pytest.CaptureFixture[str], line: str) -> None:
    """Print the figures even when pytest captures the output."""
    with capsys.disabled():
        print(f"\n{line}")


async def new_starts_go_to(running: Fleet, server: str, within: float) -> list[Driven]:
    """One new session per client: each starts within `within` seconds and streams on
    `server`."""
    began = time.monotonic()
    started = await asyncio.gather(*(running.start(c, 1) for c in running.clients))
    took = time.monotonic() - began
    assert took < within, f"new starts took {took:.1f} s"
    fresh = [item for group in started for item in group]
    deadline = time.monotonic() + 5
    while any(not item.answers for item in fresh):
        assert time.monotonic() < deadline, "a new session sent no update"
        await asyncio.sleep(0.05)
    assert {item.answers[0][1] for item in fresh} == {server}
    return fresh


@pytest.mark.timeout(120)
async def test_sigkill_of_the_primary_moves_every_session_within_2_s(
    failover_cluster: Cluster, capsys: pytest.CaptureFixture[str]
) -> None:
    async with service_managers(failover_cluster, {}, {}) as (primary, secondary):
        addresses = [primary.address, secondary.address]
        async with fleet(failover_cluster, addresses) as running:
            await asyncio.sleep(2 * REPORT_INTERVAL)
            assert {s.session.server for s in running.sessions} == {primary.address}

            primary.kill()
            killed_at = time.monotonic()
            times = await running.wait_resumed(killed_at, secondary.address, KILL_RESUME_LIMIT)
            show(capsys, figures("SIGKILL", times))
            assert max(times) <= KILL_RESUME_LIMIT, figures("SIGKILL", times)
            assert {c.service_pool.current for c in running.clients} == {secondary.address}

            await asyncio.sleep(2 * REPORT_INTERVAL)  # a few more updates, past the move
            running.check_every_answer_was_exact()
            await running.stop()
            driven = running.sessions
        await check_the_money(failover_cluster, driven)


@pytest.mark.timeout(150)
async def test_sigstop_of_the_primary_moves_every_session_within_5_s_and_back_after(
    failover_cluster: Cluster, capsys: pytest.CaptureFixture[str]
) -> None:
    async with service_managers(failover_cluster, {}, {}) as (primary, secondary):
        addresses = [primary.address, secondary.address]
        async with fleet(failover_cluster, addresses) as running:
            await asyncio.sleep(2 * REPORT_INTERVAL)
            assert {s.session.server for s in running.sessions} == {primary.address}

            primary.freeze()
            frozen_at = time.monotonic()
            try:
                times = await running.wait_resumed(
                    frozen_at, secondary.address, FREEZE_RESUME_LIMIT
                )
                show(capsys, figures("SIGSTOP", times))
                assert max(times) <= FREEZE_RESUME_LIMIT, figures("SIGSTOP", times)
                # While the primary hangs, new work goes to the secondary at once.
                assert {c.service_pool.current for c in running.clients} == {secondary.address}
                await new_starts_go_to(running, secondary.address, within=2.0)
                await asyncio.sleep(max(0.0, frozen_at + FREEZE_SECONDS - time.monotonic()))
            finally:
                primary.thaw()
            thawed_at = time.monotonic()

            # Healthy again: each client's health check closes its circuit, and new work
            # goes back to the primary; the sessions that moved stay where they are.
            deadline = thawed_at + 15
            while {c.service_pool.current for c in running.clients} != {primary.address}:
                assert time.monotonic() < deadline, "the SDK did not return to the primary"
                await asyncio.sleep(0.1)
            back_after = time.monotonic() - thawed_at
            show(capsys, f"SIGCONT: new work back on the primary {back_after:.1f} s later")
            back = await new_starts_go_to(running, primary.address, within=2.0)
            await asyncio.sleep(2 * REPORT_INTERVAL)
            assert {item.session.server for item in back} == {primary.address}
            running.raise_failures()
            running.check_every_answer_was_exact()
            await running.stop()
            driven = running.sessions
        await check_the_money(failover_cluster, driven)
