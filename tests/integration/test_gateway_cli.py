"""`meterline gateway ...` and `meterline account identity ...` against the in-process
stack, as an operator types them: what they print, and one clear line for bad input."""

from __future__ import annotations

import json
import secrets

import pytest

from tests.integration.test_cli import meterline
from tests.support.clients import new_account, stubs
from tests.support.stack import InProcessStack

pytestmark = pytest.mark.integration


async def test_a_gateway_is_added_listed_drained_and_its_ticket_key_shown(
    stack: InProcessStack,
) -> None:
    name = f"cli-{secrets.token_hex(3)}"
    code, out, err = await meterline(
        stack, "gateway", "add", name, "--address", "sip.example.com:5060",
        "--service-types", "voice,VIDEO", "--region", "eu-west", "--capacity", "50",
    )  # fmt: skip
    assert code == 0, err
    assert out.strip() == (
        f"registered gateway {name} (sip.example.com:5060; VOICE,VIDEO; region eu-west; "
        "capacity 50; enabled)"
    )
    code, out, err = await meterline(stack, "gateway", "list")
    assert code == 0, err
    (row,) = [line for line in out.splitlines() if line.startswith(name)]
    assert "has not reported liveness yet" in row and "never" in row
    assert any(line.startswith("local") and "not checked" in line for line in out.splitlines())

    code, out, err = await meterline(stack, "gateway", "drain", name)
    assert code == 0 and "drained" in out, err  # draining, and no session is left
    code, out, err = await meterline(stack, "gateway", "update", name, "--capacity", "0")
    assert code == 0 and "no capacity limit" in out, err
    code, out, err = await meterline(stack, "gateway", "enable", name, "--json")
    assert code == 0, err
    assert json.loads(out)["state"] == "GATEWAY_STATE_ENABLED"

    code, out, err = await meterline(stack, "gateway", "key")
    assert code == 0 and len(out.strip()) == 44, err  # base64 of 32 bytes
    code, out, err = await meterline(stack, "gateway", "key", "--jwk")
    assert code == 0 and json.loads(out)["crv"] == "Ed25519", err

    code, _, err = await meterline(
        stack, "gateway", "add", name, "--address", "other.example.com:5060"
    )
    assert code == 1 and "registered already" in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["gateway", "add", "g1", "--address", "h:5060", "--service-types", "FAX"], "FAX"),
        (["gateway", "add", "g1", "--address", "no-port"], "HOST:PORT"),
        (["gateway", "add", "bad name", "--address", "h:5060"], "not a gateway name"),
        (["gateway", "drain", "nowhere-gw"], "no gateway"),
        (["account", "identity", "add", "acc_x"], "exactly one of"),
        (["account", "identity", "list", "acc_x", "--msisdn", "+1"], "No such option"),
    ],
)
async def test_bad_gateway_input_is_one_clear_line(
    stack: InProcessStack, args: list[str], message: str
) -> None:
    code, _, err = await meterline(stack, *args)
    assert code == 2, err
    assert message in err and err.startswith("error")


async def test_identities_are_added_listed_and_removed(stack: InProcessStack) -> None:
    api = stubs(stack.endpoints)
    try:
        account_id = await new_account(api.billing)
    finally:
        await api.close()
    number = "+4477009" + str(secrets.randbelow(10**6)).rjust(6, "0")
    spaced = f"{number[:3]} {number[3:7]} {number[7:]}"
    code, out, err = await meterline(
        stack, "account", "identity", "add", account_id, "--msisdn", spaced
    )
    assert code == 0, err
    assert out.strip() == f"{account_id}: MSISDN {number}"
    code, _, err = await meterline(
        stack, "account", "identity", "add", account_id, "--sip-uri", "SIP:Ada@Example.org"
    )
    assert code == 0, err
    code, out, err = await meterline(stack, "account", "identity", "list", account_id)
    assert code == 0, err
    assert out.splitlines() == [f"MSISDN {number}", "SIP_URI sip:Ada@example.org"]

    other = "acc_" + secrets.token_hex(4)
    code, _, err = await meterline(stack, "account", "identity", "add", other, "--msisdn", number)
    assert code == 2 and "no account" in err.lower()
    code, _, err = await meterline(stack, "account", "identity", "add", account_id, "--imsi", "12")
    assert code == 2 and "IMSI" in err
    code, out, err = await meterline(
        stack, "account", "identity", "remove", account_id, "--msisdn", number
    )
    assert code == 0 and "removed" in out, err
    code, _, err = await meterline(
        stack, "account", "identity", "remove", account_id, "--msisdn", number
    )
    assert code == 2 and "has no identity" in err
