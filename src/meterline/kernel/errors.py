"""The domain's errors. Each kind maps to one gRPC status in `grpc_errors` (the one
catalogue); domain code raises these and never imports gRPC.

    MeterlineError
    ├── InvalidArgument          bad input: the caller must change the request
    │   └── UsageWentBackwards   a cumulative counter lower than already reported
    ├── Unauthenticated          no token, or a forged or expired one
    ├── PermissionDenied         a valid caller acting on what is not theirs
    ├── NotFound                 no such account, session, tariff, ...
    ├── AlreadyExists            an idempotency key reused for another request
    ├── FailedPrecondition       the state forbids it (suspended, closed hold, ...)
    │   └── InsufficientFunds    available would fall below the credit limit
    ├── ResourceExhausted        a caller is over a limit (open streams, ...)
    └── Unavailable              a store or peer service cannot be reached
"""

from __future__ import annotations


class MeterlineError(Exception):
    """Base of every error a caller may see. `message` is a sentence a person can act on;
    `reason` is a stable UPPER_SNAKE identifier for programs."""

    reason = "ERROR"

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if reason is not None:
            self.reason = reason


class InvalidArgument(MeterlineError):
    reason = "INVALID_ARGUMENT"


def required(value: str, field: str, what: str) -> str:
    """`value`, unless it is empty: then the caller named nothing, which is their mistake
    (INVALID_ARGUMENT naming the field), not a thing that does not exist (NOT_FOUND)."""
    if not value:
        raise InvalidArgument(f"{field} is missing: name the {what}.", reason="MISSING_FIELD")
    return value


class UsageWentBackwards(InvalidArgument):
    reason = "USAGE_WENT_BACKWARDS"


class Unauthenticated(MeterlineError):
    reason = "UNAUTHENTICATED"


class PermissionDenied(MeterlineError):
    reason = "PERMISSION_DENIED"


class NotFound(MeterlineError):
    reason = "NOT_FOUND"


class AlreadyExists(MeterlineError):
    reason = "IDEMPOTENCY_KEY_REUSED"


class FailedPrecondition(MeterlineError):
    reason = "FAILED_PRECONDITION"


class InsufficientFunds(FailedPrecondition):
    reason = "INSUFFICIENT_FUNDS"


class ResourceExhausted(MeterlineError):
    reason = "RESOURCE_EXHAUSTED"


class Unavailable(MeterlineError):
    reason = "UNAVAILABLE"
