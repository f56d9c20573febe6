"""The usage summaries of captured holds (migration 0007's `capture_usage`): what each
capture paid for, as the service manager said on Capture; a bill's charges and sessions
are made from them."""

from __future__ import annotations

from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection

from billing_manager.domain.invoices import UsageSummary
from billing_manager.storage.models import capture_usage


class UsageStore:
    """The usage summaries of captured holds."""

    async def record(self, conn: AsyncConnection, hold_id: str, usage: UsageSummary) -> None:
        """Keep the hold's summary; one that is already kept stays as it is (a retried
        Capture writes it only if the first attempt did not get that far)."""
        await conn.execute(
            insert(capture_usage)
            .values(
                hold_id=hold_id,
                session_id=usage.session_id,
                service_type=usage.service_type,
                endpoint=usage.endpoint,
                application_id=usage.application_id,
                units=usage.units,
                unit=usage.unit,
                start_time=usage.start_time,
                end_time=usage.end_time,
                charged_micros=usage.charged_micros,
            )
            .on_conflict_do_nothing(index_elements=[capture_usage.c.hold_id])
        )
