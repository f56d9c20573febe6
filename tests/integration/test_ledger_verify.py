"""`meterline ledger verify` on the real PostgreSQL: a ledger that went through every kind
of movement (fundings, vouchers, holds captured, released and expired, adjustments,
refunds, a settled session) passes; a running balance moved without entries, or a
service record whose charge is not what its holds captured, is named, and the command
exits 1."""

from __future__ import annotations

import uuid

import psycopg
import pytest
from google.protobuf.duration_pb2 import Duration

from billing_manager.storage.ledger_audit import verify
from meterline.billing.v1 import billing_pb2
from meterline.kernel.db import libpq_dsn
from tests.integration.test_cli import meterline
from tests.support.clients import OPERATOR, Stubs, new_account
from tests.support.session_calls import own_device, start, stop, voice_tariff
from tests.support.stack import InProcessStack
from tests.support.stores import StoreUrls

pytestmark = pytest.mark.integration


def _key() -> str:
    return uuid.uuid4().hex


async def _busy_ledger(api: Stubs) -> tuple[list[str], str]:
    """Accounts that went through every kind of movement, and a settled session's id."""
    account_id = await new_account(api.billing, funded_micros=5_000_000)
    postpaid = await new_account(api.billing, credit_limit_micros=1_000_000)
    vouchers = await api.billing.CreateVouchers(
        billing_pb2.CreateVouchersRequest(count=1, amount_micros=2_000_000, currency="EUR"),
        metadata=OPERATOR,
    )
    await api.billing.RedeemVoucher(
        billing_pb2.RedeemVoucherRequest(account_id=account_id, code=vouchers.codes[0]),
        metadata=OPERATOR,
    )
    holds = []
    for who in (account_id, postpaid):
        for _ in range(3):
            hold = await api.billing.Reserve(
                billing_pb2.ReserveRequest(
                    account_id=who,
                    amount_micros=300_000,
                    idempotency_key=_key(),
                    ttl=Duration(seconds=3600),
                ),
                metadata=OPERATOR,
            )
            holds.append(hold.hold_id)
    captured = holds[0::3]
    for hold_id in captured:
        await api.billing.Capture(
            billing_pb2.CaptureRequest(
                hold_id=hold_id, amount_micros=200_000, idempotency_key=_key()
            ),
            metadata=OPERATOR,
        )
    for hold_id in holds[1::3]:
        await api.billing.Release(
            billing_pb2.ReleaseRequest(hold_id=hold_id, idempotency_key=_key()), metadata=OPERATOR
        )
    await api.billing.Refund(
        billing_pb2.RefundRequest(
            hold_id=captured[0], amount_micros=50_000, reason="r", idempotency_key=_key()
        ),
        metadata=OPERATOR,
    )
    await api.billing.AdjustAccount(
        billing_pb2.AdjustAccountRequest(
            account_id=postpaid, amount_micros=-100_000, reason="fee", idempotency_key=_key()
        ),
        metadata=OPERATOR,
    )
    prefix = f"+4179{uuid.uuid4().int % 10**6:06d}"
    await voice_tariff(api, prefix, 1_000)
    device = own_device(account_id)
    session_id = await start(api, account_id, prefix + "1", device)
    await stop(api, session_id, 42, device)
    return [account_id, postpaid], session_id


async def test_a_busy_ledger_verifies_and_a_broken_one_is_named(
    api: Stubs, stack: InProcessStack, stores: StoreUrls
) -> None:
    accounts, session_id = await _busy_ledger(api)
    audit = verify(stores.billing_url, stores.service_url, accounts)
    assert audit.mismatches == []
    assert (audit.accounts, audit.holds, audit.sessions) == (2, 6 + 1, 1)
    scope = [arg for account_id in accounts for arg in ("--account", account_id)]
    code, out, err = await meterline(
        stack,
        *("ledger", "verify", "--database-url", stores.billing_url),
        *("--service-database-url", stores.service_url, *scope),
    )
    assert code == 0, err
    assert out.strip().endswith(": OK")

    with psycopg.connect(libpq_dsn(stores.billing_url)) as conn:
        conn.execute(
            "UPDATE accounts SET available_micros = available_micros + 7 WHERE account_id = %s",
            (accounts[0],),
        )
    with psycopg.connect(libpq_dsn(stores.service_url)) as conn:
        conn.execute(
            "UPDATE service_records SET charged_micros = charged_micros + 1 WHERE session_id = %s",
            (session_id,),
        )
    code, out, err = await meterline(
        stack,
        *("ledger", "verify", "--database-url", stores.billing_url),
        *("--service-database-url", stores.service_url, *scope),
    )
    assert code == 1, err
    lines = out.strip().splitlines()
    assert any(
        line.startswith(f"MISMATCH account {accounts[0]}: running available") for line in lines
    )
    assert any(f"MISMATCH session {session_id}" in line for line in lines)
    assert lines[-1].endswith("mismatches")
