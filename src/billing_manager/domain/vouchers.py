"""Prepaid vouchers: their codes, the keyed hash that is all the database keeps of one,
and the throttle that makes guessing codes slow. No I/O here.

A code is 16 characters drawn by `secrets` from an alphabet without look-alikes (no 0/O,
1/I/L), shown in groups of four: 31**16 (about 2**79) codes, so guessing one is hopeless;
the throttle keeps guessers from wearing the account database, too."""

from __future__ import annotations

import hashlib
import hmac
import math
import secrets
from collections import deque
from dataclasses import dataclass
from datetime import datetime

from meterline.kernel import money
from meterline.kernel.errors import InvalidArgument, ResourceExhausted

ALPHABET = "23456789ABCDEFGHJKMNPQRSTUVWXYZ"
CODE_LENGTH = 16
GROUP = 4
MAX_BATCH = 10_000


@dataclass(frozen=True, slots=True)
class Voucher:
    """A voucher as the database keeps it (by the hash of its code)."""

    code_hash: str
    batch_id: str
    amount_micros: int
    currency: str
    expires_at: datetime | None


def new_code() -> str:
    """A fresh code, e.g. 7KQ2-M9XD-4HTW-PZ3C."""
    raw = "".join(secrets.choice(ALPHABET) for _ in range(CODE_LENGTH))
    return "-".join(raw[i : i + GROUP] for i in range(0, CODE_LENGTH, GROUP))


def normalize(code: str) -> str:
    """The code as typed, without case, spaces or dashes; refused when it cannot be one."""
    cleaned = "".join(ch for ch in code.upper() if ch not in " -\t")
    if len(cleaned) != CODE_LENGTH or any(ch not in ALPHABET for ch in cleaned):
        raise InvalidArgument(
            f"code is not a voucher code: one has {CODE_LENGTH} letters and digits, "
            "such as 7KQ2-M9XD-4HTW-PZ3C."
        )
    return cleaned


def code_hash(secret: str, code: str) -> str:
    """HMAC-SHA256 of the normalized code under the installation's voucher secret: a
    stolen table of hashes cannot be turned back into codes without the secret."""
    return hmac.new(secret.encode(), normalize(code).encode(), hashlib.sha256).hexdigest()


def idempotency_key(voucher_hash: str) -> str:
    """The redemption's key: one per voucher, so the ledger funds it at most once."""
    return f"voucher:{voucher_hash}"


def validate_batch(count: int, amount: int, currency: str) -> None:
    if not 1 <= count <= MAX_BATCH:
        raise InvalidArgument(f"count must be 1 to {MAX_BATCH} (got {count}).")
    if amount <= 0:
        raise InvalidArgument(f"amount_micros must be more than 0 (got {amount}).")
    try:
        money.check_micros(amount)
        money.check_currency(currency)
    except money.AmountError as exc:
        raise InvalidArgument(str(exc)) from exc


class GuessThrottle:
    """Refusals of voucher codes per caller, in a sliding window: after `limit` refusals
    within `window` seconds a caller must wait until the oldest of them is `window` old.
    In memory, per billing manager instance (a guesser spread over N instances gets N
    times the attempts; still nothing against 2**79 codes)."""

    def __init__(self, limit: int = 5, window: float = 60.0) -> None:
        self._limit = limit
        self._window = window
        self._refusals: dict[str, deque[float]] = {}

    def _recent(self, caller: str, now: float) -> deque[float]:
        times = self._refusals.get(caller)
        if times is None:
            return deque()
        while times and times[0] <= now - self._window:
            times.popleft()
        if not times:
            del self._refusals[caller]
        return times

    def check(self, caller: str, now: float) -> None:
        """Refuse a caller over its limit, saying how long to wait."""
        times = self._recent(caller, now)
        if len(times) >= self._limit:
            wait = max(1, math.ceil(times[0] + self._window - now))
            raise ResourceExhausted(
                f"Too many voucher codes were refused for this caller; try again in "
                f"{wait} seconds.",
                reason="VOUCHER_ATTEMPTS_EXHAUSTED",
            )

    def refused(self, caller: str, now: float) -> None:
        if len(self._refusals) > 10_000:  # callers that stopped guessing: forget them
            for other in list(self._refusals):
                self._recent(other, now)
        times = self._recent(caller, now)
        times.append(now)
        self._refusals[caller] = times
