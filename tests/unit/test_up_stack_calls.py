"""`meterline up`'s own calls to the stack it started (the default tariffs, the demo): a
refusal becomes a StackError that names what failed and what to do, which `up` prints as
one sentence after stopping the stack (not "unexpected failure" with a traceback)."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from meterline.cli.main import _stack_call
from meterline.cli.stack import StackError

pytestmark = pytest.mark.unit


def test_a_refused_call_of_up_is_a_stack_error_with_a_sentence(tmp_path: Path) -> None:
    refusal = grpc.aio.AioRpcError(
        grpc.StatusCode.UNAVAILABLE,
        grpc.aio.Metadata(),
        grpc.aio.Metadata(),
        details="The tariff database cannot be reached; try again shortly.",
    )
    with pytest.raises(StackError) as raised, _stack_call("loading the default tariffs", tmp_path):
        raise refusal
    assert str(raised.value) == (
        "loading the default tariffs failed (The tariff database cannot be reached; try "
        f"again shortly.), so the stack is stopped; see the logs in {tmp_path} and start it "
        "again with `meterline up`"
    )


def test_anything_else_passes_through(tmp_path: Path) -> None:
    with pytest.raises(KeyError), _stack_call("the demo session", tmp_path):
        raise KeyError("ours")
