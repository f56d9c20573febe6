"""Account status changes (suspend, reactivate, close with a zero balance); no funding of
an account that is not active

Revision ID: 0005
Revises: 0004

- `ledger_set_account_status` changes an account's status under its row lock: a closed
  account stays closed; closing needs a zero balance and no open holds (checked on the
  locked row, so no movement slips in between).
- `ledger_fund` (same signature as in 0002) refuses an account that is not ACTIVE, after
  the key lookup: a repeat of a funding made before the suspension still answers its
  first result.
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

FUND_0002 = """
CREATE OR REPLACE FUNCTION ledger_fund(
    p_account_id text, p_amount bigint, p_key text, p_fingerprint text,
    p_transaction_id text, p_ledger_accounts text[], p_amounts bigint[]
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
    {status_check}
    t := ledger_append(p_account_id, 'FUND', p_amount, p_key, p_fingerprint,
                       p_transaction_id, NULL, '', p_ledger_accounts, p_amounts);
    SELECT * INTO a FROM accounts WHERE account_id = p_account_id;
    RETURN ledger_movement_of('DONE', a, t, h);
END;
$$;
"""

STATUS_CHECK = """IF a.status <> 'ACTIVE' THEN
        RETURN ledger_movement_of('ACCOUNT_SUSPENDED', a, t, h);
    END IF;"""

SET_STATUS = """
CREATE FUNCTION ledger_set_account_status(p_account_id text, p_status text)
RETURNS ledger_movement LANGUAGE plpgsql AS $$
DECLARE
    a accounts%ROWTYPE;
    t ledger_transactions%ROWTYPE;
    h holds%ROWTYPE;
BEGIN
    SELECT * INTO a FROM accounts WHERE account_id = p_account_id FOR UPDATE;
    IF NOT FOUND THEN
        RETURN ledger_movement_of('ACCOUNT_NOT_FOUND', a, t, h);
    END IF;
    IF a.status = p_status THEN
        RETURN ledger_movement_of('DONE', a, t, h);
    END IF;
    IF a.status = 'CLOSED' THEN
        RETURN ledger_movement_of('ACCOUNT_CLOSED', a, t, h);
    END IF;
    IF p_status = 'CLOSED' AND (a.available_micros <> 0 OR a.held_micros <> 0) THEN
        RETURN ledger_movement_of('BALANCE_NOT_ZERO', a, t, h);
    END IF;
    UPDATE accounts SET status = p_status WHERE account_id = p_account_id RETURNING * INTO a;
    RETURN ledger_movement_of('DONE', a, t, h);
END;
$$;
"""


def upgrade() -> None:
    op.execute(FUND_0002.replace("{status_check}", STATUS_CHECK))
    op.execute(SET_STATUS)


def downgrade() -> None:
    op.execute("DROP FUNCTION ledger_set_account_status(text, text);")
    op.execute(FUND_0002.replace("{status_check}", ""))
