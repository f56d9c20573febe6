"""Issuing credentials and exchanging them for signed tokens."""

from __future__ import annotations

import logging

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from billing_manager.domain import credentials as rules
from billing_manager.domain.credentials import Credential
from billing_manager.domain.ledger import AccountStatus
from billing_manager.storage.credential_store import CredentialStore
from billing_manager.storage.ledger_store import LedgerStore
from meterline.kernel.db import run_in_transaction, run_on_connection
from meterline.kernel.errors import FailedPrecondition, NotFound, Unauthenticated
from meterline.kernel.principals import PrincipalKind
from meterline.kernel.tokens import IssuedToken, TokenSigner

log = logging.getLogger(__name__)

_WRONG = "The client id or secret is wrong."


class Authentication:
    def __init__(self, engine: AsyncEngine, signer: TokenSigner) -> None:
        self._engine = engine
        self._signer = signer
        self._credentials = CredentialStore()
        self._accounts = LedgerStore()

    async def create_credential(
        self, kind: PrincipalKind, account_id: str, gateway_name: str
    ) -> tuple[Credential, str]:
        """A new credential and its secret (shown once, stored only as a hash)."""
        rules.validate_new_credential(kind, account_id, gateway_name)
        credential = Credential(
            client_id=rules.new_client_id(kind),
            kind=kind,
            account_id=account_id,
            gateway_name=gateway_name.strip(),
        )
        secret = rules.new_secret()

        async def work(conn: AsyncConnection) -> None:
            if account_id and await self._accounts.account(conn, account_id) is None:
                raise NotFound(f"There is no account {account_id!r}.", reason="ACCOUNT_NOT_FOUND")
            await self._credentials.insert(conn, credential, rules.hash_secret(secret))

        # A repeat inserts the same client id: after a drop at COMMIT it would fail on the
        # primary key instead of answering, so it is not repeated then.
        await run_in_transaction(self._engine, work, repeatable=False)
        log.info("credential %s created for a %s", credential.client_id, kind)
        return credential, secret

    async def issue_token(self, client_id: str, secret: str) -> tuple[Credential, IssuedToken]:
        if not client_id or not secret:
            raise Unauthenticated("Give both client_id and client_secret.")

        async def read(conn: AsyncConnection) -> Credential:
            found = await self._credentials.find(conn, client_id)
            if found is None or not rules.secret_matches(secret, found[1]):
                raise Unauthenticated(_WRONG, reason="BAD_CREDENTIALS")
            credential = found[0]
            if credential.account_id:
                account = await self._accounts.account(conn, credential.account_id)
                if account is None or account.status is not AccountStatus.ACTIVE:
                    raise FailedPrecondition(
                        "The account of this device is suspended; it cannot log in.",
                        reason="ACCOUNT_SUSPENDED",
                    )
            return credential

        credential = await run_on_connection(self._engine, read)
        return credential, self._signer.issue(credential.principal())
