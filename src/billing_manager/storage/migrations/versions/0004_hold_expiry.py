"""Every hold carries an expiry; reserve takes a time to live

Revision ID: 0004
Revises: 0003

- `holds.expires_at`: when an open hold is released by the billing manager's sweep. Holds
  made before this migration (and by a billing manager of the previous version, whose
  `ledger_reserve` does not know it) get 24 hours from their insert.
- `ledger_reserve` gains `p_ttl_seconds` (an overload; the old one stays for a billing
  manager of the previous version): the expiry is the database's now() plus it, the
  same clock the sweep compares with.
- `ledger_movement` gains the hold's expiry.
- The sweep itself releases each expired hold through `ledger_settle` with a key per hold
  (`hold-expired:<hold id>`), so that it is released at most once, by whichever billing
  manager gets there first.
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

EXPIRY = """
ALTER TABLE holds ADD COLUMN expires_at timestamptz NOT NULL
    DEFAULT now() + interval '24 hours';
CREATE INDEX holds_open_expiry_idx ON holds (expires_at) WHERE status = 'OPEN';

ALTER TYPE ledger_movement ADD ATTRIBUTE hold_expires_at timestamptz;

CREATE OR REPLACE FUNCTION ledger_movement_of(
    p_outcome text, a accounts, t ledger_transactions, h holds
) RETURNS ledger_movement LANGUAGE sql IMMUTABLE AS $$
    SELECT ROW(p_outcome,
               (a).account_id, (a).display_name, (a).currency, (a).credit_limit_micros,
               (a).status, (a).created_at, (a).available_micros, (a).held_micros,
               (t).transaction_id, (t).kind, (t).amount_micros, (t).idempotency_key,
               (t).fingerprint, (t).created_at,
               (h).hold_id, (h).amount_micros, (h).captured_micros, (h).released_micros,
               (h).status, (h).reference, (h).created_at, (h).expires_at)::ledger_movement;
$$;

-- As ledger_reserve of 0002, with the hold's time to live.
CREATE FUNCTION ledger_reserve(
    p_account_id text, p_amount bigint, p_key text, p_fingerprint text,
    p_transaction_id text, p_hold_id text, p_reference text,
    p_ledger_accounts text[], p_amounts bigint[], p_ttl_seconds bigint
) RETURNS ledger_movement LANGUAGE plpgsql AS $$
DECLARE
    a accounts%ROWTYPE;
    t ledger_transactions%ROWTYPE;
    h holds%ROWTYPE;
    available_change numeric;
BEGIN
    SELECT * INTO a FROM accounts WHERE account_id = p_account_id FOR UPDATE;
    IF NOT FOUND THEN
        RETURN ledger_movement_of('ACCOUNT_NOT_FOUND', a, t, h);
    END IF;
    SELECT * INTO t FROM ledger_transactions WHERE idempotency_key = p_key;
    IF FOUND THEN
        IF t.hold_id IS NOT NULL THEN
            SELECT * INTO h FROM holds WHERE hold_id = t.hold_id;
        END IF;
        RETURN ledger_movement_of('RECORDED', a, t, h);
    END IF;
    IF a.status <> 'ACTIVE' THEN
        RETURN ledger_movement_of('ACCOUNT_SUSPENDED', a, t, h);
    END IF;
    SELECT coalesce(sum(x.amount_micros)
                    FILTER (WHERE x.ledger_account = 'CUSTOMER_AVAILABLE'), 0)
      INTO available_change
      FROM unnest(p_ledger_accounts, p_amounts) AS x(ledger_account, amount_micros);
    IF a.available_micros + available_change < -a.credit_limit_micros THEN
        RETURN ledger_movement_of('INSUFFICIENT_FUNDS', a, t, h);
    END IF;
    INSERT INTO holds (hold_id, account_id, amount_micros, status, reference, expires_at)
    VALUES (p_hold_id, p_account_id, p_amount, 'OPEN', p_reference,
            now() + make_interval(secs => p_ttl_seconds))
    RETURNING * INTO h;
    t := ledger_append(p_account_id, 'RESERVE', p_amount, p_key, p_fingerprint,
                       p_transaction_id, p_hold_id, p_reference, p_ledger_accounts, p_amounts);
    SELECT * INTO a FROM accounts WHERE account_id = p_account_id;
    RETURN ledger_movement_of('DONE', a, t, h);
END;
$$;
"""


def upgrade() -> None:
    op.execute(EXPIRY)


def downgrade() -> None:
    op.execute(
        """
        DROP FUNCTION ledger_reserve(text, bigint, text, text, text, text, text, text[],
                                     bigint[], bigint);
        ALTER TYPE ledger_movement DROP ATTRIBUTE hold_expires_at;
        CREATE OR REPLACE FUNCTION ledger_movement_of(
            p_outcome text, a accounts, t ledger_transactions, h holds
        ) RETURNS ledger_movement LANGUAGE sql IMMUTABLE AS $$
            SELECT ROW(p_outcome,
                       (a).account_id, (a).display_name, (a).currency, (a).credit_limit_micros,
                       (a).status, (a).created_at, (a).available_micros, (a).held_micros,
                       (t).transaction_id, (t).kind, (t).amount_micros, (t).idempotency_key,
                       (t).fingerprint, (t).created_at,
                       (h).hold_id, (h).amount_micros, (h).captured_micros,
                       (h).released_micros, (h).status, (h).reference,
                       (h).created_at)::ledger_movement;
        $$;
        DROP INDEX holds_open_expiry_idx;
        ALTER TABLE holds DROP COLUMN expires_at;
        """
    )
