"""A stateful property test of the ledger against the real PostgreSQL: random
interleavings of fund, redeem, reserve, capture, release, expire, adjust, refund and
retries with the same keys, on a prepaid and a postpaid account, checking after every
step that balance = the sum of the entries, available = balance - open holds, prepaid
available >= 0, postpaid available >= -limit, no hold captured twice or beyond its
amount nor refunded beyond its capture, every repeat answers its first result, and a
voucher funds at most once. Drives the ledger service (domain rules and the movement
functions) directly, on an event loop of its own."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, TypeVar

import psycopg
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from billing_manager.domain.ledger import HoldStatus
from billing_manager.ledger import Ledger
from billing_manager.server import migrate
from billing_manager.storage.movement_store import MovementStore
from meterline.kernel.db import create_engine_for, libpq_dsn
from meterline.kernel.errors import FailedPrecondition, InsufficientFunds
from tests.support.stores import StoreUrls

# Many connections at once: alone.
pytestmark = [pytest.mark.integration, pytest.mark.exclusive]
T = TypeVar("T")
LIMIT = 1_000


@dataclass
class ModelHold:
    account: int
    amount: int
    status: HoldStatus = HoldStatus.OPEN
    captured: int = 0
    refunded: int = 0


def test_the_ledger_keeps_its_invariants_under_random_interleavings(stores: StoreUrls) -> None:
    migrate(stores.billing_url)  # as a billing manager does on start (idempotent)
    loop = asyncio.new_event_loop()

    def run(call: Awaitable[T]) -> T:
        return loop.run_until_complete(call)

    engine = create_engine_for(stores.billing_url, pool_size=1)
    movements = MovementStore(stores.billing_url, pool_size=2)
    run(movements.open())
    ledger = Ledger(engine, movements, "s" * 40)
    database = psycopg.connect(libpq_dsn(stores.billing_url), autocommit=True)

    class LedgerMachine(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.accounts = [
                run(ledger.create_account("prepaid", "EUR", 0)).account.account_id,
                run(ledger.create_account("postpaid", "EUR", LIMIT)).account.account_id,
            ]
            self.limits = [0, LIMIT]
            self.balances = [0, 0]
            self.holds: dict[str, ModelHold] = {}
            self.voucher_codes = run(ledger.create_vouchers(3, 300, "EUR", None))[1]
            self.redeemed: dict[int, int] = {}  # voucher -> account
            self.answers: list[tuple[Any, Any]] = []  # (repeat, first answer's id)

        def _held(self, account: int) -> int:
            return sum(
                hold.amount
                for hold in self.holds.values()
                if hold.account == account and hold.status is HoldStatus.OPEN
            )

        def _available(self, account: int) -> int:
            return self.balances[account] - self._held(account)

        @rule(account=st.integers(0, 1), amount=st.integers(1, 2_000))
        def fund(self, account: int, amount: int) -> None:
            key = uuid.uuid4().hex
            first, _ = run(ledger.fund(self.accounts[account], amount, key))
            self.balances[account] += amount
            self.answers.append(
                (lambda: ledger.fund(self.accounts[account], amount, key), first.transaction_id)
            )

        @rule(account=st.integers(0, 1), voucher=st.integers(0, 2))
        def redeem(self, account: int, voucher: int) -> None:
            code = self.voucher_codes[voucher]
            try:
                made = run(
                    ledger.redeem_voucher(uuid.uuid4().hex, self.accounts[account], code)
                ).transaction
            except FailedPrecondition as refused:
                assert refused.reason == "VOUCHER_USED"
                assert self.redeemed[voucher] != account
                return
            if voucher in self.redeemed:
                assert self.redeemed[voucher] == account  # the first result, again
                return
            self.redeemed[voucher] = account
            self.balances[account] += 300
            assert made.amount_micros == 300

        @rule(account=st.integers(0, 1), amount=st.integers(1, 1_500))
        def reserve(self, account: int, amount: int) -> None:
            key = uuid.uuid4().hex
            can = self._available(account) - amount >= -self.limits[account]
            try:
                hold = run(ledger.reserve(self.accounts[account], amount, key, "machine"))
            except InsufficientFunds:
                assert not can
                return
            assert can
            self.holds[hold.hold_id] = ModelHold(account, amount)
            self.answers.append(
                (
                    lambda: ledger.reserve(self.accounts[account], amount, key, "machine"),
                    hold.hold_id,
                )
            )

        def _open(self) -> list[str]:
            return sorted(h for h, m in self.holds.items() if m.status is HoldStatus.OPEN)

        @precondition(lambda self: self._open())
        @rule(pick=st.integers(0, 100), share=st.integers(0, 100), twice=st.booleans())
        def capture(self, pick: int, share: int, twice: bool) -> None:
            hold_id = self._open()[pick % len(self._open())]
            model = self.holds[hold_id]
            amount = model.amount * share // 100
            key = uuid.uuid4().hex
            run(ledger.capture(hold_id, amount, key))
            model.status, model.captured = HoldStatus.CAPTURED, amount
            self.balances[model.account] -= amount
            if twice:  # a second capture, with another key: refused
                with pytest.raises(FailedPrecondition):
                    run(ledger.capture(hold_id, amount, uuid.uuid4().hex))

        @precondition(lambda self: self._open())
        @rule(pick=st.integers(0, 100))
        def release(self, pick: int) -> None:
            hold_id = self._open()[pick % len(self._open())]
            run(ledger.release(hold_id, uuid.uuid4().hex))
            self.holds[hold_id].status = HoldStatus.RELEASED

        @precondition(lambda self: self._open())
        @rule(pick=st.integers(0, 100))
        def expire(self, pick: int) -> None:
            hold_id = self._open()[pick % len(self._open())]
            database.execute(
                "UPDATE holds SET expires_at = now() - interval '1 second' WHERE hold_id = %s",
                (hold_id,),
            )
            run(ledger.expire_holds())
            self.holds[hold_id].status = HoldStatus.RELEASED

        @rule(account=st.integers(0, 1), amount=st.integers(-1_500, 1_500).filter(bool))
        def adjust(self, account: int, amount: int) -> None:
            can = amount > 0 or self._available(account) + amount >= -self.limits[account]
            try:
                run(ledger.adjust(self.accounts[account], amount, "machine", uuid.uuid4().hex))
            except InsufficientFunds:
                assert not can
                return
            assert can
            self.balances[account] += amount

        @precondition(
            lambda self: any(m.status is HoldStatus.CAPTURED for m in self.holds.values())
        )
        @rule(pick=st.integers(0, 100), amount=st.integers(1, 1_500))
        def refund(self, pick: int, amount: int) -> None:
            captured = sorted(h for h, m in self.holds.items() if m.status is HoldStatus.CAPTURED)
            hold_id = captured[pick % len(captured)]
            model = self.holds[hold_id]
            try:
                run(ledger.refund(hold_id, amount, "machine", uuid.uuid4().hex))
            except FailedPrecondition as refused:
                assert refused.reason == "REFUND_TOO_LARGE"
                assert model.refunded + amount > model.captured
                return
            assert model.refunded + amount <= model.captured
            model.refunded += amount
            self.balances[model.account] += amount

        @precondition(lambda self: self.answers)
        @rule(pick=st.integers(0, 1000))
        def retry(self, pick: int) -> None:
            repeat, first = self.answers[pick % len(self.answers)]
            answer = run(repeat())
            again = answer[0].transaction_id if isinstance(answer, tuple) else answer.hold_id
            assert again == first

        @invariant()
        def balances_are_the_ledger(self) -> None:
            for account, account_id in enumerate(self.accounts):
                view = run(ledger.get_account(account_id))
                assert view.balances.balance_micros == self.balances[account]
                assert view.balances.held_micros == self._held(account)
                assert view.balances.available_micros >= -self.limits[account]
            assert run(movements.running_balance_drift(self.accounts[0])) == []
            assert run(movements.running_balance_drift(self.accounts[1])) == []

        @invariant()
        def holds_are_settled_once_within_their_amount(self) -> None:
            if not self.holds:
                return
            rows = database.execute(
                "SELECT h.hold_id, h.status, h.captured_micros, "
                "count(t.*) FILTER (WHERE t.kind IN ('CAPTURE', 'RELEASE')), "
                "coalesce(sum(t.amount_micros) FILTER (WHERE t.kind = 'REFUND'), 0) "
                "FROM holds h LEFT JOIN ledger_transactions t ON t.hold_id = h.hold_id "
                "WHERE h.hold_id = ANY(%s) GROUP BY h.hold_id",
                (list(self.holds),),
            ).fetchall()
            for hold_id, status, captured, settlements, refunded in rows:
                model = self.holds[hold_id]
                assert (status, captured, refunded) == (
                    model.status.value,
                    model.captured,
                    model.refunded,
                )
                assert settlements == (0 if status == "OPEN" else 1)
                assert captured <= model.amount and refunded <= captured

    try:
        LedgerMachine.TestCase.settings = settings(
            max_examples=25,
            stateful_step_count=20,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        )
        LedgerMachine.TestCase().runTest()
    finally:
        database.close()
        run(movements.close())
        run(engine.dispose())
        loop.close()
