"""The web page's plain parts, without a browser: server-side sessions (unknown, forged and
ended ids are no session; CSRF tokens compare in full) and the service records' page
tokens."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest

from meterline.kernel.errors import InvalidArgument
from meterline.web.sessions import PortalSessions
from service_manager.storage.record_queries import RecordCursor, page_size

pytestmark = pytest.mark.unit


def _session(sessions: PortalSessions) -> str:
    return sessions.create(
        "acct_1", "cl_1", "the-secret-value", "the-token-value", time.time() + 900
    ).session_id


def test_only_an_id_the_page_gave_out_is_a_session() -> None:
    sessions = PortalSessions(lifetime_seconds=60)
    session_id = _session(sessions)
    found = sessions.get(session_id)
    assert found is not None and found.account_id == "acct_1"
    assert sessions.get(session_id + "x") is None
    assert sessions.get("") is None and sessions.get(None) is None
    assert len(session_id) >= 40, "the id must be long enough not to be guessed"
    shown = repr(found)
    assert "the-secret-value" not in shown and "the-token-value" not in shown
    assert session_id not in shown and found.csrf_token not in shown


def test_a_session_ends_with_its_lifetime_and_on_sign_out() -> None:
    short = PortalSessions(lifetime_seconds=0)
    assert short.get(_session(short)) is None
    sessions = PortalSessions(lifetime_seconds=60)
    session_id = _session(sessions)
    sessions.end(session_id)
    assert sessions.get(session_id) is None


def test_the_csrf_token_must_match_in_full() -> None:
    sessions = PortalSessions(lifetime_seconds=60)
    found = sessions.get(_session(sessions))
    assert found is not None
    assert found.csrf_matches(found.csrf_token)
    assert not found.csrf_matches("")
    assert not found.csrf_matches(found.csrf_token[:-1])
    # Non-ASCII text (a form field or URL is the client's) is no match, not a TypeError.
    assert not found.csrf_matches("é" * len(found.csrf_token))
    other = sessions.get(_session(sessions))
    assert other is not None and not other.csrf_matches(found.csrf_token)


def test_record_page_tokens_round_trip_and_bad_ones_are_refused() -> None:
    cursor = RecordCursor(datetime(2026, 12, 1, 14, 0, 0, 123456, tzinfo=UTC), "ses_1")
    assert RecordCursor.parse(cursor.token()) == cursor
    assert RecordCursor.parse("") is None
    for bad in ("%%%", "bm90LWEtdGltZXxzZXM", "MjAyNi0xMi0wMVQxNDowMDowMHxzZXM"):
        with pytest.raises(InvalidArgument, match="page_token is not one this service gave"):
            RecordCursor.parse(bad)
    assert page_size(0) == 50 and page_size(10_000) == 500 and page_size(7) == 7
    with pytest.raises(InvalidArgument, match="page_size cannot be negative"):
        page_size(-1)
