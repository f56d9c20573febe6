"""A running metered service, as the device sees it."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from client_sdk import _wire
from client_sdk.errors import MeterlineClientError, ServersUnavailable, SessionEnded
from client_sdk.stream import MeterStream
from client_sdk.types import BillingUpdate, Rate, ServiceRecord

if TYPE_CHECKING:
    from client_sdk.client import MeterlineClient
    from meterline.service.v1 import service_pb2

log = logging.getLogger(__name__)

UsageSource = Callable[[], int] | Callable[[], Awaitable[int]]
"""Returns the cumulative units used since the service started."""

DEFAULT_LIVENESS_SECONDS = 120.0
"""The servers' default liveness timeout, when a grant does not say how long it is valid."""
MIN_HEARTBEAT_SECONDS = 0.5

_END = object()


def heartbeat_interval(
    configured: float | None, started: service_pb2.StartServiceResponse
) -> float:
    """How often a silent session resends its count: as configured, or a third of the
    liveness timeout the server granted (its grant is valid that long without an update)."""
    if configured is not None:
        return configured
    liveness = DEFAULT_LIVENESS_SECONDS
    if started.HasField("quota_valid_until"):
        valid_until = started.quota_valid_until.ToDatetime(tzinfo=UTC)
        liveness = (valid_until - datetime.now(UTC)).total_seconds()
    return max(liveness / 3, MIN_HEARTBEAT_SECONDS)


class ServiceSession:
    """Report usage (yourself with `report`, or automatically from a usage source), follow
    the charge in real time with `updates()`, and `stop()` to settle and get the record.
    While the session runs, it resends its last count when it has been silent for the
    heartbeat interval, so the server never ends it for silence."""

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
        self.heartbeat_interval = heartbeat_interval(client.config.heartbeat_interval, started)
        """Seconds of silence after which the session resends its last count."""
        self._stream = MeterStream(client.service_pool, client.tokens, self.session_id)
        self._sequence = 0
        self._used = 0
        self._last_sent = time.monotonic()
        self._lock = asyncio.Lock()
        self._queue: asyncio.Queue[Any] = asyncio.Queue()
        self._ended = False
        self._failure: BaseException | None = None
        self._source = usage_source
        self._tasks: list[asyncio.Task[None]] = [asyncio.create_task(self._heartbeat())]
        if usage_source is not None:
            self._tasks.append(asyncio.create_task(self._report_every(report_interval)))

    @property
    def ended(self) -> bool:
        return self._ended

    @property
    def server(self) -> str | None:
        """The server the usage stream is open on now (None between streams)."""
        return self._stream.address

    @property
    def used_units(self) -> int:
        """The cumulative usage the server last acknowledged from this session."""
        return self._used

    async def report(self, used_units: int) -> BillingUpdate:
        """Send the cumulative usage now; returns the server's answer."""
        async with self._lock:
            if self._ended:
                raise SessionEnded(f"Session {self.session_id} has ended.", "SESSION_ENDED")
            if used_units < self._used:
                raise ValueError(
                    f"used_units is cumulative: {used_units} is less than the {self._used} "
                    "already reported"
                )
            # The sequence is spent even if the update fails: a later update with another
            # count must not arrive under a number the server may already have applied.
            self._sequence += 1
            response = await self._stream.send(self._sequence, used_units)
            self._used = used_units
            self._last_sent = time.monotonic()
            update = _wire.billing_update(self.session_id, self.rate.currency, response)
            self.granted_units = update.granted_units
            self._publish(update)
            if update.ended:
                self._finish()
            return update

    async def updates(self) -> AsyncGenerator[BillingUpdate, None]:
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
        await self._cancel_tasks()
        async with self._lock:
            if self.record is not None:
                return self.record
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

    async def _detach(self) -> None:
        """Stop reporting and close the stream, without ending the service (the client
        is closing)."""
        await self._cancel_tasks()
        await self._stream.close()

    async def _cancel_tasks(self) -> None:
        current = asyncio.current_task()
        for task in self._tasks:
            if task is not current:
                task.cancel()
        for task in self._tasks:
            if task is not current:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._tasks.clear()

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
            self._fail(error, "automatic usage report")

    async def _heartbeat(self) -> None:
        """Resend the last count (with the next sequence, so the server counts it as a
        sign of life) whenever the session has been silent for the heartbeat interval."""
        while not self._ended:
            silent = time.monotonic() - self._last_sent
            if silent < self.heartbeat_interval:
                await asyncio.sleep(self.heartbeat_interval - silent)
                continue
            try:
                await self.report(self._used)
            except SessionEnded:
                return
            except ServersUnavailable as error:
                # No server now; the next heartbeat tries again (the grant outlives it).
                log.warning("session %s: heartbeat not delivered: %s", self.session_id, error)
                self._last_sent = time.monotonic()
            except MeterlineClientError as error:
                self._fail(error, "heartbeat")
                return

    def _fail(self, error: BaseException, what: str) -> None:
        log.warning("session %s: %s failed: %s", self.session_id, what, error)
        if self._failure is None:
            self._failure = error
            self._queue.put_nowait(_END)

    def _publish(self, update: BillingUpdate) -> None:
        self.last_update = update
        self._queue.put_nowait(update)

    def _finish(self) -> None:
        if not self._ended:
            self._ended = True
            self._queue.put_nowait(_END)
