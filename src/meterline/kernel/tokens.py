"""Short-lived signed bearer tokens (JWT, HS256) that every service verifies locally."""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import jwt

from meterline.kernel.errors import Unauthenticated
from meterline.kernel.principals import Principal, PrincipalKind

_ALGORITHM = "HS256"
_ISSUER = "meterline"
MAX_VERIFIED_TOKENS = 10_000


@dataclass(frozen=True, slots=True)
class IssuedToken:
    token: str
    expires_at: datetime


class TokenSigner:
    """Signs and verifies tokens with the deployment's shared secret."""

    def __init__(self, secret: str, ttl: timedelta = timedelta(minutes=15)) -> None:
        if len(secret) < 32:
            raise ValueError("the token secret must be at least 32 characters")
        self._secret = secret
        self._ttl = ttl
        # Tokens already verified, with their expiry: a call on a busy stream or a
        # gateway's rating loop then costs a dict lookup, not an HMAC and a JSON parse.
        self._verified: dict[str, tuple[Principal, float]] = {}

    def issue(self, principal: Principal, ttl: timedelta | None = None) -> IssuedToken:
        now = datetime.now(UTC)
        expires_at = now + (self._ttl if ttl is None else ttl)
        claims = {
            "iss": _ISSUER,
            "sub": principal.subject,
            "kind": principal.kind.value,
            "acct": principal.account_id,
            "gw": principal.gateway_id,
            "iat": int(now.timestamp()),
            "exp": int(expires_at.timestamp()),
            "jti": secrets.token_hex(8),
        }
        return IssuedToken(jwt.encode(claims, self._secret, algorithm=_ALGORITHM), expires_at)

    def verify(self, token: str) -> Principal:
        return self.verify_until(token)[0]

    def verify_until(self, token: str) -> tuple[Principal, float]:
        """The token's principal and when it expires (a Unix time). Session tickets are
        not bearer tokens (they are EdDSA-signed, see kernel/tickets.py): refused."""
        known = self._verified.get(token)
        if known is not None and known[1] > time.time():
            return known
        principal, expires = self._decode(token)
        if len(self._verified) >= MAX_VERIFIED_TOKENS:
            self._verified.clear()
        self._verified[token] = (principal, expires)
        return principal, expires

    def _decode(self, token: str) -> tuple[Principal, float]:
        try:
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=[_ALGORITHM],
                issuer=_ISSUER,
                options={"require": ["exp", "sub", "iss"]},
            )
        except jwt.ExpiredSignatureError as exc:
            raise Unauthenticated(
                "The access token has expired; get a new one with IssueToken.",
                reason="TOKEN_EXPIRED",
            ) from exc
        except jwt.InvalidTokenError as exc:
            raise Unauthenticated(
                "The access token is not valid (bad signature or format); get a new one "
                "with IssueToken.",
                reason="TOKEN_INVALID",
            ) from exc
        try:
            kind = PrincipalKind(claims["kind"])
        except (KeyError, ValueError) as exc:
            raise Unauthenticated("The access token names no known kind of caller.") from exc
        principal = Principal(
            kind=kind,
            subject=str(claims["sub"]),
            account_id=str(claims.get("acct", "")),
            gateway_id=str(claims.get("gw", "")),
        )
        return principal, float(claims["exp"])

    def verify_bearer(self, authorization: str | None) -> Principal:
        """Verify an `authorization` metadata value of the form `Bearer <token>`."""
        return self.verify_bearer_until(authorization)[0]

    def verify_bearer_until(self, authorization: str | None) -> tuple[Principal, float]:
        """`verify_bearer`, and when the token expires (a Unix time)."""
        if not authorization:
            raise Unauthenticated(
                "This call needs an access token: send 'authorization: Bearer <token>' "
                "metadata (IssueToken gives one)."
            )
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthenticated("The authorization metadata must read 'Bearer <token>'.")
        return self.verify_until(token.strip())
