"""The state behind `meterline client watch`, without a terminal: SDK values in, the screen
(as text) and the JSON lines out, the clock passed in."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from rich.console import Console, Group
from rich.text import Text

from client_sdk import (
    AccountEvent,
    ActiveService,
    Balance,
    Rate,
    ServiceType,
    TerminationReason,
    Unit,
)
from meterline.cli.live_view import ENDED_SHOWN, NOTICES_SHOWN, LiveView, clock, event_json

pytestmark = pytest.mark.unit

T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
RATE = Rate("t1", "+44", Unit.SECOND, 10_000, 1, 0, 0, "EUR")


def view() -> LiveView:
    return LiveView.of(Balance("acct_1", "EUR", 5_000_000, 4_900_000))


def event(
    seconds: float, charged: int, used: int, session: str = "ses_1", **more: object
) -> AccountEvent:
    return AccountEvent(
        account_id="acct_1",
        session_id=session,
        available_micros=more.pop("available", 4_000_000),  # type: ignore[arg-type]
        charged_micros=charged,
        used_units=used,
        currency="EUR",
        time=T0 + timedelta(seconds=seconds),
        **more,  # type: ignore[arg-type]
    )


def service(session: str = "ses_1", started: float = 0) -> ActiveService:
    return ActiveService(
        session, ServiceType.VOICE, "+442071234567", RATE, T0 + timedelta(seconds=started), 0
    )


def screen(state: LiveView, seconds: float) -> str:
    console = Console(record=True, width=140, color_system=None)
    console.print(state.render(T0 + timedelta(seconds=seconds)))
    return console.export_text()


def test_a_running_session_shows_its_charge_usage_duration_and_time_left() -> None:
    state = view()
    state.add_services([service()])
    state.apply(event(5, 188_000, 5, time_left=timedelta(minutes=8)))
    text = screen(state, 7)
    assert "balance 5.00 EUR" in text
    assert "available 4.00 EUR" in text  # from the event, not the snapshot
    row = next(line for line in text.splitlines() if "+442071234567" in line)
    # babel's format: the currency's precision, rounded half up, for display.
    assert row.split() == ["VOICE", "+442071234567", "0:00:07", "5", "s", "0.19", "EUR",
                           "0:07:58", "running"]  # fmt: skip
    assert "notices" in text and "none" in text
    assert "r redeem a voucher" in text


def test_charges_and_usage_never_go_back_and_an_ended_session_keeps_its_end() -> None:
    state = view()
    state.apply(event(1, 30_000, 3))
    state.apply(event(2, 20_000, 2))  # a late, older event
    line = state.sessions["ses_1"]
    assert (line.charged_micros, line.used_units) == (30_000, 3)
    state.apply(
        event(
            3, 40_000, 4, ended=True, termination_reason=TerminationReason.BALANCE_EXHAUSTED,
            message="The balance is used up; fund the account to go on.",
        )
    )  # fmt: skip
    state.apply(event(4, 90_000, 9))  # after the end: changes nothing
    assert (line.charged_micros, line.ended) == (40_000, True)
    text = screen(state, 60)
    assert "ended: balance used up" in text
    assert (
        "ses_1 ended (balance used up), charged 0.04 EUR. The balance is used up; fund the "
        "account to go on." in text
    )
    assert clock(line.duration(T0 + timedelta(seconds=60))) == "0:00:02"  # frozen at its end
    assert state.unknown_sessions() == set()


def test_notices_say_low_balance_and_final_units_once_each() -> None:
    state = view()
    state.apply(event(1, 10_000, 1, low_balance=True, time_left=timedelta(seconds=90)))
    state.apply(event(2, 20_000, 2, low_balance=True))
    state.apply(event(3, 30_000, 3, low_balance=True, final_units=True, message="Last units."))
    state.apply(event(4, 40_000, 4, low_balance=True, final_units=True))
    texts = [notice.text for notice in state.notices]
    assert texts == [
        "low balance: 4.00 EUR available, about 0:01:30 left",
        "final units for ses_1: Last units.",
    ]
    assert state.sessions["ses_1"].status() == "final units"
    rendered = state.render(T0)
    assert isinstance(rendered, Group) and isinstance(header := rendered.renderables[0], Text)
    assert any(span.style == "bold red" for span in header.spans)  # the available amount


def test_the_notices_and_the_ended_sessions_shown_are_bounded() -> None:
    state = view()
    for n in range(ENDED_SHOWN + 2):
        state.apply(
            event(n, 1, 1, session=f"s{n}", ended=True,
                  termination_reason=TerminationReason.CLIENT_STOP)
        )  # fmt: skip
    assert list(state.sessions) == [f"s{n}" for n in range(2, ENDED_SHOWN + 2)]
    for n in range(NOTICES_SHOWN + 3):
        state.note(T0, f"n{n}")
    assert [n.text for n in state.notices] == [f"n{n}" for n in range(3, NOTICES_SHOWN + 3)]


def test_a_session_first_seen_in_an_event_asks_for_its_details() -> None:
    state = view()
    state.apply(event(10, 10_000, 1, session="ses_9"))
    assert state.unknown_sessions() == {"ses_9"}
    assert "ses_9" in screen(state, 10)
    state.add_services([service("ses_9", started=4)])
    assert state.unknown_sessions() == set()
    assert "0:00:08" in screen(state, 12)  # the duration counts from the real start


def test_the_voucher_prompt_takes_a_code() -> None:
    state = view()
    state.voucher = ""
    for key in "7kq2-m9xdX":
        assert state.key(key) is None
    state.key("\x7f")  # backspace
    assert "voucher code: 7kq2-m9xd_" in screen(state, 0)
    assert state.key("\r") == "7kq2-m9xd"
    assert state.voucher is None
    state.voucher = ""
    assert state.key("\r") is None  # nothing typed: nothing to redeem
    state.voucher = "abc"
    state.key("\x1b")
    assert state.voucher is None


def test_json_lines_have_stable_keys() -> None:
    state = view()
    state.add_services([service()])
    snapshot = state.snapshot_json(T0)
    assert snapshot["type"] == "snapshot"
    assert (snapshot["balance_micros"], snapshot["balance"]) == (5_000_000, "5.00")
    assert snapshot["sessions"][0]["session_id"] == "ses_1"
    line = event_json(
        event(3, 42_000, 3, time_left=timedelta(seconds=61), ended=True,
              termination_reason=TerminationReason.CLIENT_STOP, message="Stopped.")
    )  # fmt: skip
    assert line == {
        "type": "event",
        "time": "2026-12-01T09:00:03+00:00",
        "account_id": "acct_1",
        "session_id": "ses_1",
        "currency": "EUR",
        "charged_micros": 42_000,
        "charged": "0.042",
        "available_micros": 4_000_000,
        "available": "4.00",
        "used_units": 3,
        "time_left_seconds": 61,
        "low_balance": False,
        "final_units": False,
        "ended": True,
        "reason": "CLIENT_STOP",
        "message": "Stopped.",
    }
