"""Signed-in browsers, kept on the server: the browser holds only a random session id in
a Secure, HttpOnly, SameSite=Strict cookie; the account, the access token (and the
credential to renew it) and the session's CSRF token stay here, in this process's memory.
A restart of the page signs everyone out; so does the session's end (METERLINE_WEB_SESSION_HOURS).
"""

from __future__ import annotations

import hmac
import secrets
import time
from dataclasses import dataclass, field

COOKIE = "meterline_session"
"""The cookie that carries the session id."""
SIGN_IN_COOKIE = "meterline_sign_in"
"""Before sign-in: the random value the sign-in form must echo (double-submit CSRF)."""
RENEW_BEFORE_SECONDS = 60.0
"""A token that expires sooner than this is renewed before a call."""


def same_text(given: str, expected: str) -> bool:
    """Whether `given` (the client's: a form field, a cookie, the URL) is `expected`, in
    constant time. As UTF-8 bytes: hmac.compare_digest refuses non-ASCII str with a
    TypeError, which would be a 500 for any such input."""
    return hmac.compare_digest(
        given.encode("utf-8", "surrogatepass"), expected.encode("utf-8", "surrogatepass")
    )


@dataclass
class PortalSession:
    """One signed-in browser."""

    session_id: str = field(repr=False)
    account_id: str
    client_id: str
    secret: str = field(repr=False)
    """The portal credential's secret, to renew the token; never sent to the browser."""
    token: str = field(repr=False)
    token_expires_at: float
    """time.time() at which `token` stops being accepted."""
    csrf_token: str = field(repr=False)
    ends_at: float
    """time.monotonic() at which this session ends."""

    def csrf_matches(self, given: str) -> bool:
        return bool(given) and same_text(given, self.csrf_token)

    @property
    def token_is_fresh(self) -> bool:
        return self.token_expires_at - time.time() > RENEW_BEFORE_SECONDS


class PortalSessions:
    """The signed-in sessions of this process, by id."""

    def __init__(self, lifetime_seconds: float) -> None:
        self._lifetime = lifetime_seconds
        self._sessions: dict[str, PortalSession] = {}

    def create(
        self, account_id: str, client_id: str, secret: str, token: str, token_expires_at: float
    ) -> PortalSession:
        self._prune()
        session = PortalSession(
            session_id=secrets.token_urlsafe(32),
            account_id=account_id,
            client_id=client_id,
            secret=secret,
            token=token,
            token_expires_at=token_expires_at,
            csrf_token=secrets.token_urlsafe(32),
            ends_at=time.monotonic() + self._lifetime,
        )
        self._sessions[session.session_id] = session
        return session

    def get(self, session_id: str | None) -> PortalSession | None:
        """The live session of a cookie's id; None for an unknown (forged) or ended one."""
        if not session_id:
            return None
        session = self._sessions.get(session_id)
        if session is None:
            return None
        if time.monotonic() >= session.ends_at:
            del self._sessions[session_id]
            return None
        return session

    def end(self, session_id: str) -> None:
        self._sessions.pop(session_id, None)

    def _prune(self) -> None:
        now = time.monotonic()
        for session_id in [key for key, s in self._sessions.items() if now >= s.ends_at]:
            del self._sessions[session_id]

    def __len__(self) -> int:
        return len(self._sessions)
