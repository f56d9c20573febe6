"""Reading an account's service records a page at a time, newest first (ListServiceRecords).

Read-only, over the service database's small shared pool (kernel/pg_pool.py). The query
is built from the `service_records` table object in models.py, so columns added there are
selected without a change here; a page continues after the last record of the one before
(keyset paging on ended_at, session_id: stable while new records are written, and served
by the account/ended_at index)."""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import select, tuple_
from sqlalchemy.dialects import postgresql

from meterline.kernel.errors import InvalidArgument
from meterline.kernel.pg_pool import Connection, PooledDatabase
from service_manager.domain.records import ServiceRecord
from service_manager.storage.models import service_records
from service_manager.storage.session_store import _record as record_from_row

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
_DIALECT = postgresql.psycopg.dialect()  # type: ignore[no-untyped-call]
_NOT_OURS = (
    "page_token is not one this service gave out; pass the next_page_token of the previous "
    "page, or none for the first page."
)


@dataclass(frozen=True, slots=True)
class RecordCursor:
    """Where a page ends: the last record's end time and session id."""

    ended_at: datetime
    session_id: str

    def token(self) -> str:
        text = f"{self.ended_at.isoformat()}|{self.session_id}"
        return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")

    @classmethod
    def parse(cls, token: str) -> RecordCursor | None:
        """The cursor of a page token ('' is the first page); InvalidArgument for a token
        this service never gave out."""
        if not token:
            return None
        try:
            text = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
            when, _, session_id = text.partition("|")
            ended_at = datetime.fromisoformat(when)
        except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
            raise InvalidArgument(_NOT_OURS) from exc
        # A NUL inside the base64 text is out of the request guard's sight and PostgreSQL
        # cannot take it as a parameter (a DataError, INTERNAL to the caller).
        if not session_id or "\x00" in session_id or ended_at.tzinfo is None:
            raise InvalidArgument(_NOT_OURS)
        return cls(ended_at, session_id)


def page_size(requested: int) -> int:
    """The page size asked for: 0 means the default; more than the maximum is cut to it."""
    if requested < 0:
        raise InvalidArgument(
            f"page_size cannot be negative ({requested}); give 1 to {MAX_PAGE_SIZE}, or 0 "
            f"for {DEFAULT_PAGE_SIZE}."
        )
    return min(requested or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)


@dataclass(frozen=True, slots=True)
class RecordPage:
    records: list[ServiceRecord]
    next_cursor: RecordCursor | None
    """Where the next page starts; None on the last page."""


def _statement(account_id: str, limit: int, after: RecordCursor | None) -> tuple[str, Any]:
    query = select(service_records).where(service_records.c.account_id == account_id)
    if after is not None:
        query = query.where(
            tuple_(service_records.c.ended_at, service_records.c.session_id)
            < tuple_(after.ended_at, after.session_id)
        )
    query = query.order_by(
        service_records.c.ended_at.desc(), service_records.c.session_id.desc()
    ).limit(limit)
    compiled = query.compile(dialect=_DIALECT)
    return str(compiled), compiled.params


class ServiceRecordQueries:
    """An account's service records, a page at a time."""

    def __init__(self, database: PooledDatabase) -> None:
        self._database = database

    async def page(self, account_id: str, limit: int, after: RecordCursor | None) -> RecordPage:
        sql, params = _statement(account_id, limit + 1, after)

        async def work(conn: Connection) -> list[dict[str, Any]]:
            return await (await conn.execute(sql, params)).fetchall()

        rows = await self._database.run(work)
        records = [record_from_row(row) for row in rows[:limit]]
        if len(rows) <= limit:  # limit is at least 1 (page_size), so a fuller page has a last
            return RecordPage(records, None)
        last = records[-1]
        return RecordPage(records, RecordCursor(last.ended_at, last.session_id))
