"""Limits on what one caller may hold open, so one caller can never starve the others."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from meterline.kernel.errors import ResourceExhausted
from meterline.kernel.principals import Principal


class StreamLimits:
    """Open streams per caller (one credential) on this instance."""

    def __init__(self, limit: int, what: str, setting: str) -> None:
        self._limit = limit
        self._what = what
        self._setting = setting
        self._open: dict[tuple[str, str, str, str], int] = {}

    @contextmanager
    def hold(self, principal: Principal) -> Iterator[None]:
        caller = (
            principal.kind.value,
            principal.subject,
            principal.account_id,
            principal.gateway_id,
        )
        count = self._open.get(caller, 0)
        if count >= self._limit:
            raise ResourceExhausted(
                f"This credential already has {count} {self._what} open on this server, the "
                f"most allowed ({self._setting}); close one before opening another."
            )
        self._open[caller] = count + 1
        try:
            yield
        finally:
            left = self._open[caller] - 1
            if left:
                self._open[caller] = left
            else:
                del self._open[caller]
