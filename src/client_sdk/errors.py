"""Errors the SDK raises. Each carries `message`, a sentence a person can act on, and
`reason`, the stable identifier the server gave (google.rpc.ErrorInfo), e.g.
INSUFFICIENT_FUNDS; device code branches on the class or the reason, never on gRPC.

MeterlineClientError              any failure the device should show or handle
├── AuthenticationFailed          the credential or the access token was refused
│                                 (also named AuthenticationError)
├── ServiceRefused                the server answered no; the same request will not succeed
│   ├── InsufficientFunds         INSUFFICIENT_FUNDS: the balance cannot pay for a start
│   ├── AccountSuspended          ACCOUNT_SUSPENDED: the account may not log in or start
│   ├── UnknownEndpoint           UNKNOWN_ENDPOINT: no tariff prices that destination
│   ├── NoGateway                 NO_GATEWAY: no gateway carries that service right now
│   ├── PermissionDenied          the credential may not act on that account or session
│   ├── NotFound                  no such session, account, ... (SESSION_NOT_FOUND, ...)
│   ├── InvalidRequest            the request cannot be taken as it is (INVALID_ARGUMENT,
│   │                             USAGE_WENT_BACKWARDS, ...)
│   ├── LimitExceeded             the credential is over a limit (too many open streams)
│   └── ServerError               the server failed (INTERNAL, UNKNOWN, ...); the SDK does
│                                 not try another server, as the answer would be the same
├── ServersUnavailable            no server of the list answered in time, after retries
└── SessionEnded                  the session has ended; it takes no more usage
"""

from __future__ import annotations

from typing import Any

import grpc
from google.rpc import error_details_pb2, status_pb2


class MeterlineClientError(Exception):
    """Base of every error the SDK raises."""

    def __init__(self, message: str, reason: str = "") -> None:
        super().__init__(message)
        self.message = message
        """A sentence to show or log."""
        self.reason = reason
        """A stable identifier such as INSUFFICIENT_FUNDS or UNKNOWN_ENDPOINT ('' if none)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, reason={self.reason!r})"


class AuthenticationFailed(MeterlineClientError):
    """The credential was refused (BAD_CREDENTIALS), or a token the SDK could not renew."""


AuthenticationError = AuthenticationFailed
"""The earlier name of `AuthenticationFailed`."""


class ServiceRefused(MeterlineClientError):
    """The server answered the request with a refusal."""


class InsufficientFunds(ServiceRefused):
    """The available balance cannot fund the service's first quota slice."""


class AccountSuspended(ServiceRefused):
    """The account is suspended: it may neither log in nor start services."""


class UnknownEndpoint(ServiceRefused):
    """No tariff of the account's rate plan prices that endpoint."""


class NoGateway(ServiceRefused):
    """No gateway carries this kind of service right now; try again later."""


class PermissionDenied(ServiceRefused):
    """The credential may not act on the account or session named."""


class NotFound(ServiceRefused):
    """The session, account or other object named does not exist."""


class InvalidRequest(ServiceRefused):
    """The request cannot be taken as it is; the message says what to change."""


class LimitExceeded(ServiceRefused):
    """The credential is over a limit of the server, e.g. open streams."""


class ServerError(ServiceRefused):
    """The server failed while answering. It is not retried on another server: a bug
    answers the same everywhere. The message names an incident the operator can look up."""


class ServersUnavailable(MeterlineClientError):
    """No server of the list could be reached, or none answered within its deadline."""


class SessionEnded(MeterlineClientError, RuntimeError):
    """The session has ended (stopped, cut off, or ended by the server)."""


_BY_REASON: dict[str, type[MeterlineClientError]] = {
    "INSUFFICIENT_FUNDS": InsufficientFunds,
    "ACCOUNT_SUSPENDED": AccountSuspended,
    "UNKNOWN_ENDPOINT": UnknownEndpoint,
    "NO_GATEWAY": NoGateway,
    # The servers of the installation disagree on their shared secret: not the device's fault.
    "PEER_REFUSED_TOKEN": ServerError,
}

_BY_CODE: dict[grpc.StatusCode, type[MeterlineClientError]] = {
    grpc.StatusCode.UNAUTHENTICATED: AuthenticationFailed,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.INVALID_ARGUMENT: InvalidRequest,
    grpc.StatusCode.OUT_OF_RANGE: InvalidRequest,
    grpc.StatusCode.ALREADY_EXISTS: InvalidRequest,
    grpc.StatusCode.RESOURCE_EXHAUSTED: LimitExceeded,
    grpc.StatusCode.INTERNAL: ServerError,
    grpc.StatusCode.UNKNOWN: ServerError,
    grpc.StatusCode.DATA_LOSS: ServerError,
    grpc.StatusCode.UNIMPLEMENTED: ServerError,
    grpc.StatusCode.CANCELLED: ServerError,
    grpc.StatusCode.UNAVAILABLE: ServersUnavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: ServersUnavailable,
}


def error_reason(error: grpc.aio.AioRpcError) -> str:
    """The ErrorInfo reason a Meterline server put on a failed call, or ''."""
    metadata: Any = error.trailing_metadata() or ()
    for key, value in metadata:
        if key == "grpc-status-details-bin" and isinstance(value, bytes):
            try:
                status = status_pb2.Status.FromString(value)
            except Exception:  # a peer that is not Meterline: no reason
                return ""
            for detail in status.details:
                info = error_details_pb2.ErrorInfo()
                if detail.Unpack(info):
                    return str(info.reason)
    return ""


def from_rpc_error(error: grpc.aio.AioRpcError) -> MeterlineClientError:
    """The SDK's error for a call that failed with the server's own answer."""
    code = error.code()
    reason = error_reason(error)
    kind = _BY_REASON.get(reason) or _BY_CODE.get(code, ServiceRefused)
    message = error.details() or f"The server refused the call ({code.name})."
    return kind(message, reason or code.name)
