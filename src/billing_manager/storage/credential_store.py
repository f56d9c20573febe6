"""Credentials in the account database (secrets only as hashes)."""

from __future__ import annotations

from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from billing_manager.domain.credentials import Credential
from billing_manager.storage.models import credentials
from meterline.kernel.principals import PrincipalKind


class CredentialStore:
    async def insert(self, conn: AsyncConnection, credential: Credential, secret_hash: str) -> None:
        await conn.execute(
            insert(credentials).values(
                client_id=credential.client_id,
                secret_sha256=secret_hash,
                kind=credential.kind.value,
                account_id=credential.account_id or None,
                gateway_name=credential.gateway_name or None,
            )
        )

    async def find(self, conn: AsyncConnection, client_id: str) -> tuple[Credential, str] | None:
        row = (
            await conn.execute(select(credentials).where(credentials.c.client_id == client_id))
        ).one_or_none()
        if row is None:
            return None
        credential = Credential(
            client_id=row.client_id,
            kind=PrincipalKind(row.kind),
            account_id=row.account_id or "",
            gateway_name=row.gateway_name or "",
        )
        return credential, row.secret_sha256
