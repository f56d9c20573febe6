"""Running balances on the account row, kept by the ledger itself; each money movement
one statement (a function)

Revision ID: 0002
Revises: 0001

- `accounts.available_micros` and `accounts.held_micros` are the sums of the account's
  CUSTOMER_AVAILABLE and CUSTOMER_HELD entries. They are back-filled from the entries
  here, and from then on a statement trigger on `ledger_entries` moves them by the sums
  of every statement's new entries, in the same transaction: no writer of entries can
  forget them, whichever code it runs. The entries stay the source of truth (append-only);
  `ledger_running_balance_drift()` lists every account whose running balances differ
  from the sums of its entries (none, always).
- `ledger_fund`, `ledger_reserve` and `ledger_settle` make one movement each, in one
  round trip: lock the account row, look up the idempotency key, check what only the
  locked row can tell (the account exists, is active, can pay; the hold is open), then
  write the transaction with the entries the caller computed (the domain rules) and the
  hold. They return what they found or did as one `ledger_movement` row; a refusal
  writes nothing and says why (`outcome`), and the caller turns it into its error.
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

RUNNING_BALANCES = """
-- No account row is locked for a movement, and no entry written, while the balances are
-- back-filled: a billing manager of the previous version waits for this migration. The
-- accounts first, as every movement locks them before it writes entries.
LOCK TABLE accounts IN ACCESS EXCLUSIVE MODE;
LOCK TABLE ledger_entries IN SHARE ROW EXCLUSIVE MODE;

ALTER TABLE accounts
    ADD COLUMN available_micros bigint NOT NULL DEFAULT 0,
    ADD COLUMN held_micros bigint NOT NULL DEFAULT 0;

UPDATE accounts a
   SET available_micros = s.available, held_micros = s.held
  FROM (SELECT account_id,
               coalesce(sum(amount_micros)
                        FILTER (WHERE ledger_account = 'CUSTOMER_AVAILABLE'), 0) AS available,
               coalesce(sum(amount_micros)
                        FILTER (WHERE ledger_account = 'CUSTOMER_HELD'), 0) AS held
          FROM ledger_entries
         GROUP BY account_id) s
 WHERE a.account_id = s.account_id;

-- Every statement that writes entries moves the running balances of their accounts by
-- the sums of those entries (once per statement, not per row).
CREATE FUNCTION ledger_move_running_balances() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE accounts a
       SET available_micros = a.available_micros + s.available,
           held_micros = a.held_micros + s.held
      FROM (SELECT account_id,
                   coalesce(sum(amount_micros)
                            FILTER (WHERE ledger_account = 'CUSTOMER_AVAILABLE'), 0) AS available,
                   coalesce(sum(amount_micros)
                            FILTER (WHERE ledger_account = 'CUSTOMER_HELD'), 0) AS held
              FROM added
             GROUP BY account_id) s
     WHERE a.account_id = s.account_id
       AND (s.available <> 0 OR s.held <> 0);
    RETURN NULL;
END;
$$;
CREATE TRIGGER ledger_entries_running_balances AFTER INSERT ON ledger_entries
    REFERENCING NEW TABLE AS added
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_move_running_balances();

-- The check: accounts whose running balances are not the sums of their entries.
CREATE FUNCTION ledger_running_balance_drift(p_account_id text DEFAULT NULL)
RETURNS TABLE (
    account_id text,
    available_micros bigint,
    entries_available_micros numeric,
    held_micros bigint,
    entries_held_micros numeric
) LANGUAGE sql STABLE AS $$
    SELECT a.account_id, a.available_micros, coalesce(s.available, 0),
           a.held_micros, coalesce(s.held, 0)
      FROM accounts a
      LEFT JOIN (SELECT e.account_id,
                        sum(e.amount_micros)
                            FILTER (WHERE e.ledger_account = 'CUSTOMER_AVAILABLE') AS available,
                        sum(e.amount_micros)
                            FILTER (WHERE e.ledger_account = 'CUSTOMER_HELD') AS held
                   FROM ledger_entries e
                  WHERE p_account_id IS NULL OR e.account_id = p_account_id
                  GROUP BY e.account_id) s ON s.account_id = a.account_id
     WHERE (p_account_id IS NULL OR a.account_id = p_account_id)
       AND (a.available_micros <> coalesce(s.available, 0)
            OR a.held_micros <> coalesce(s.held, 0))
     ORDER BY a.account_id;
$$;
"""

MOVEMENTS = """
CREATE TYPE ledger_movement AS (
    outcome text,
    account_id text,
    display_name text,
    currency text,
    credit_limit_micros bigint,
    account_status text,
    account_created_at timestamptz,
    available_micros bigint,
    held_micros bigint,
    transaction_id text,
    transaction_kind text,
    transaction_amount_micros bigint,
    idempotency_key text,
    fingerprint text,
    transaction_created_at timestamptz,
    hold_id text,
    hold_amount_micros bigint,
    captured_micros bigint,
    released_micros bigint,
    hold_status text,
    hold_reference text,
    hold_created_at timestamptz
);

CREATE FUNCTION ledger_movement_of(
    p_outcome text, a accounts, t ledger_transactions, h holds
) RETURNS ledger_movement LANGUAGE sql IMMUTABLE AS $$
    SELECT ROW(p_outcome,
               (a).account_id, (a).display_name, (a).currency, (a).credit_limit_micros,
               (a).status, (a).created_at, (a).available_micros, (a).held_micros,
               (t).transaction_id, (t).kind, (t).amount_micros, (t).idempotency_key,
               (t).fingerprint, (t).created_at,
               (h).hold_id, (h).amount_micros, (h).captured_micros, (h).released_micros,
               (h).status, (h).reference, (h).created_at)::ledger_movement;
$$;

-- The transaction and its entries (in the order given). The entries must balance; the
-- trigger above moves the running balances.
CREATE FUNCTION ledger_append(
    p_account_id text, p_kind text, p_amount bigint, p_key text, p_fingerprint text,
    p_transaction_id text, p_hold_id text, p_reference text,
    p_ledger_accounts text[], p_amounts bigint[]
) RETURNS ledger_transactions LANGUAGE plpgsql AS $$
DECLARE
    t ledger_transactions%ROWTYPE;
BEGIN
    IF cardinality(p_amounts) = 0
       OR cardinality(p_amounts) <> cardinality(p_ledger_accounts)
       OR (SELECT sum(x) FROM unnest(p_amounts) AS x) <> 0 THEN
        RAISE EXCEPTION 'unbalanced ledger transaction: % %', p_ledger_accounts, p_amounts;
    END IF;
    INSERT INTO ledger_transactions (transaction_id, kind, account_id, amount_micros,
                                     idempotency_key, fingerprint, hold_id, reference)
    VALUES (p_transaction_id, p_kind, p_account_id, p_amount, p_key, p_fingerprint,
            p_hold_id, p_reference)
    RETURNING * INTO t;
    INSERT INTO ledger_entries (transaction_id, kind, account_id, ledger_account,
                                amount_micros, hold_id)
    SELECT p_transaction_id, p_kind, p_account_id, x.ledger_account, x.amount_micros, p_hold_id
      FROM unnest(p_ledger_accounts, p_amounts) WITH ORDINALITY
           AS x(ledger_account, amount_micros, position)
     ORDER BY x.position;
    RETURN t;
END;
$$;

-- FUND: lock, key, write. A repeat returns the first transaction and the account now.
CREATE FUNCTION ledger_fund(
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
    t := ledger_append(p_account_id, 'FUND', p_amount, p_key, p_fingerprint,
                       p_transaction_id, NULL, '', p_ledger_accounts, p_amounts);
    SELECT * INTO a FROM accounts WHERE account_id = p_account_id;
    RETURN ledger_movement_of('DONE', a, t, h);
END;
$$;

-- RESERVE: lock, key, active, funds, then the hold and its transaction. The funds check
-- is the domain's rule (ensure_can_reserve), applied here because only the locked row
-- knows the balance: available may go down to minus the credit limit, no further.
CREATE FUNCTION ledger_reserve(
    p_account_id text, p_amount bigint, p_key text, p_fingerprint text,
    p_transaction_id text, p_hold_id text, p_reference text,
    p_ledger_accounts text[], p_amounts bigint[]
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
    INSERT INTO holds (hold_id, account_id, amount_micros, status, reference)
    VALUES (p_hold_id, p_account_id, p_amount, 'OPEN', p_reference)
    RETURNING * INTO h;
    t := ledger_append(p_account_id, 'RESERVE', p_amount, p_key, p_fingerprint,
                       p_transaction_id, p_hold_id, p_reference, p_ledger_accounts, p_amounts);
    SELECT * INTO a FROM accounts WHERE account_id = p_account_id;
    RETURN ledger_movement_of('DONE', a, t, h);
END;
$$;

-- CAPTURE or RELEASE of an open hold (p_held: its amount, as the caller read it). With
-- no entries (NULL) nothing is written: the caller only wants the checks made before its
-- own refusal ('CHECKED'), so that a repeat or a closed hold answers first.
CREATE FUNCTION ledger_settle(
    p_hold_id text, p_account_id text, p_held bigint, p_kind text, p_amount bigint,
    p_key text, p_fingerprint text, p_transaction_id text,
    p_status text, p_captured bigint, p_released bigint,
    p_ledger_accounts text[], p_amounts bigint[]
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
        SELECT * INTO h FROM holds WHERE hold_id = p_hold_id;
        RETURN ledger_movement_of('RECORDED', a, t, h);
    END IF;
    SELECT * INTO h FROM holds
     WHERE hold_id = p_hold_id AND account_id = p_account_id FOR UPDATE;
    IF NOT FOUND THEN
        RETURN ledger_movement_of('HOLD_NOT_FOUND', a, t, h);
    END IF;
    IF h.amount_micros <> p_held THEN
        RAISE EXCEPTION 'hold % is of % micros, not %', p_hold_id, h.amount_micros, p_held;
    END IF;
    IF h.status <> 'OPEN' THEN
        RETURN ledger_movement_of('HOLD_CLOSED', a, t, h);
    END IF;
    IF p_ledger_accounts IS NULL THEN
        RETURN ledger_movement_of('CHECKED', a, t, h);
    END IF;
    t := ledger_append(p_account_id, p_kind, p_amount, p_key, p_fingerprint,
                       p_transaction_id, p_hold_id, h.reference, p_ledger_accounts, p_amounts);
    UPDATE holds
       SET status = p_status, captured_micros = p_captured, released_micros = p_released,
           closed_at = now()
     WHERE hold_id = p_hold_id
    RETURNING * INTO h;
    RETURN ledger_movement_of('DONE', a, t, h);
END;
$$;
"""


def upgrade() -> None:
    op.execute(RUNNING_BALANCES)
    op.execute(MOVEMENTS)


def downgrade() -> None:
    op.execute(
        """
        DROP FUNCTION ledger_settle(text, text, bigint, text, bigint, text, text, text, text,
                                    bigint, bigint, text[], bigint[]);
        DROP FUNCTION ledger_reserve(text, bigint, text, text, text, text, text, text[],
                                     bigint[]);
        DROP FUNCTION ledger_fund(text, bigint, text, text, text, text[], bigint[]);
        DROP FUNCTION ledger_append(text, text, bigint, text, text, text, text, text, text[],
                                    bigint[]);
        DROP FUNCTION ledger_movement_of(text, accounts, ledger_transactions, holds);
        DROP TYPE ledger_movement;
        DROP FUNCTION ledger_running_balance_drift(text);
        DROP TRIGGER ledger_entries_running_balances ON ledger_entries;
        DROP FUNCTION ledger_move_running_balances();
        ALTER TABLE accounts DROP COLUMN available_micros, DROP COLUMN held_micros;
        """
    )
