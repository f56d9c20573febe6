"""billing_manager.domain.invoices: a bill's period, number, lines, charges, sessions,
movements and balances, with no database."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import given
from hypothesis import strategies as st

from billing_manager.domain.invoices import (
    OTHER,
    PeriodTransaction,
    UsageSummary,
    build_bill,
    invoice_number,
    is_invoice_number,
    validate_period,
    validate_usage,
)
from billing_manager.domain.ledger import TransactionKind
from billing_manager.grpc_api import usage_from_wire
from meterline.billing.v1 import billing_pb2
from meterline.kernel.errors import FailedPrecondition, InvalidArgument

pytestmark = pytest.mark.unit

T0 = datetime(2026, 11, 1, tzinfo=UTC)


def _usage(session: str, service: str = "VOICE", app: str = "", **changes: object) -> UsageSummary:
    usage = UsageSummary(
        session_id=session,
        service_type=service,
        endpoint="+33100000000",
        application_id=app,
        units=60,
        unit="SECOND",
        start_time=T0 + timedelta(hours=1),
        end_time=T0 + timedelta(hours=1, seconds=65),
        charged_micros=600_000,
    )
    return replace(usage, **changes)  # type: ignore[arg-type]


_count = 0


def _tx(
    kind: TransactionKind,
    customer: int,
    revenue: int = 0,
    usage: UsageSummary | None = None,
    reference: str = "",
    key: str = "",
    hold: str = "",
    minutes: int = 0,
) -> PeriodTransaction:
    global _count
    _count += 1
    return PeriodTransaction(
        transaction_id=f"txn_{_count:04d}",
        kind=kind,
        created_at=T0 + timedelta(minutes=minutes or _count),
        customer_micros=customer,
        revenue_micros=revenue,
        hold_id=hold or f"hold_{_count}",
        reference=reference,
        idempotency_key=key or f"key-{_count}",
        usage=usage,
    )


def _capture(
    amount: int, usage: UsageSummary | None = None, reference: str = ""
) -> PeriodTransaction:
    return _tx(TransactionKind.CAPTURE, -amount, amount, usage, reference=reference)


def test_charges_per_service_type_and_application_with_their_sessions() -> None:
    voice_a = _usage("ses_a", units=65)
    voice_b = _usage("ses_b", units=30, start_time=T0 + timedelta(hours=3))
    game = _usage("ses_g", "APPLICATION", "game-42", units=3, unit="EVENT")
    chat = _usage("ses_c", "APPLICATION", "chat", units=5, unit="EVENT")
    transactions = [
        _tx(TransactionKind.FUND, 10_000_000, reference="voucher vch_1"),
        _tx(TransactionKind.RESERVE, 0),
        # ses_a had two holds: one session on the bill, both captures in its amount.
        _capture(400_000, voice_a),
        _capture(250_000, voice_a),
        _capture(300_000, voice_b),
        _capture(123_457, game),
        _capture(7, chat),
        _capture(90_000, None, reference="manual-charge-1"),
        _capture(0, voice_b),  # nothing captured: no line
        _tx(TransactionKind.RELEASE, 0),
        _tx(TransactionKind.ADJUST, -50_000, reference="goodwill reversed"),
        _tx(TransactionKind.REFUND, 100_000, reference="dropped call", hold="hold_x"),
        _tx(TransactionKind.FUND, 2_000_000, key="payment:PAY-9"),
    ]
    captured = 400_000 + 250_000 + 300_000 + 123_457 + 7 + 90_000
    opening = 1_000_000
    closing = opening + 12_000_000 - 50_000 + 100_000 - captured
    bill = build_bill(opening, transactions, closing)

    assert bill.captured_micros == captured
    assert sum(line.amount_micros for line in bill.lines) == captured
    assert len(bill.lines) == 6  # one per capture with a charge
    assert [(c.service_type, c.application_id) for c in bill.charges] == [
        ("APPLICATION", "chat"),
        ("APPLICATION", "game-42"),
        ("VOICE", ""),
        (OTHER, ""),
    ]
    voice = bill.charges[2]
    assert voice.unit == "SECOND"
    assert voice.units == 95
    assert voice.amount_micros == 950_000
    assert [(s.session_id, s.amount_micros, s.units) for s in voice.sessions] == [
        ("ses_a", 650_000, 65),
        ("ses_b", 300_000, 30),
    ]
    assert voice.sessions[0].duration == timedelta(seconds=65)
    assert voice.sessions[0].endpoint == "+33100000000"
    other = bill.charges[3]
    assert [(s.session_id, s.amount_micros, s.units) for s in other.sessions] == [
        ("manual-charge-1", 90_000, 0)
    ]
    assert sum(c.amount_micros for c in bill.charges) == captured
    for charge in bill.charges:
        assert charge.amount_micros == sum(s.amount_micros for s in charge.sessions)

    assert (bill.funded_micros, bill.adjusted_micros, bill.refunded_micros) == (
        12_000_000,
        -50_000,
        100_000,
    )
    assert [(m.kind, m.amount_micros, m.description) for m in bill.movements] == [
        (TransactionKind.FUND, 10_000_000, "voucher vch_1"),
        (TransactionKind.ADJUST, -50_000, "goodwill reversed"),
        (TransactionKind.REFUND, 100_000, "dropped call (hold hold_x)"),
        (TransactionKind.FUND, 2_000_000, "payment PAY-9"),
    ]
    assert bill.opening_balance_micros == opening
    assert bill.closing_balance_micros == closing


def test_the_closing_balance_must_be_the_ledgers() -> None:
    transactions = [_tx(TransactionKind.FUND, 5_000), _capture(1_000, _usage("s"))]
    assert build_bill(10, transactions, 4_010).closing_balance_micros == 4_010
    with pytest.raises(AssertionError, match="closing balance"):
        build_bill(10, transactions, 4_011)
    with pytest.raises(AssertionError, match="not balanced"):
        build_bill(0, [_tx(TransactionKind.CAPTURE, -5, 4)], -5)
    with pytest.raises(AssertionError, match="moved the balance"):
        build_bill(0, [_tx(TransactionKind.RESERVE, -5)], -5)


def test_an_empty_period_is_a_bill_of_its_balance() -> None:
    bill = build_bill(700, [], 700)
    assert (bill.captured_micros, bill.lines, bill.charges, bill.movements) == (0, (), (), ())
    assert bill.closing_balance_micros == 700


@given(
    st.lists(
        st.tuples(
            st.integers(min_value=0, max_value=10**9),
            st.sampled_from(["VOICE", "VIDEO", "APPLICATION", None]),
            st.sampled_from(["s1", "s2", "s3", "s4"]),
        ),
        max_size=30,
    ),
    st.integers(min_value=-(10**9), max_value=10**9),
)
def test_the_sums_agree_whatever_the_captures(
    captures: list[tuple[int, str | None, str]], opening: int
) -> None:
    transactions = [
        _capture(amount, _usage(session, service) if service else None, reference=session)
        for amount, service, session in captures
    ]
    captured = sum(amount for amount, _, _ in captures)
    bill = build_bill(opening, transactions, opening - captured)
    assert bill.captured_micros == captured
    assert sum(line.amount_micros for line in bill.lines) == captured
    assert sum(charge.amount_micros for charge in bill.charges) == captured
    assert sum(s.amount_micros for c in bill.charges for s in c.sessions) == captured
    assert bill.closing_balance_micros == opening - captured


def test_a_period_must_have_ended() -> None:
    now = T0 + timedelta(days=40)
    validate_period(T0, T0 + timedelta(days=30), now)
    validate_period(T0, now, now)
    with pytest.raises(InvalidArgument, match="before period_end"):
        validate_period(T0, T0, now)
    with pytest.raises(FailedPrecondition, match="still to come") as refused:
        validate_period(T0, now + timedelta(seconds=1), now)
    assert refused.value.reason == "PERIOD_NOT_ENDED"


def test_numbers() -> None:
    assert invoice_number(2026, 123) == "INV-2026-000123"
    assert invoice_number(2027, 1_234_567) == "INV-2027-1234567"
    assert is_invoice_number("INV-2026-000123")
    assert not is_invoice_number("inv_0123")
    assert not is_invoice_number("INV-2026-12")
    with pytest.raises(ValueError):
        invoice_number(2026, 0)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"session_id": " "}, "session_id is empty"),
        ({"service_type": ""}, "service_type is empty"),
        ({"service_type": OTHER}, "kept for captures"),
        ({"units": -1}, "cannot be negative"),
        ({"units": 10**15 + 1}, "the most a summary names"),
        ({"charged_micros": -1}, "cannot be negative"),
        ({"endpoint": "x" * 257}, "longer than 256"),
        ({"application_id": "a\nb"}, "control characters"),
    ],
)
def test_bad_usage_summaries_are_refused(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        validate_usage(_usage("ses_1", **changes))
    assert validate_usage(_usage("ses_1")) == _usage("ses_1")


def test_a_summary_ending_before_it_started_lasts_no_time() -> None:
    skewed = _usage("ses_1", end_time=T0)
    assert validate_usage(skewed).end_time == skewed.start_time


def test_a_usage_time_set_to_the_epoch_is_the_epoch() -> None:
    """A time the request sets is read as sent, 1970-01-01T00:00:00Z too (an unset wire
    time reads as now elsewhere)."""
    wire = billing_pb2.UsageSummary(
        session_id="ses_1",
        service_type="VOICE",
        start_time=Timestamp(seconds=0),
        end_time=Timestamp(seconds=65),
    )
    usage = usage_from_wire(wire)
    assert usage.start_time == datetime(1970, 1, 1, tzinfo=UTC)
    assert usage.end_time - usage.start_time == timedelta(seconds=65)
