"""Session tickets: the token a start hands to the client for its gateway
(`StartServiceResponse.gateway.token`). A JWT signed with Ed25519 (alg EdDSA), so a
gateway checks it offline with the public key alone (`GetSessionTicketKey`,
`meterline gateway key`) and never holds a secret that could mint tokens.

The key is the file METERLINE_SESSION_TICKET_KEY_FILE names, or else one derived from the
installation's token secret (HKDF-SHA256): every service manager that shares the token
secret signs with the same key, with nothing more to distribute, and whoever could forge
a ticket with it could already mint operator tokens with the secret."""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from meterline.kernel.config import ConfigError, Settings, token_secret

ALGORITHM = "EdDSA"
ISSUER = "meterline"
TICKET_KIND = "session-ticket"
DEFAULT_TTL = timedelta(hours=24)
_DERIVATION_INFO = b"meterline session tickets v1"


def derived_key(secret: str) -> Ed25519PrivateKey:
    """The ticket key of an installation without a key file: from its token secret."""
    seed = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_DERIVATION_INFO).derive(
        secret.encode()
    )
    return Ed25519PrivateKey.from_private_bytes(seed)


def read_key_file(path: Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except OSError as error:
        raise ConfigError(
            f"METERLINE_SESSION_TICKET_KEY_FILE={path} cannot be read: {error}"
        ) from error
    except (ValueError, TypeError) as error:
        raise ConfigError(
            f"METERLINE_SESSION_TICKET_KEY_FILE={path} is not an unencrypted PEM private key "
            f"({error}); make one with `openssl genpkey -algorithm ed25519 -out {path}`"
        ) from error
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(
            f"METERLINE_SESSION_TICKET_KEY_FILE={path} is not an Ed25519 key; session "
            "tickets need one"
        )
    return key


def ticket_key(settings: Settings) -> Ed25519PrivateKey:
    """The installation's ticket signing key (see the module's docstring)."""
    if settings.gateways.ticket_key_file is not None:
        return read_key_file(settings.gateways.ticket_key_file)
    return derived_key(token_secret(settings))


def _raw(public: Ed25519PublicKey) -> bytes:
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


@dataclass(frozen=True, slots=True)
class PublicTicketKey:
    """What a gateway needs to verify tickets."""

    key_id: str
    """The first 16 hex digits of the SHA-256 of the raw public key (the tickets' kid)."""
    raw_base64: str
    pem: str
    jwk: str

    @staticmethod
    def of(public: Ed25519PublicKey) -> PublicTicketKey:
        raw = _raw(public)
        key_id = hashlib.sha256(raw).hexdigest()[:16]
        jwk = {
            "kty": "OKP",
            "crv": "Ed25519",
            "x": base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii"),
            "kid": key_id,
            "alg": ALGORITHM,
            "use": "sig",
        }
        pem = public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ).decode("ascii")
        return PublicTicketKey(
            key_id=key_id,
            raw_base64=base64.b64encode(raw).decode("ascii"),
            pem=pem,
            jwk=json.dumps(jwk, separators=(",", ":")),
        )


class TicketSigner:
    """Issues session tickets with the installation's Ed25519 key."""

    def __init__(self, key: Ed25519PrivateKey, ttl: timedelta = DEFAULT_TTL) -> None:
        self._key = key
        self._ttl = ttl
        self.public = PublicTicketKey.of(key.public_key())

    def issue(
        self,
        session_id: str,
        gateway_id: str,
        service_type: str = "",
        endpoint: str = "",
        now: datetime | None = None,
    ) -> str:
        """A ticket for the session, for its gateway (the audience)."""
        now = now or datetime.now(UTC)
        claims: dict[str, Any] = {
            "iss": ISSUER,
            "sub": session_id,
            "aud": gateway_id,
            "kind": TICKET_KIND,
            "svc": service_type,
            "ep": endpoint,
            "iat": int(now.timestamp()),
            "exp": int((now + self._ttl).timestamp()),
        }
        return jwt.encode(
            claims, self._key, algorithm=ALGORITHM, headers={"kid": self.public.key_id}
        )


def verify_ticket(ticket: str, public_key_pem: str, gateway_id: str) -> dict[str, Any]:
    """A gateway's offline check, with the public key alone: the signature, the issuer,
    the audience (this gateway), the expiry and the kind. Raises jwt.InvalidTokenError."""
    claims: dict[str, Any] = jwt.decode(
        ticket,
        public_key_pem,
        algorithms=[ALGORITHM],
        audience=gateway_id,
        issuer=ISSUER,
        options={"require": ["exp", "sub", "aud", "iss"]},
    )
    if claims.get("kind") != TICKET_KIND:
        raise jwt.InvalidTokenError("not a session ticket")
    return claims
