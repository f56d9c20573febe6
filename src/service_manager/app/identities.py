"""Subscriber identities: operators map them to accounts; a start by identity resolves
one here, in the service database, so it adds no round trip to the billing manager."""

from __future__ import annotations

from meterline.kernel.errors import AlreadyExists, InvalidArgument, NotFound
from meterline.kernel.principals import Principal, PrincipalKind
from service_manager.app.ports import Identities
from service_manager.domain.identities import AccountIdentity, IdentityKind, normalized

MAX_ACCOUNT_ID_LENGTH = 64


class IdentityAdmin:
    def __init__(self, identities: Identities) -> None:
        self._identities = identities

    async def add(
        self, principal: Principal, account_id: str, kind: IdentityKind, value: str
    ) -> AccountIdentity:
        principal.require_kind(PrincipalKind.OPERATOR, action="add subscriber identities")
        _check_account_id(account_id)
        identity = normalized(kind, value)
        stored = await self._identities.add(account_id, identity)
        if stored.account_id != account_id:
            raise AlreadyExists(
                f"The identity {identity} already names another account; remove it there first.",
                reason="IDENTITY_TAKEN",
            )
        return stored

    async def remove(
        self, principal: Principal, account_id: str, kind: IdentityKind, value: str
    ) -> bool:
        principal.require_kind(PrincipalKind.OPERATOR, action="remove subscriber identities")
        _check_account_id(account_id)
        return await self._identities.remove(account_id, normalized(kind, value))

    async def listed(self, principal: Principal, account_id: str) -> list[AccountIdentity]:
        principal.require_kind(PrincipalKind.OPERATOR, action="list subscriber identities")
        _check_account_id(account_id)
        return await self._identities.of_account(account_id)

    async def account_of(self, kind: IdentityKind, value: str) -> str:
        """The account an identity names, or NOT_FOUND."""
        identity = normalized(kind, value)
        account_id = await self._identities.resolve(identity)
        if account_id is None:
            raise NotFound(f"No account has the identity {identity}.", reason="IDENTITY_NOT_FOUND")
        return account_id


def _check_account_id(account_id: str) -> None:
    if not account_id:
        raise InvalidArgument("account_id is missing.")
    if len(account_id) > MAX_ACCOUNT_ID_LENGTH:
        raise InvalidArgument(f"account_id is longer than {MAX_ACCOUNT_ID_LENGTH} characters.")
