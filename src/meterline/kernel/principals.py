"""Who is calling, and what they may act on. Pure rules; no I/O."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from meterline.kernel.errors import PermissionDenied


class PrincipalKind(enum.StrEnum):
    DEVICE = "device"
    """Bound to one account: acts only on that account and its sessions."""
    GATEWAY = "gateway"
    """Rates usage, reports usage and watches its own terminations."""
    OPERATOR = "operator"
    """Administers everything."""
    SERVICE = "service"
    """A Meterline service calling another (holds the signing key)."""


@dataclass(frozen=True, slots=True)
class Principal:
    kind: PrincipalKind
    subject: str
    """The credential's client id, or the service's name."""
    account_id: str = ""
    """For a device, the account it is bound to."""
    gateway_id: str = ""
    """For a gateway, its name."""

    @property
    def is_trusted(self) -> bool:
        """Operators and our own services may act on any account."""
        return self.kind in (PrincipalKind.OPERATOR, PrincipalKind.SERVICE)

    def require_kind(self, *kinds: PrincipalKind, action: str) -> None:
        if self.kind not in kinds:
            allowed = " or ".join(kind.value for kind in kinds)
            raise PermissionDenied(f"Only a {allowed} may {action}; this caller is a {self.kind}.")

    def require_account(self, account_id: str) -> None:
        """Operators and services may act on any account, devices only on their own."""
        if self.is_trusted:
            return
        if self.kind is PrincipalKind.DEVICE and self.account_id == account_id:
            return
        raise PermissionDenied(
            f"This credential may not act on account {account_id}; use the account's own "
            "device credential or an operator's."
        )

    def require_session(self, account_id: str, gateway_id: str) -> None:
        """A session is its account's device's, its gateway's, and the operators'."""
        if self.is_trusted:
            return
        if self.kind is PrincipalKind.DEVICE and self.account_id == account_id:
            return
        if self.kind is PrincipalKind.GATEWAY and self.gateway_id == gateway_id:
            return
        raise PermissionDenied("This session belongs to another account; it cannot be used here.")
