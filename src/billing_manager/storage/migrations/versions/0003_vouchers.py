"""Prepaid vouchers, and their redemption as one statement (a function)

Revision ID: 0003
Revises: 0002

- `vouchers` keeps each voucher by a keyed hash of its code (HMAC-SHA256 with the
  installation's voucher secret): the codes themselves are shown once, when made, and
  are never stored. A redeemed voucher names the account and the FUND transaction.
- `ledger_redeem_voucher` redeems one in one round trip, like the movements of 0002: lock
  the account row, then the voucher row (so two redemptions of one code, on any
  accounts, apply one at a time), look up the idempotency key (the voucher's), check the
  voucher (not used by another account, not expired, same currency) and the account
  (active), then write the FUND transaction with the entries the caller computed and
  mark the voucher used, in the same transaction. A refusal writes nothing.
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

VOUCHERS = """
CREATE TABLE vouchers (
    code_hash text PRIMARY KEY,
    batch_id text NOT NULL,
    amount_micros bigint NOT NULL CHECK (amount_micros > 0),
    currency varchar(3) NOT NULL,
    expires_at timestamptz,
    created_at timestamptz NOT NULL DEFAULT now(),
    redeemed_at timestamptz,
    account_id text REFERENCES accounts (account_id),
    transaction_id text REFERENCES ledger_transactions (transaction_id),
    CHECK ((redeemed_at IS NULL) = (transaction_id IS NULL))
);
CREATE INDEX vouchers_batch_idx ON vouchers (batch_id);

-- p_amount and p_currency: the voucher's, as the caller read them (they never change).
CREATE FUNCTION ledger_redeem_voucher(
    p_code_hash text, p_account_id text, p_amount bigint, p_currency text, p_key text,
    p_fingerprint text, p_transaction_id text, p_reference text,
    p_ledger_accounts text[], p_amounts bigint[]
) RETURNS ledger_movement LANGUAGE plpgsql AS $$
DECLARE
    a accounts%ROWTYPE;
    t ledger_transactions%ROWTYPE;
    h holds%ROWTYPE;
    v vouchers%ROWTYPE;
BEGIN
    SELECT * INTO a FROM accounts WHERE account_id = p_account_id FOR UPDATE;
    IF NOT FOUND THEN
        RETURN ledger_movement_of('ACCOUNT_NOT_FOUND', a, t, h);
    END IF;
    SELECT * INTO v FROM vouchers WHERE code_hash = p_code_hash FOR UPDATE;
    IF NOT FOUND THEN
        RETURN ledger_movement_of('VOUCHER_UNKNOWN', a, t, h);
    END IF;
    IF v.amount_micros <> p_amount OR v.currency <> p_currency THEN
        RAISE EXCEPTION 'voucher % changed under its reader', v.batch_id;
    END IF;
    -- After the voucher's lock: a redemption that won the race has committed by now.
    SELECT * INTO t FROM ledger_transactions WHERE idempotency_key = p_key;
    IF FOUND THEN
        RETURN ledger_movement_of('RECORDED', a, t, h);
    END IF;
    IF v.redeemed_at IS NOT NULL THEN
        RETURN ledger_movement_of('VOUCHER_USED', a, t, h);
    END IF;
    IF v.expires_at IS NOT NULL AND v.expires_at <= now() THEN
        RETURN ledger_movement_of('VOUCHER_EXPIRED', a, t, h);
    END IF;
    IF v.currency <> a.currency THEN
        RETURN ledger_movement_of('CURRENCY_MISMATCH', a, t, h);
    END IF;
    IF a.status <> 'ACTIVE' THEN
        RETURN ledger_movement_of('ACCOUNT_SUSPENDED', a, t, h);
    END IF;
    t := ledger_append(p_account_id, 'FUND', p_amount, p_key, p_fingerprint,
                       p_transaction_id, NULL, p_reference, p_ledger_accounts, p_amounts);
    UPDATE vouchers
       SET redeemed_at = now(), account_id = p_account_id, transaction_id = p_transaction_id
     WHERE code_hash = p_code_hash;
    SELECT * INTO a FROM accounts WHERE account_id = p_account_id;
    RETURN ledger_movement_of('DONE', a, t, h);
END;
$$;
"""


def upgrade() -> None:
    op.execute(VOUCHERS)


def downgrade() -> None:
    op.execute(
        """
        DROP FUNCTION ledger_redeem_voucher(text, text, bigint, text, text, text, text, text,
                                            text[], bigint[]);
        DROP TABLE vouchers;
        """
    )
