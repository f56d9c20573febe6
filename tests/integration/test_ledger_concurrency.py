"""The ledger under load: a billing manager process on the shared PostgreSQL, and 8 worker
processes each making 200 mixed money calls on 5 accounts at once (fundings, reserves,
partial captures, releases, adjustments, refunds, and repeats of the same keys), plus 50
redemptions of one voucher code spread over the processes and sent at the same moment.

Each worker returns what it asked and what it got. Every call must get what was expected
(a repeat the first answer, a second settlement HOLD_CLOSED, a reused key ALREADY_EXISTS);
exactly one redemption wins and the 49 others are refused VOUCHER_USED; each account's
balance is its fundings - its captures + its adjustments + its refunds, each key counted
once, and its held amount the sum of the holds left open; `meterline ledger verify`
exits 0."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import random
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import grpc
import pytest

from meterline.billing.v1 import billing_pb2, billing_pb2_grpc
from meterline.kernel.config import Endpoints, TlsSettings
from meterline.kernel.grpc_errors import error_reason
from meterline.kernel.grpc_server import client_channel
from meterline.kernel.principals import Principal, PrincipalKind
from meterline.kernel.processes import free_port, spawn_service, stop_processes
from meterline.kernel.tls import channel_credentials
from tests.support import tls
from tests.support.clients import OPERATOR
from tests.support.stack import environment, metadata, token_for, wait_for
from tests.support.stores import StoreUrls

# Eight processes with their own connections: alone.
pytestmark = [pytest.mark.integration, pytest.mark.exclusive, pytest.mark.timeout(120)]

WORKERS = 8
CALLS_PER_WORKER = 200
TASKS_PER_WORKER = 4
"""Concurrent callers in each worker process, sharing its 200 calls."""
ACCOUNTS = 5
REDEMPTIONS = 50
OPENING_FUNDS = 1_000_000_000  # micros: no reserve or adjustment of the run is refused
VOUCHER_MICROS = 777_000
READY_SECONDS = 60.0
"""For every worker process to start and connect (they then all begin at once)."""

Metadata = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Call:
    """One call a worker made: what it asked, what it expected, what it got."""

    kind: str
    """fund, reserve, capture, release, adjust, refund or redeem."""
    account_id: str
    key: str
    amount: int
    hold_id: str = ""
    expected: str = "OK"
    """OK, or the status code name and reason it expected (FAILED_PRECONDITION/HOLD_CLOSED);
    a redemption expects nothing (the parent counts the winners)."""
    got: str = "OK"
    answer_id: str = ""
    """The transaction or hold the answer named."""
    captured: int = 0
    """A capture's answer: what the hold captured."""
    details: str = ""


@dataclass(frozen=True)
class Job:
    index: int
    address: str
    ca_file: str
    accounts: tuple[str, ...]
    voucher_code: str
    voucher_accounts: tuple[str, ...]
    voucher_devices: tuple[Metadata, ...]
    ready: Any
    """A multiprocessing.Manager Barrier of the workers: they begin together."""


class Caller:
    """A worker's calls, each recorded as a Call."""

    def __init__(self, stub: billing_pb2_grpc.BillingManagerAsyncStub, rng: random.Random):
        self.stub = stub
        self.rng = rng
        self.calls: list[Call] = []
        self.made = 0

    async def call(
        self,
        asked: Call,
        send: Callable[[], Awaitable[Any]],
        answer_id: Callable[[Any], str],
    ) -> Any:
        self.made += 1
        try:
            answer = await send()
        except grpc.aio.AioRpcError as error:
            got = f"{error.code().name}/{error_reason(error) or ''}"
            self.calls.append(replace(asked, got=got, details=error.details() or ""))
            return None
        captured = answer.captured_micros if isinstance(answer, billing_pb2.Hold) else 0
        self.calls.append(replace(asked, answer_id=answer_id(answer), captured=captured))
        return answer

    def fund(self, account_id: str, amount: int, key: str, expected: str = "OK") -> Any:
        return self.call(
            Call("fund", account_id, key, amount, expected=expected),
            lambda: self.stub.FundAccount(
                billing_pb2.FundAccountRequest(
                    account_id=account_id, amount_micros=amount, idempotency_key=key
                ),
                metadata=OPERATOR,
            ),
            lambda answer: answer.transaction.transaction_id,
        )

    def reserve(self, account_id: str, amount: int, key: str) -> Any:
        return self.call(
            Call("reserve", account_id, key, amount),
            lambda: self.stub.Reserve(
                billing_pb2.ReserveRequest(
                    account_id=account_id, amount_micros=amount, idempotency_key=key
                ),
                metadata=OPERATOR,
            ),
            lambda answer: answer.hold_id,
        )

    def capture(
        self, account_id: str, hold_id: str, amount: int, key: str, expected: str = "OK"
    ) -> Any:
        return self.call(
            Call("capture", account_id, key, amount, hold_id, expected),
            lambda: self.stub.Capture(
                billing_pb2.CaptureRequest(
                    hold_id=hold_id, amount_micros=amount, idempotency_key=key
                ),
                metadata=OPERATOR,
            ),
            lambda answer: answer.hold_id,
        )

    def release(self, account_id: str, hold_id: str, key: str, expected: str = "OK") -> Any:
        return self.call(
            Call("release", account_id, key, 0, hold_id, expected),
            lambda: self.stub.Release(
                billing_pb2.ReleaseRequest(hold_id=hold_id, idempotency_key=key),
                metadata=OPERATOR,
            ),
            lambda answer: answer.hold_id,
        )

    def adjust(self, account_id: str, amount: int, key: str) -> Any:
        return self.call(
            Call("adjust", account_id, key, amount),
            lambda: self.stub.AdjustAccount(
                billing_pb2.AdjustAccountRequest(
                    account_id=account_id, amount_micros=amount, reason="load", idempotency_key=key
                ),
                metadata=OPERATOR,
            ),
            lambda answer: answer.transaction.transaction_id,
        )

    def refund(
        self, account_id: str, hold_id: str, amount: int, key: str, expected: str = "OK"
    ) -> Any:
        return self.call(
            Call("refund", account_id, key, amount, hold_id, expected),
            lambda: self.stub.Refund(
                billing_pb2.RefundRequest(
                    hold_id=hold_id, amount_micros=amount, reason="load", idempotency_key=key
                ),
                metadata=OPERATOR,
            ),
            lambda answer: answer.transaction.transaction_id,
        )

    def redeem(self, account_id: str, code: str, who: Metadata) -> Any:
        return self.call(
            Call("redeem", account_id, "voucher", VOUCHER_MICROS, expected=""),
            lambda: self.stub.RedeemVoucher(
                billing_pb2.RedeemVoucherRequest(account_id=account_id, code=code), metadata=who
            ),
            lambda answer: answer.transaction.transaction_id,
        )


def _key() -> str:
    return uuid.uuid4().hex


async def _movement(caller: Caller, accounts: tuple[str, ...]) -> None:
    """One random movement, with its repeats and refusals."""
    rng = caller.rng
    account_id = rng.choice(accounts)
    roll = rng.random()
    if roll < 0.15:
        key, amount = _key(), rng.randint(1, 50_000)
        await caller.fund(account_id, amount, key)
        if rng.random() < 0.3:
            await caller.fund(account_id, amount, key)  # a retry: the same answer
        if rng.random() < 0.1:
            await caller.fund(account_id, amount + 1, key, "ALREADY_EXISTS/IDEMPOTENCY_KEY_REUSED")
    elif roll < 0.30:
        key, amount = _key(), rng.randint(-20_000, 20_000) or 1
        await caller.adjust(account_id, amount, key)
        if rng.random() < 0.3:
            await caller.adjust(account_id, amount, key)
    else:
        key, amount = _key(), rng.randint(1_000, 100_000)
        hold = await caller.reserve(account_id, amount, key)
        if hold is None:
            return
        if rng.random() < 0.2:
            await caller.reserve(account_id, amount, key)
        fate = rng.random()
        if fate < 0.55:
            key, part = _key(), rng.randint(0, amount)
            await caller.capture(account_id, hold.hold_id, part, key)
            if rng.random() < 0.3:
                await caller.capture(account_id, hold.hold_id, part, key)
            if rng.random() < 0.2:
                await caller.capture(
                    account_id, hold.hold_id, part, _key(), "FAILED_PRECONDITION/HOLD_CLOSED"
                )
            if part and rng.random() < 0.4:
                key, back = _key(), rng.randint(1, part)
                await caller.refund(account_id, hold.hold_id, back, key)
                if rng.random() < 0.3:
                    await caller.refund(account_id, hold.hold_id, back, key)
                if rng.random() < 0.2:
                    await caller.refund(
                        account_id,
                        hold.hold_id,
                        part - back + 1,
                        _key(),
                        "FAILED_PRECONDITION/REFUND_TOO_LARGE",
                    )
        elif fate < 0.85:
            key = _key()
            await caller.release(account_id, hold.hold_id, key)
            if rng.random() < 0.3:
                await caller.release(account_id, hold.hold_id, key)
            if rng.random() < 0.2:
                await caller.release(
                    account_id, hold.hold_id, _key(), "FAILED_PRECONDITION/HOLD_CLOSED"
                )
        # else: left open


async def _work(job: Job) -> list[Call]:
    credentials = channel_credentials(TlsSettings(ca_file=Path(job.ca_file)))
    async with client_channel(job.address, credentials) as channel:
        stub = billing_pb2_grpc.BillingManagerStub(channel)
        await channel.channel_ready()
        callers = [
            Caller(stub, random.Random(job.index * 100 + n)) for n in range(TASKS_PER_WORKER)
        ]
        share = CALLS_PER_WORKER // TASKS_PER_WORKER
        await asyncio.to_thread(job.ready.wait, READY_SECONDS)

        async def run(caller: Caller) -> None:
            while caller.made < share:
                await _movement(caller, job.accounts)

        redeemer = Caller(stub, random.Random(job.index))
        await asyncio.gather(
            *(
                redeemer.redeem(account_id, job.voucher_code, who)
                for account_id, who in zip(job.voucher_accounts, job.voucher_devices, strict=True)
            ),
            *(run(caller) for caller in callers),
        )
    return [call for caller in (redeemer, *callers) for call in caller.calls]


def _worker(job: Job) -> list[Call]:
    """One worker process's calls (run in a spawned process)."""
    return asyncio.run(_work(job))


# --- the parent ----------------------------------------------------------------------


async def _setup(
    stub: billing_pb2_grpc.BillingManagerAsyncStub,
) -> tuple[list[str], list[str], str]:
    async def account(funded: int) -> str:
        made = await stub.CreateAccount(
            billing_pb2.CreateAccountRequest(display_name="load", currency="EUR"),
            metadata=OPERATOR,
        )
        if funded:
            await stub.FundAccount(
                billing_pb2.FundAccountRequest(
                    account_id=made.account_id, amount_micros=funded, idempotency_key=_key()
                ),
                metadata=OPERATOR,
            )
        return str(made.account_id)

    accounts = await asyncio.gather(*(account(OPENING_FUNDS) for _ in range(ACCOUNTS)))
    redeemers = await asyncio.gather(*(account(0) for _ in range(REDEMPTIONS)))
    batch = await stub.CreateVouchers(
        billing_pb2.CreateVouchersRequest(count=1, amount_micros=VOUCHER_MICROS, currency="EUR"),
        metadata=OPERATOR,
    )
    return list(accounts), list(redeemers), batch.codes[0]


@dataclass
class Expected:
    """Each account's balance and held amount, from the calls acknowledged."""

    balance: dict[str, int]
    held: dict[str, int]


def _account_for(calls: list[Call]) -> Expected:
    balance: dict[str, int] = {}
    first: dict[tuple[str, str], Call] = {}
    opened: dict[str, Call] = {}
    settled: set[str] = set()
    for call in calls:
        if call.kind == "redeem" or call.got != "OK":
            continue
        earlier = first.setdefault((call.kind, call.key), call)
        if earlier is not call:
            # A repeat of the same request: the first answer again, counted once.
            assert (earlier.answer_id, earlier.amount, earlier.hold_id) == (
                call.answer_id,
                call.amount,
                call.hold_id,
            ), (earlier, call)
            continue
        change = {
            "fund": call.amount,
            "adjust": call.amount,
            "refund": call.amount,
            "capture": -call.amount,
        }.get(call.kind, 0)
        balance[call.account_id] = balance.get(call.account_id, 0) + change
        if call.kind == "reserve":
            opened[call.answer_id] = call
        elif call.kind in ("capture", "release"):
            assert call.hold_id not in settled, f"hold {call.hold_id} settled twice"
            settled.add(call.hold_id)
            if call.kind == "capture":
                assert call.captured == call.amount, call
    held: dict[str, int] = {}
    for hold_id, reserve in opened.items():
        if hold_id not in settled:
            held[reserve.account_id] = held.get(reserve.account_id, 0) + reserve.amount
    return Expected(balance, held)


def _device(account_id: str) -> Metadata:
    """The account's own device: a credential of its own (the voucher throttle counts the
    refusals of each credential, and these are not guesses)."""
    principal = Principal(
        PrincipalKind.DEVICE, subject=f"device-{account_id}", account_id=account_id
    )
    return metadata(token_for(principal))


def _ledger_verify(billing_url: str, accounts: list[str]) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("METERLINE_")}
    scope = [arg for account_id in accounts for arg in ("--account", account_id)]
    command = (sys.executable, "-m", "meterline.cli.main", "ledger", "verify")
    return subprocess.run(
        [*command, "--database-url", billing_url, *scope],
        env={**env, **tls.client_environment()},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_eight_processes_keep_the_ledger_exact(stores: StoreUrls, tmp_path: Path) -> None:
    began = time.monotonic()
    address = f"127.0.0.1:{free_port()}"
    env = environment(stores, Endpoints(billing=address))
    log = tmp_path / "billing_manager.log"
    billing = spawn_service("billing", env, log)
    try:
        await asyncio.to_thread(wait_for, address, billing, log)
        async with tls.channel(address) as channel:
            stub = billing_pb2_grpc.BillingManagerStub(channel)
            accounts, redeemers, code = await _setup(stub)
            context = multiprocessing.get_context("spawn")
            manager = context.Manager()
            ready = manager.Barrier(WORKERS)
            jobs = [
                Job(
                    index,
                    address,
                    str(tls.dev_certificates().ca),
                    tuple(accounts),
                    code,
                    tuple(redeemers[index::WORKERS]),
                    tuple(_device(account_id) for account_id in redeemers[index::WORKERS]),
                    ready,
                )
                for index in range(WORKERS)
            ]
            with manager, ProcessPoolExecutor(WORKERS, mp_context=context) as pool:
                loop = asyncio.get_running_loop()
                done = await asyncio.wait_for(
                    asyncio.gather(*(loop.run_in_executor(pool, _worker, job) for job in jobs)),
                    timeout=90,
                )
            calls = [call for worker in done for call in worker]

            # What was asked and what was got.
            moves = [call for call in calls if call.kind != "redeem"]
            assert len(moves) >= WORKERS * CALLS_PER_WORKER
            wrong = [call for call in moves if call.got != call.expected]
            assert wrong == [], wrong[:5]
            assert {call.kind for call in moves if call.got == "OK"} == {
                "fund",
                "reserve",
                "capture",
                "release",
                "adjust",
                "refund",
            }
            repeats = len(moves) - len({(call.kind, call.key) for call in moves})
            assert repeats > 50, "the run should repeat many keys"

            # One voucher, 50 redemptions at once: one wins.
            redemptions = [call for call in calls if call.kind == "redeem"]
            assert len(redemptions) == REDEMPTIONS
            winners = [call for call in redemptions if call.got == "OK"]
            assert len(winners) == 1, winners
            refused = [call.got for call in redemptions if call.got != "OK"]
            assert refused == ["FAILED_PRECONDITION/VOUCHER_USED"] * (REDEMPTIONS - 1)

            # The balances are what the acknowledged calls asked for.
            expected = _account_for(moves)
            for account_id in accounts:
                account = await stub.GetAccount(
                    billing_pb2.GetAccountRequest(account_id=account_id), metadata=OPERATOR
                )
                assert account.balance_micros == OPENING_FUNDS + expected.balance.get(
                    account_id, 0
                ), account_id
                assert account.held_micros == expected.held.get(account_id, 0), account_id
            for account_id in redeemers:
                account = await stub.GetAccount(
                    billing_pb2.GetAccountRequest(account_id=account_id), metadata=OPERATOR
                )
                won = VOUCHER_MICROS if account_id == winners[0].account_id else 0
                assert (account.balance_micros, account.held_micros) == (won, 0)
    finally:
        stop_processes([billing])

    verified = await asyncio.to_thread(_ledger_verify, stores.billing_url, accounts + redeemers)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert verified.stdout.strip().endswith(": OK"), verified.stdout
    assert time.monotonic() - began < 60, "the load test should stay under a minute"
