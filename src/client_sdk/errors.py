"""Errors the SDK raises.

MeterlineClientError          any failure the device should show or handle
├── AuthenticationError       the credential was refused
├── ServiceRefused            the server said no (funds, endpoint, permission, input)
└── ServersUnavailable        no server in the list could be reached
"""

from __future__ import annotations

import grpc

from meterline.kernel.grpc_errors import error_reason


class MeterlineClientError(Exception):
    def __init__(self, message: str, code: grpc.StatusCode | None = None, reason: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.reason = reason
        """A stable identifier such as INSUFFICIENT_FUNDS or UNKNOWN_ENDPOINT."""


class AuthenticationError(MeterlineClientError):
    pass


class ServiceRefused(MeterlineClientError):
    pass


class ServersUnavailable(MeterlineClientError):
    pass


def from_rpc_error(error: grpc.aio.AioRpcError) -> MeterlineClientError:
    code = error.code()
    message = error.details() or code.name
    reason = error_reason(error)
    if code is grpc.StatusCode.UNAUTHENTICATED:
        return AuthenticationError(message, code, reason)
    if code is grpc.StatusCode.UNAVAILABLE:
        return ServersUnavailable(message, code, reason)
    return ServiceRefused(message, code, reason)
