"""Adjustments and refunds by an operator, as new ledger transactions with their reason

Revision ID: 0006
Revises: 0005

- `ledger_adjust`: lock the account, look up the key, refuse a closed account, and a
  debit that would take available below minus the credit limit (zero for a prepaid
  account); then the ADJUST transaction with the caller's entries, its reason in
  `reference`.
- `ledger_refund`: lock the account, look up the key, then lock the hold: it must be
  CAPTURED, and its refunds with this one at most what it captured; then the REFUND
  transaction (`hold_id` set, so a hold's refunds are the REFUND transactions naming it).
- `ledger_movement` gains the transaction's reference (`transaction_reference`).
"""

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

MOVEMENT_OF = """
CREATE OR REPLACE FUNCTION ledger_movement_of(
    p_outcome text, a accounts, t ledger_transactions, h holds
) RETURNS ledger_movement LANGUAGE sql IMMUTABLE AS $$
    SELECT ROW(p_outcome,
               (a).account_id, (a).display_name, (a).currency, (a).credit_limit_micros,
               (a).status, (a).created_at, (a).available_micros, (a).held_micros,
               (t).transaction_id, (t).kind, (t).amount_micros, (t).idempotency_key,
               (t).fingerprint, (t).created_at,
               (h).hold_id, (h).amount_micros, (h).captured_micros, (h).released_micros,
               (h).status, (h).reference, (h).created_at, (h).expires_at
               {reference})::ledger_movement;
$$;
"""

FUNCTIONS = """
CREATE FUNCTION ledger_adjust(
    p_account_id text, p_amount bigint, p_key text, p_fingerprint text,
    p_transaction_id text, p_reason text, p_ledger_accounts text[], p_amounts bigint[]
) RETURNS ledger_movement LANGUAGE plpgsql AS $$
DECLARE
    a accounts%ROWTYPE;
    t ledger_transactions%ROWTYPE;
    h holds%ROWTYPE;
BEGIN
    SELECT * INTO a FROM accounts WHERE account_id = p_account_id FOR UPDATE;
    IF NOT FOUND THEN
        RETURN ledger_movement_of('ACCOUNT_NOT_FOUND', a, t, h);
    END IF;
    SELECT * INTO t FROM ledger_transactions WHERE idempotency_key = p_key;
    IF FOUND THEN
        RETURN ledger_movement_of('RECORDED', a, t, h);
    END IF;
    IF a.status = 'CLOSED' THEN
        RETURN ledger_movement_of('ACCOUNT_CLOSED', a, t, h);
    END IF;
    IF p_amount < 0 AND a.available_micros + p_amount < -a.credit_limit_micros THEN
        RETURN ledger_movement_of('INSUFFICIENT_FUNDS', a, t, h);
    END IF;
    t := ledger_append(p_account_id, 'ADJUST', p_amount, p_key, p_fingerprint,
                       p_transaction_id, NULL, p_reason, p_ledger_accounts, p_amounts);
    SELECT * INTO a FROM accounts WHERE account_id = p_account_id;
    RETURN ledger_movement_of('DONE', a, t, h);
END;
$$;

CREATE FUNCTION ledger_refund(
    p_hold_id text, p_account_id text, p_amount bigint, p_key text, p_fingerprint text,
    p_transaction_id text, p_reason text, p_ledger_accounts text[], p_amounts bigint[]
) RETURNS ledger_movement LANGUAGE plpgsql AS $$
DECLARE
    a accounts%ROWTYPE;
    t ledger_transactions%ROWTYPE;
    h holds%ROWTYPE;
    refunded numeric;
BEGIN
    SELECT * INTO a FROM accounts WHERE account_id = p_account_id FOR UPDATE;
    IF NOT FOUND THEN
        RETURN ledger_movement_of('ACCOUNT_NOT_FOUND', a, t, h);
    END IF;
    SELECT * INTO t FROM ledger_transactions WHERE idempotency_key = p_key;
    IF FOUND THEN
        SELECT * INTO h FROM holds WHERE hold_id = p_hold_id;
        RETURN ledger_movement_of('RECORDED', a, t, h);
    END IF;
    SELECT * INTO h FROM holds WHERE hold_id = p_hold_id AND account_id = p_account_id;
    IF NOT FOUND THEN
        RETURN ledger_movement_of('HOLD_NOT_FOUND', a, t, h);
    END IF;
    IF a.status = 'CLOSED' THEN
        RETURN ledger_movement_of('ACCOUNT_CLOSED', a, t, h);
    END IF;
    IF h.status <> 'CAPTURED' THEN
        RETURN ledger_movement_of('HOLD_NOT_CAPTURED', a, t, h);
    END IF;
    -- Every refund of this hold locks this account first: none is being written now.
    SELECT coalesce(sum(amount_micros), 0) INTO refunded
      FROM ledger_transactions
     WHERE account_id = p_account_id AND kind = 'REFUND' AND hold_id = p_hold_id;
    IF refunded + p_amount > h.captured_micros THEN
        RETURN ledger_movement_of('REFUND_TOO_LARGE', a, t, h);
    END IF;
    t := ledger_append(p_account_id, 'REFUND', p_amount, p_key, p_fingerprint,
                       p_transaction_id, p_hold_id, p_reason, p_ledger_accounts, p_amounts);
    SELECT * INTO a FROM accounts WHERE account_id = p_account_id;
    RETURN ledger_movement_of('DONE', a, t, h);
END;
$$;
"""


def upgrade() -> None:
    op.execute("ALTER TYPE ledger_movement ADD ATTRIBUTE transaction_reference text;")
    op.execute(MOVEMENT_OF.replace("{reference}", ", (t).reference"))
    op.execute(FUNCTIONS)


def downgrade() -> None:
    op.execute(
        """
        DROP FUNCTION ledger_refund(text, text, bigint, text, text, text, text, text[],
                                    bigint[]);
        DROP FUNCTION ledger_adjust(text, bigint, text, text, text, text, text[], bigint[]);
        ALTER TYPE ledger_movement DROP ATTRIBUTE transaction_reference;
        """
    )
    op.execute(MOVEMENT_OF.replace("{reference}", ""))
