"""A running metered service, as the device sees it."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from client_sdk.stream import MeterStream
from client_sdk.types import BillingUpdate, Rate, ServiceRecord, TerminationReason
from meterline.service.v1 import service_pb2

if TYPE_CHECKING:
    from client_sdk.client import MeterlineClient

log = logging.getLogger(__name__)

UsageSource = Callable[[], int] | Callable[[], Awaitable[int]]
"""Returns the cumulative units used since the service started."""

_END = object()


class ServiceSession:
    """Report usage (yourself with `report`, or automatically from a usage source), follow
    the charge in real time with `updates()`, and `stop()` to settle and get the record."""

    def __init__(
        self,
        client: MeterlineClient,
        started: service_pb2.StartServiceResponse,
        rate: Rate,
        usage_source: UsageSource | None,
        report_interval: float,
    ) -> None:
        self._client = client
        self.session_id = started.session_id
        self.rate = rate
        self.gateway_id = started.gateway.gateway_id
        self.gateway_address = started.gateway.address
        self.gateway_ticket = started.gateway.token
        self.granted_units = started.granted_units
        self.last_update: BillingUpdate | None = None
        self.record: ServiceRecord | None = None
        self._stream = MeterStream(client.service_pool, client.tokens, self.session_id)
        self._sequence = 0
        self._used = 0
        self._lock = asyncio.Lock()
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._ended = False
        self._failure: BaseException | None = None
        self._source = usage_source
        self._reporter: asyncio.Task[None] | None = None
        if usage_source is not None:
            self._reporter = asyncio.create_task(self._report_every(report_interval))

    @property
    def ended(self) -> bool:
        return self._ended

    async def report(self, used_units: int) -> BillingUpdate:
        """Send the cumulative usage now; returns the server's answer."""
        async with self._lock:
            if self._ended:
                raise RuntimeError(f"session {self.session_id} has ended")
            if used_units < self._used:
                raise ValueError(
                    f"used_units is cumulative: {used_units} is less than the {self._used} "
                    "already reported"
                )
            sequence = self._sequence + 1
            response = await self._stream.send(sequence, used_units)
            self._sequence = sequence
            self._used = used_units
            update = self._to_update(response)
            self.granted_units = update.granted_units
            self._publish(update)
            if update.ended:
                self._finish()
            return update

    async def updates(self) -> AsyncIterator[BillingUpdate]:
        """Each billing update as it arrives, until the service ends."""
        while True:
            item = await self._queue.get()
            if item is _END:
                if self._failure is not None:
                    raise self._failure
                return
            yield item

    async def stop(self, used_units: int | None = None) -> ServiceRecord:
        """End the service and settle it. `used_units` is the final cumulative usage; by
        default the usage source's last reading, or the last reported usage."""
        if self._reporter is not None:
            self._reporter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reporter
        async with self._lock:
            if used_units is None:
                used_units = await self._read_source() if self._source else self._used
            used_units = max(used_units, self._used)
            await self._stream.close()
            record = await self._client.stop_session(self.session_id, used_units)
            self.record = record
            if not self._ended:
                self._publish(
                    BillingUpdate(
                        session_id=self.session_id,
                        sequence=self._sequence,
                        used_units=record.used_units,
                        charged_micros=record.charged_micros,
                        balance_micros=(
                            self.last_update.balance_micros
                            - (record.charged_micros - self.last_update.charged_micros)
                            if self.last_update
                            else 0
                        ),
                        granted_units=self.granted_units,
                        currency=self.rate.currency,
                        ended=True,
                        termination_reason=record.termination_reason,
                        message="The service has ended.",
                    )
                )
                self._finish()
            return record

    async def __aenter__(self) -> ServiceSession:
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.record is None:
            await self.stop()

    # -- internals ---------------------------------------------------------------------

    async def _read_source(self) -> int:
        assert self._source is not None
        value = self._source()
        if inspect.isawaitable(value):
            value = await value
        return int(value)

    async def _report_every(self, interval: float) -> None:
        try:
            while not self._ended:
                await asyncio.sleep(interval)
                await self.report(await self._read_source())
        except asyncio.CancelledError:
            raise
        except Exception as error:  # surfaced through updates()
            log.warning("session %s: automatic usage report failed: %s", self.session_id, error)
            self._failure = error
            self._queue.put_nowait(_END)

    def _publish(self, update: BillingUpdate) -> None:
        self.last_update = update
        self._queue.put_nowait(update)

    def _finish(self) -> None:
        self._ended = True
        self._queue.put_nowait(_END)

    def _to_update(self, response: service_pb2.MeterResponse) -> BillingUpdate:
        termination = response.termination if response.HasField("termination") else None
        reason = None
        if termination is not None and termination.reason:
            name = service_pb2.TerminationReason.Name(termination.reason)
            reason = TerminationReason(name.removeprefix("TERMINATION_REASON_"))
        time_left = None
        if response.HasField("estimated_time_left"):
            time_left = timedelta(seconds=response.estimated_time_left.seconds)
        return BillingUpdate(
            session_id=self.session_id,
            sequence=response.acknowledged_sequence,
            used_units=response.used_units,
            charged_micros=response.charged_micros,
            balance_micros=response.balance_micros,
            granted_units=response.granted_units,
            currency=self.rate.currency,
            time_left=time_left,
            final_units=bool(termination and termination.final_unit_indication),
            ended=bool(termination and termination.ended),
            termination_reason=reason,
            message=termination.message if termination else "",
        )
