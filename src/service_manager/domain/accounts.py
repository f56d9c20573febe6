"""The account as the service manager sees it: a snapshot from the billing manager."""

from __future__ import annotations

from dataclasses import dataclass

from meterline.kernel import money


@dataclass(frozen=True, slots=True)
class AccountSnapshot:
    account_id: str
    currency: str
    active: bool
    """False for a suspended or closed account: it cannot start services."""
    available_micros: int
    """Balance less every open hold, when read."""
    credit_limit_micros: int = 0
    """How far below zero a postpaid account may go (0 for prepaid)."""

    @property
    def budget_micros(self) -> int:
        """What new holds may still take."""
        return money.add(self.available_micros, self.credit_limit_micros)

    def after_hold(self, amount_micros: int) -> AccountSnapshot:
        """The snapshot as it stands once a hold of `amount_micros` is made."""
        return AccountSnapshot(
            self.account_id,
            self.currency,
            self.active,
            money.add(self.available_micros, -amount_micros),
            self.credit_limit_micros,
        )
