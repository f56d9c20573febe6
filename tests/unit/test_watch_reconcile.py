"""The SDK's account watch after a reopening (client_sdk/watch.py), without a server: the
sessions it knew running that the fresh read no longer lists end with an event of its own
(reason unknown, the last charge seen, the available credit read afresh); and how
`meterline client watch` shows such an end."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from rich.console import Console

from client_sdk import (
    AccountEvent,
    ActiveService,
    Balance,
    Rate,
    ServersUnavailable,
    ServiceType,
    Unit,
)
from client_sdk.watch import ENDED_WHILE_AWAY, AccountReads, _Known, _reconcile
from meterline.cli.live_view import ENDED_UNHEARD, LiveView

pytestmark = pytest.mark.unit

T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
RATE = Rate("t1", "+44", Unit.SECOND, 10_000, 1, 0, 0, "EUR")


def running(session_id: str, used: int = 0) -> ActiveService:
    return ActiveService(session_id, ServiceType.VOICE, "+442071234567", RATE, T0, used)


def usage(session_id: str, charged: int, used: int, ended: bool = False) -> AccountEvent:
    return AccountEvent("acct_1", session_id, 900_000, charged, used, "EUR", T0, ended=ended)


class Account:
    """What the reads answer: the running services and the available credit, or a failure."""

    def __init__(self, *services: ActiveService, available: int = 700_000) -> None:
        self.services = list(services)
        self.available = available
        self.failing = False

    async def active_services(self) -> list[ActiveService]:
        if self.failing:
            raise ServersUnavailable("no server answered")
        return list(self.services)

    async def available_micros(self) -> int:
        return self.available

    def as_reads(self) -> AccountReads:
        return AccountReads(self.active_services, self.available_micros)


async def test_a_session_gone_after_a_reopening_ends_with_the_last_charge_seen() -> None:
    account = Account(running("ses_1"), running("ses_2"))
    known = _Known("acct_1", "EUR")
    assert await _reconcile(account.as_reads(), known, first=True) == []  # only learns
    known.saw(usage("ses_1", 50_000, 5))
    known.saw(usage("ses_3", 20_000, 2))
    known.saw(usage("ses_3", 30_000, 3, ended=True))  # heard of: nothing to make up
    account.services = [running("ses_2")]

    (ended,) = await _reconcile(account.as_reads(), known, first=False)

    assert (ended.session_id, ended.ended, ended.termination_reason) == ("ses_1", True, None)
    assert (ended.charged_micros, ended.used_units) == (50_000, 5)
    assert ended.available_micros == 700_000 and ended.message == ENDED_WHILE_AWAY
    assert set(known.running) == {"ses_2"}
    assert await _reconcile(account.as_reads(), known, first=False) == []  # once only


async def test_a_session_known_only_from_the_first_read_ends_too() -> None:
    account = Account(running("ses_1", used=7))
    known = _Known("acct_1", "EUR")
    await _reconcile(account.as_reads(), known, first=True)
    account.services = []
    (ended,) = await _reconcile(account.as_reads(), known, first=False)
    assert (ended.session_id, ended.used_units, ended.charged_micros) == ("ses_1", 7, 0)


async def test_reads_that_fail_end_nothing_and_the_next_reopening_reads_again() -> None:
    account = Account()
    known = _Known("acct_1", "EUR")
    known.saw(usage("ses_1", 10_000, 1))
    account.failing = True
    assert await _reconcile(account.as_reads(), known, first=False) == []
    assert set(known.running) == {"ses_1"}
    account.failing = False
    (ended,) = await _reconcile(account.as_reads(), known, first=False)
    assert ended.session_id == "ses_1"


def test_the_live_view_shows_an_end_it_did_not_hear_of() -> None:
    state = LiveView.of(Balance("acct_1", "EUR", 5_000_000, 4_900_000))
    state.apply(usage("ses_1", 50_000, 5))
    ended = AccountEvent(
        "acct_1", "ses_1", 4_950_000, 50_000, 5, "EUR", T0 + timedelta(seconds=9),
        ended=True, message=ENDED_WHILE_AWAY,
    )  # fmt: skip
    state.apply(ended)
    line = state.sessions["ses_1"]
    assert line.ended and line.status() == ENDED_UNHEARD
    (notice,) = state.notices
    assert notice.text == "ses_1 ended while disconnected (last charge seen 0.05 EUR)."
    console = Console(record=True, width=140, color_system=None)
    console.print(state.render(T0 + timedelta(seconds=10)))
    assert ENDED_UNHEARD in console.export_text()
