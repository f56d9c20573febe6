"""Amounts for display. The wire carries integer micro-units of the currency; the SDK never
does arithmetic on them beyond turning them into decimal text (the same text the servers
and the CLI print)."""

from __future__ import annotations

MICROS_PER_UNIT = 1_000_000


def format_amount(micros: int) -> str:
    """Micro-units as a decimal string with at least two decimal places ("0.42")."""
    sign = "-" if micros < 0 else ""
    whole, fraction = divmod(abs(micros), MICROS_PER_UNIT)
    digits = f"{fraction:06d}".rstrip("0").ljust(2, "0")
    return f"{sign}{whole}.{digits}"
