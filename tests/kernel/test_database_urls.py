"""The database URLs `meterline up` records in stack.json are ones people can use: the
docs tell operators to connect psql with them (docs/operations.md)."""

from __future__ import annotations

import uuid

import psycopg
import pytest
from tests.support.stores import StoreUrls

from meterline.kernel.db import drop_database, ensure_database

pytestmark = pytest.mark.integration


def test_ensure_database_gives_a_url_libpq_takes(stores: StoreUrls) -> None:
    name = f"meterline_urls_{uuid.uuid4().hex[:8]}"
    url = ensure_database(stores.server_url, name)
    try:
        assert url.startswith("postgresql://"), url
        # psql and psycopg read it as libpq does: no SQLAlchemy driver suffix.
        with psycopg.connect(url, connect_timeout=10) as conn:
            row = conn.execute("SELECT current_database()").fetchone()
        assert row == (name,)
    finally:
        drop_database(stores.server_url, name)
