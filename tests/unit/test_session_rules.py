"""service_manager.domain.sessions: update ordering, quota slices and settlement splits."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from meterline.kernel.errors import InvalidArgument, UsageWentBackwards
from meterline.kernel.media import ServiceType, Unit
from meterline.kernel.pricing import RateTerms, price_units
from service_manager.domain.quota import (
    Grant,
    estimated_seconds_left,
    needs_next_slice,
    next_grant,
    split_capture,
)
from service_manager.domain.sessions import (
    MAX_UNITS,
    TERMINATION_MESSAGES,
    Session,
    SessionRate,
    SessionStatus,
    TerminationReason,
    UpdateKind,
    classify_update,
)

pytestmark = pytest.mark.unit

STARTED = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)


def rate(
    price: int = 1_000,
    increment: int = 1,
    minimum: int = 0,
    setup: int = 0,
    unit: Unit = Unit.SECOND,
) -> SessionRate:
    return SessionRate(
        tariff_id="trf_1",
        prefix="+44",
        unit=unit,
        terms=RateTerms(
            price_per_unit_micros=price,
            increment_units=increment,
            minimum_units=minimum,
            setup_fee_micros=setup,
        ),
        currency="EUR",
    )


def session(
    *,
    last_sequence: int = 0,
    used_units: int = 0,
    granted_units: int = 0,
    session_rate: SessionRate | None = None,
) -> Session:
    session_rate = session_rate or rate()
    return Session(
        session_id="ses_1",
        account_id="acc_1",
        service_type=ServiceType.VOICE,
        endpoint="+442079460000",
        application_id="",
        gateway_id="gw-1",
        rate=session_rate,
        status=SessionStatus.ACTIVE,
        started_at=STARTED,
        last_update_at=STARTED + timedelta(seconds=30),
        last_sequence=last_sequence,
        used_units=used_units,
        granted_units=granted_units,
        held_micros=price_units(session_rate.terms, granted_units).amount_micros,
        client_used_units=used_units,  # a session only the device has reported on
    )


# -- classify_update ------------------------------------------------------------------------

SEEN_3 = session(last_sequence=3, used_units=100, granted_units=120)


@pytest.mark.parametrize(
    ("current", "sequence", "used", "kind"),
    [
        (SEEN_3, 3, 100, UpdateKind.DUPLICATE),  # the same update again
        (SEEN_3, 3, 110, UpdateKind.DUPLICATE),
        (SEEN_3, 2, 50, UpdateKind.DUPLICATE),  # older, with fewer units: still no error
        (SEEN_3, 1, 500, UpdateKind.DUPLICATE),
        (SEEN_3, 4, 100, UpdateKind.APPLY),  # no new usage is fine
        (SEEN_3, 4, 150, UpdateKind.APPLY),
        (SEEN_3, 10, 150, UpdateKind.APPLY),  # gaps in the sequence are fine
        (session(), 1, 0, UpdateKind.APPLY),
        (session(), 1, MAX_UNITS, UpdateKind.APPLY),
    ],
)
def test_classify_update(current: Session, sequence: int, used: int, kind: UpdateKind) -> None:
    assert classify_update(current, sequence, used) is kind


def test_a_newer_update_with_fewer_units_went_backwards() -> None:
    with pytest.raises(UsageWentBackwards) as caught:
        classify_update(SEEN_3, 4, 99)
    assert isinstance(caught.value, InvalidArgument)
    assert caught.value.reason == "USAGE_WENT_BACKWARDS"
    assert "99 was given after 100 was reported" in caught.value.message


def test_the_device_is_held_to_its_own_counter_not_the_gateways() -> None:
    # The gateway reported 150; the device's own counter is at 100: 120 is not backwards.
    reported_by_both = replace(SEEN_3, used_units=150, gateway_used_units=150)
    assert classify_update(reported_by_both, 4, 120) is UpdateKind.APPLY
    with pytest.raises(UsageWentBackwards):
        classify_update(reported_by_both, 4, 99)


@pytest.mark.parametrize(
    ("sequence", "used", "message"),
    [
        (0, 10, "sequence must start at 1"),
        (-1, 10, "sequence must start at 1"),
        (4, -1, "used_units cannot be negative"),
        (3, -1, "used_units cannot be negative"),  # refused even as a duplicate
        (4, MAX_UNITS + 1, "used_units cannot exceed"),
    ],
)
def test_classify_update_refuses_bad_input(sequence: int, used: int, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message) as caught:
        classify_update(SEEN_3, sequence, used)
    assert not isinstance(caught.value, UsageWentBackwards)


# -- needs_next_slice -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("granted", "used", "slice_units", "needed"),
    [
        (60, 0, 60, False),
        (60, 47, 60, False),  # 13 left > 20% of 60
        (60, 48, 60, True),  # 12 left = 20% of 60
        (60, 60, 60, True),
        (60, 75, 60, True),  # beyond the grant
        (0, 0, 60, True),  # nothing granted yet
        (120, 60, 60, False),
        (120, 108, 60, True),
        (1_000_000, 800_000, 1_000_000, True),
        (1_000_000, 799_999, 1_000_000, False),
    ],
)
def test_needs_next_slice(granted: int, used: int, slice_units: int, needed: bool) -> None:
    assert needs_next_slice(session(granted_units=granted), used, slice_units) is needed


# -- next_grant -----------------------------------------------------------------------------

RICH = 10**12


@pytest.mark.parametrize(
    ("session_rate", "granted", "used", "slice_units", "budget", "grant"),
    [
        # First slice, at 0.001 a second.
        (rate(), 0, 0, 60, RICH, Grant(60, 60_000)),
        (rate(), 0, 0, 60, 60_000, Grant(60, 60_000)),
        # The budget is short: a smaller slice.
        (rate(), 0, 0, 60, 30_500, Grant(30, 30_000)),
        # Later slices are priced beyond what is already granted.
        (rate(), 60, 50, 60, RICH, Grant(120, 60_000)),
        (rate(), 60, 50, 60, 10_000, Grant(70, 10_000)),
        # Usage beyond the grant: cover it plus a slice.
        (rate(), 60, 80, 60, RICH, Grant(140, 80_000)),
        # 60/60: whole increments only.
        (rate(price=100, increment=60), 0, 0, 60, 6_000, Grant(60, 6_000)),
        (rate(price=100, increment=60), 0, 0, 90, RICH, Grant(60, 6_000)),
        (rate(price=100, increment=60), 0, 0, 180, 12_500, Grant(120, 12_000)),
        # The setup fee is in the first slice only.
        (rate(setup=50_000), 0, 0, 60, RICH, Grant(60, 110_000)),
        (rate(setup=50_000), 60, 50, 60, RICH, Grant(120, 60_000)),
        # A minimum makes the first slice cost at least the minimum...
        (rate(minimum=60), 0, 0, 10, RICH, Grant(10, 60_000)),
        # ...and the slices inside it cost nothing more.
        (rate(minimum=60), 10, 9, 10, 0, Grant(20, 0)),
        # A free tariff: the grant grows with no hold, even with no budget.
        (rate(price=0), 0, 0, 60, 0, Grant(60, 0)),
        (rate(price=0), 60, 55, 60, -1_000, Grant(120, 0)),
    ],
)
def test_next_grant(
    session_rate: SessionRate,
    granted: int,
    used: int,
    slice_units: int,
    budget: int,
    grant: Grant,
) -> None:
    result = next_grant(session_rate, granted, used, slice_units, budget)
    assert result is not None
    assert result == grant
    terms = session_rate.terms
    assert result.amount_micros == (
        price_units(terms, result.granted_units).amount_micros
        - price_units(terms, granted).amount_micros
    )
    assert result.amount_micros <= max(budget, 0)


@pytest.mark.parametrize(
    ("session_rate", "granted", "budget"),
    [
        (rate(), 0, 999),  # less than one second
        (rate(), 0, 0),
        (rate(), 0, -5_000),  # a balance below zero buys nothing
        (rate(), 60, 999),
        (rate(price=100, increment=60), 0, 5_999),  # less than one increment
        (rate(setup=50_000), 0, 50_999),  # the fee and one second do not fit
        (rate(minimum=60), 0, 59_999),  # the minimum does not fit
    ],
)
def test_no_grant_when_not_one_more_increment_is_affordable(
    session_rate: SessionRate, granted: int, budget: int
) -> None:
    assert next_grant(session_rate, granted, granted, 60, budget) is None


# -- split_capture --------------------------------------------------------------------------

TWO_HOLDS = [("hld_1", 100), ("hld_2", 100)]


@pytest.mark.parametrize(
    ("charge", "holds", "plan"),
    [
        (150, TWO_HOLDS, [("hld_1", 100), ("hld_2", 50)]),
        (200, TWO_HOLDS, [("hld_1", 100), ("hld_2", 100)]),
        (50, TWO_HOLDS, [("hld_1", 50), ("hld_2", 0)]),
        (100, TWO_HOLDS, [("hld_1", 100), ("hld_2", 0)]),
        (0, TWO_HOLDS, [("hld_1", 0), ("hld_2", 0)]),
        (0, [], []),
        (7, [("a", 3), ("b", 0), ("c", 4), ("d", 9)], [("a", 3), ("b", 0), ("c", 4), ("d", 0)]),
    ],
)
def test_split_capture_takes_the_exact_charge_oldest_first(
    charge: int, holds: list[tuple[str, int]], plan: list[tuple[str, int]]
) -> None:
    result = split_capture(charge, holds)
    assert result == plan
    assert sum(take for _, take in result) == charge
    assert all(0 <= take <= amount for (_, take), (_, amount) in zip(result, holds, strict=True))


@pytest.mark.parametrize(
    ("charge", "holds", "short"), [(201, TWO_HOLDS, 1), (1, [], 1), (500, [("hld_1", 100)], 400)]
)
def test_split_capture_refuses_holds_short_of_the_charge(
    charge: int, holds: list[tuple[str, int]], short: int
) -> None:
    with pytest.raises(AssertionError, match=f"holds fall {short} micro-units short"):
        split_capture(charge, holds)


# -- estimates and charges ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("session_rate", "granted", "used", "available", "seconds"),
    [
        (rate(), 60, 20, 10_000, 50),  # 40 granted + 10 affordable
        (rate(), 60, 20, 10_999, 50),
        (rate(), 60, 20, 0, 40),
        (rate(), 60, 20, -5_000, 40),  # a negative balance buys nothing
        (rate(), 60, 90, 3_000, 3),  # used beyond the grant: nothing granted left
        (rate(price=100), 0, 0, 6_000, 60),
        (rate(unit=Unit.BYTE), 60, 20, 10_000, None),
        (rate(unit=Unit.MESSAGE), 60, 20, 10_000, None),
        (rate(price=0), 60, 20, 10_000, None),  # free: no limit to estimate
    ],
)
def test_estimated_seconds_left(
    session_rate: SessionRate, granted: int, used: int, available: int, seconds: int | None
) -> None:
    current = session(granted_units=granted, used_units=used, session_rate=session_rate)
    assert estimated_seconds_left(current, available) == seconds


@pytest.mark.parametrize(
    ("session_rate", "granted", "used", "billable", "charged"),
    [
        (rate(), 60, 0, 0, 0),
        (rate(), 60, 30, 30, 30_000),
        (rate(), 60, 60, 60, 60_000),
        (rate(), 60, 100, 60, 60_000),  # capped at the grant
        (rate(setup=50_000), 60, 1, 1, 51_000),
        (rate(price=100, increment=60), 120, 61, 61, 12_000),
        (rate(price=100, increment=60), 60, 61, 60, 6_000),  # capped before rounding up
        (rate(minimum=60), 120, 5, 5, 60_000),
    ],
)
def test_charged_micros_prices_usage_capped_at_the_grant(
    session_rate: SessionRate, granted: int, used: int, billable: int, charged: int
) -> None:
    current = session(granted_units=granted, used_units=used, session_rate=session_rate)
    assert current.billable_units == billable
    assert current.charged_micros == charged
    assert current.charged_micros <= current.held_micros


def test_quota_validity_runs_from_the_last_update() -> None:
    current = session()
    assert current.quota_valid_until(timedelta(seconds=90)) == STARTED + timedelta(seconds=120)
    later = replace(current, last_update_at=STARTED + timedelta(minutes=5))
    assert later.quota_valid_until(timedelta(seconds=90)) == STARTED + timedelta(seconds=390)


def test_every_termination_reason_has_a_message() -> None:
    assert set(TERMINATION_MESSAGES) == set(TerminationReason)
    assert all(message.endswith(".") for message in TERMINATION_MESSAGES.values())
