"""Credentials: who may get a token, and what that token says about them."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from meterline.kernel.errors import InvalidArgument
from meterline.kernel.principals import Principal, PrincipalKind

MAX_GATEWAY_NAME_LENGTH = 100


@dataclass(frozen=True, slots=True)
class Credential:
    client_id: str
    kind: PrincipalKind
    account_id: str = ""
    gateway_name: str = ""

    def principal(self) -> Principal:
        return Principal(
            kind=self.kind,
            subject=self.client_id,
            account_id=self.account_id,
            gateway_id=self.gateway_name,
        )


def new_client_id(kind: PrincipalKind) -> str:
    return f"{kind.value[:3]}_{secrets.token_hex(10)}"


def new_secret() -> str:
    return secrets.token_urlsafe(32)


def hash_secret(secret: str) -> str:
    # Secrets are 256 random bits, so a plain SHA-256 cannot be brute-forced; a slow
    # password hash would only slow every login down.
    return hashlib.sha256(secret.encode()).hexdigest()


def secret_matches(secret: str, stored_hash: str) -> bool:
    return hmac.compare_digest(hash_secret(secret), stored_hash)


def validate_new_credential(kind: PrincipalKind, account_id: str, gateway_name: str) -> None:
    if kind is PrincipalKind.SERVICE:
        raise InvalidArgument("Service tokens are not issued through credentials.")
    if kind is PrincipalKind.DEVICE and not account_id:
        raise InvalidArgument("A device credential must name the account it is bound to.")
    if kind is not PrincipalKind.DEVICE and account_id:
        raise InvalidArgument("Only a device credential is bound to an account.")
    if kind is PrincipalKind.GATEWAY:
        if not gateway_name.strip():
            raise InvalidArgument("A gateway credential must name the gateway.")
        if len(gateway_name) > MAX_GATEWAY_NAME_LENGTH:
            raise InvalidArgument(
                f"gateway_name is longer than {MAX_GATEWAY_NAME_LENGTH} characters."
            )
    elif gateway_name:
        raise InvalidArgument("Only a gateway credential carries a gateway name.")
