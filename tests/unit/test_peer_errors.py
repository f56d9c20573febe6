"""service_manager.peers: a peer's failed call becomes the domain error a caller can act
on; an overloaded peer (cancelled, shedding, late) is UNAVAILABLE, never INTERNAL."""

from __future__ import annotations

import grpc
import pytest

from meterline.kernel import errors
from service_manager.peers import _domain_error

pytestmark = pytest.mark.unit


def _failed(code: grpc.StatusCode, details: str = "no") -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details=details)


@pytest.mark.parametrize(
    "code",
    [
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    ],
)
def test_an_overloaded_or_unreachable_peer_is_unavailable(code: grpc.StatusCode) -> None:
    error = _domain_error(_failed(code), "billing manager")
    assert isinstance(error, errors.Unavailable)
    assert error.message == "The billing manager cannot be reached; try again shortly."


def test_a_refusal_keeps_its_code_and_sentence() -> None:
    error = _domain_error(_failed(grpc.StatusCode.NOT_FOUND, "There is no account 'x'."), "peer")
    assert isinstance(error, errors.NotFound)
    assert error.message == "There is no account 'x'."


def test_a_refused_token_says_what_to_set() -> None:
    error = _domain_error(_failed(grpc.StatusCode.UNAUTHENTICATED), "rating service")
    assert isinstance(error, errors.FailedPrecondition)
    assert "METERLINE_TOKEN_SECRET" in error.message
