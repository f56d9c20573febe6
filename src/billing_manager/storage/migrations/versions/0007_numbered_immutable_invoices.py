"""Numbered, immutable bills with their charges, sessions and movements; the usage
summaries of captures

Revision ID: 0007
Revises: 0006

- `capture_usage`: what a captured hold paid for (session, service type, endpoint,
  application, units, start and end), written by the billing manager right after a
  Capture that carries a `UsageSummary`; one per hold (a hold is captured once).
- `invoice_counters`: the last number issued per year. A bill takes its number from this
  row, locked by `INSERT ... ON CONFLICT DO UPDATE` in the transaction that inserts the
  bill: a rollback gives the number back, so numbers have no gaps.
- `invoices` gains its number (`INV-2026-000123`, unique), the account's name and the
  balances of the period; `invoice_charges`, `invoice_sessions`, `invoice_movements`
  hold its lines per service type and application, the sessions behind them, and the
  fundings, adjustments and refunds of the period.
- Bills made before this revision get numbers in the order they were made, per year,
  and their balances from the ledger; their charges stay empty (their lines remain).
- A trigger refuses UPDATE and DELETE on every invoice table: an issued bill never
  changes.
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

INVOICE_TABLES = (
    "invoices",
    "invoice_lines",
    "invoice_charges",
    "invoice_sessions",
    "invoice_movements",
)

BACKFILL = """
WITH numbered AS (
    SELECT invoice_id, extract(year FROM created_at AT TIME ZONE 'UTC')::int AS year,
           row_number() OVER (PARTITION BY extract(year FROM created_at AT TIME ZONE 'UTC')
                              ORDER BY created_at, invoice_id) AS seq
      FROM invoices
)
UPDATE invoices i
   SET number = 'INV-' || n.year || '-' || lpad(n.seq::text, 6, '0')
  FROM numbered n
 WHERE i.invoice_id = n.invoice_id;

INSERT INTO invoice_counters (year, last_number)
SELECT extract(year FROM created_at AT TIME ZONE 'UTC')::int, count(*)
  FROM invoices GROUP BY 1;

UPDATE invoices i
   SET account_name = a.display_name,
       opening_balance_micros = coalesce((
           SELECT sum(e.amount_micros) FROM ledger_entries e
            WHERE e.account_id = i.account_id
              AND e.ledger_account IN ('CUSTOMER_AVAILABLE', 'CUSTOMER_HELD')
              AND e.created_at < i.period_start), 0),
       closing_balance_micros = coalesce((
           SELECT sum(e.amount_micros) FROM ledger_entries e
            WHERE e.account_id = i.account_id
              AND e.ledger_account IN ('CUSTOMER_AVAILABLE', 'CUSTOMER_HELD')
              AND e.created_at < i.period_end), 0),
       funded_micros = coalesce((
           SELECT sum(e.amount_micros) FROM ledger_entries e
            WHERE e.account_id = i.account_id AND e.kind = 'FUND'
              AND e.ledger_account IN ('CUSTOMER_AVAILABLE', 'CUSTOMER_HELD')
              AND e.created_at >= i.period_start AND e.created_at < i.period_end), 0),
       adjusted_micros = coalesce((
           SELECT sum(e.amount_micros) FROM ledger_entries e
            WHERE e.account_id = i.account_id AND e.kind = 'ADJUST'
              AND e.ledger_account IN ('CUSTOMER_AVAILABLE', 'CUSTOMER_HELD')
              AND e.created_at >= i.period_start AND e.created_at < i.period_end), 0),
       refunded_micros = coalesce((
           SELECT sum(e.amount_micros) FROM ledger_entries e
            WHERE e.account_id = i.account_id AND e.kind = 'REFUND'
              AND e.ledger_account IN ('CUSTOMER_AVAILABLE', 'CUSTOMER_HELD')
              AND e.created_at >= i.period_start AND e.created_at < i.period_end), 0)
  FROM accounts a
 WHERE a.account_id = i.account_id;
"""

IMMUTABLE = """
CREATE FUNCTION invoices_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'an issued invoice never changes: % on % is not allowed',
        TG_OP, TG_TABLE_NAME;
END;
$$;
"""


def _created() -> sa.Column:  # type: ignore[type-arg]
    return sa.Column(
        "created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
    )


def upgrade() -> None:
    op.create_table(
        "capture_usage",
        sa.Column("hold_id", sa.String(64), sa.ForeignKey("holds.hold_id"), primary_key=True),
        sa.Column("session_id", sa.String(200), nullable=False),
        sa.Column("service_type", sa.String(64), nullable=False),
        sa.Column("endpoint", sa.String(256), nullable=False),
        sa.Column("application_id", sa.String(256), nullable=False),
        sa.Column("units", sa.BigInteger, nullable=False),
        sa.Column("unit", sa.String(32), nullable=False),
        sa.Column("start_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("end_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("charged_micros", sa.BigInteger, nullable=False),
        _created(),
        sa.CheckConstraint("units >= 0 AND charged_micros >= 0", name="capture_usage_non_negative"),
    )
    op.create_table(
        "invoice_counters",
        sa.Column("year", sa.Integer, primary_key=True),
        sa.Column("last_number", sa.BigInteger, nullable=False),
    )
    op.add_column("invoices", sa.Column("number", sa.String(32), nullable=True))
    op.add_column(
        "invoices", sa.Column("account_name", sa.String(200), nullable=False, server_default="")
    )
    for name in (
        "opening_balance_micros",
        "funded_micros",
        "adjusted_micros",
        "refunded_micros",
        "closing_balance_micros",
    ):
        op.add_column(
            "invoices", sa.Column(name, sa.BigInteger, nullable=False, server_default="0")
        )
    op.execute(BACKFILL)
    op.alter_column("invoices", "number", nullable=False)
    op.create_unique_constraint("invoices_number_key", "invoices", ["number"])
    op.create_index(
        "invoices_account_period_idx", "invoices", ["account_id", "period_start", "period_end"]
    )
    op.create_index("invoices_account_created_idx", "invoices", ["account_id", "created_at"])
    op.create_table(
        "invoice_charges",
        sa.Column(
            "invoice_id", sa.String(64), sa.ForeignKey("invoices.invoice_id"), primary_key=True
        ),
        sa.Column("charge_number", sa.Integer, primary_key=True),
        sa.Column("service_type", sa.String(64), nullable=False),
        sa.Column("application_id", sa.String(256), nullable=False),
        sa.Column("unit", sa.String(32), nullable=False),
        sa.Column("units", sa.BigInteger, nullable=False),
        sa.Column("amount_micros", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "invoice_sessions",
        sa.Column("invoice_id", sa.String(64), primary_key=True),
        sa.Column("charge_number", sa.Integer, primary_key=True),
        sa.Column("session_number", sa.Integer, primary_key=True),
        sa.Column("session_id", sa.String(200), nullable=False),
        sa.Column("start_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("endpoint", sa.String(256), nullable=False),
        sa.Column("duration_micros", sa.BigInteger, nullable=False),
        sa.Column("units", sa.BigInteger, nullable=False),
        sa.Column("amount_micros", sa.BigInteger, nullable=False),
        sa.ForeignKeyConstraint(
            ["invoice_id", "charge_number"],
            ["invoice_charges.invoice_id", "invoice_charges.charge_number"],
        ),
    )
    op.create_table(
        "invoice_movements",
        sa.Column(
            "invoice_id", sa.String(64), sa.ForeignKey("invoices.invoice_id"), primary_key=True
        ),
        sa.Column("movement_number", sa.Integer, primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("amount_micros", sa.BigInteger, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("description", sa.String(400), nullable=False),
        sa.Column("transaction_id", sa.String(64), nullable=False),
    )
    op.execute(IMMUTABLE)
    for table in INVOICE_TABLES:
        op.execute(
            f"CREATE TRIGGER {table}_immutable BEFORE UPDATE OR DELETE ON {table} "
            "FOR EACH ROW EXECUTE FUNCTION invoices_immutable()"
        )


def downgrade() -> None:
    op.execute("DROP FUNCTION invoices_immutable() CASCADE")
    op.drop_table("invoice_movements")
    op.drop_table("invoice_sessions")
    op.drop_table("invoice_charges")
    op.drop_index("invoices_account_created_idx", "invoices")
    op.drop_index("invoices_account_period_idx", "invoices")
    op.drop_constraint("invoices_number_key", "invoices")
    for name in (
        "closing_balance_micros",
        "refunded_micros",
        "adjusted_micros",
        "funded_micros",
        "opening_balance_micros",
        "account_name",
        "number",
    ):
        op.drop_column("invoices", name)
    op.drop_table("invoice_counters")
    op.drop_table("capture_usage")
