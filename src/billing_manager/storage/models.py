"""The account database's tables. The ledger tables are append-only (a trigger refuses
UPDATE and DELETE on them); the money movements are functions of migration 0002."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    DateTime,
    ForeignKey,
    ForeignKeyConstraint,
    Identity,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    func,
)

metadata = MetaData()
VERSION_TABLE = "alembic_version_billing"


def _created() -> Column[object]:
    return Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now())


accounts = Table(
    "accounts",
    metadata,
    Column("account_id", String(64), primary_key=True),
    Column("display_name", String(200), nullable=False),
    Column("currency", String(3), nullable=False),
    Column("credit_limit_micros", BigInteger, nullable=False),
    Column("status", String(16), nullable=False),
    _created(),
    # Running balances: the sums of the account's CUSTOMER_AVAILABLE and CUSTOMER_HELD
    # entries, moved by a trigger on ledger_entries in the same transaction (migration 0002).
    Column("available_micros", BigInteger, nullable=False, server_default="0"),
    Column("held_micros", BigInteger, nullable=False, server_default="0"),
    CheckConstraint("credit_limit_micros >= 0", name="accounts_credit_limit_non_negative"),
)

ledger_transactions = Table(
    "ledger_transactions",
    metadata,
    Column("transaction_id", String(64), primary_key=True),
    Column("kind", String(16), nullable=False),
    Column("account_id", String(64), ForeignKey("accounts.account_id"), nullable=False),
    Column("amount_micros", BigInteger, nullable=False),
    Column("idempotency_key", String(200), nullable=False, unique=True),
    Column("fingerprint", Text, nullable=False),
    Column("hold_id", String(64), nullable=True),
    Column("reference", String(200), nullable=False, server_default=""),
    _created(),
    Index("ledger_transactions_account_kind_idx", "account_id", "kind", "created_at"),
)

ledger_entries = Table(
    "ledger_entries",
    metadata,
    Column("entry_id", BigInteger, Identity(), primary_key=True),
    Column(
        "transaction_id",
        String(64),
        ForeignKey("ledger_transactions.transaction_id"),
        nullable=False,
    ),
    Column("kind", String(16), nullable=False),
    Column("account_id", String(64), ForeignKey("accounts.account_id"), nullable=False),
    Column("ledger_account", String(32), nullable=False),
    Column("amount_micros", BigInteger, nullable=False),
    Column("hold_id", String(64), nullable=True),
    _created(),
    Index("ledger_entries_account_idx", "account_id", "ledger_account"),
)

holds = Table(
    "holds",
    metadata,
    Column("hold_id", String(64), primary_key=True),
    Column("account_id", String(64), ForeignKey("accounts.account_id"), nullable=False),
    Column("amount_micros", BigInteger, nullable=False),
    Column("captured_micros", BigInteger, nullable=False, server_default="0"),
    Column("released_micros", BigInteger, nullable=False, server_default="0"),
    Column("status", String(16), nullable=False),
    Column("reference", String(200), nullable=False, server_default=""),
    _created(),
    Column("closed_at", DateTime(timezone=True), nullable=True),
    # When an open hold is released by the sweep (migration 0004).
    Column("expires_at", DateTime(timezone=True), nullable=False),
    CheckConstraint("amount_micros > 0", name="holds_amount_positive"),
    CheckConstraint(
        "captured_micros >= 0 AND released_micros >= 0 "
        "AND captured_micros + released_micros <= amount_micros",
        name="holds_settled_within_amount",
    ),
)

credentials = Table(
    "credentials",
    metadata,
    Column("client_id", String(64), primary_key=True),
    Column("secret_sha256", String(64), nullable=False),
    Column("kind", String(16), nullable=False),
    Column("account_id", String(64), ForeignKey("accounts.account_id"), nullable=True),
    Column("gateway_name", String(100), nullable=True),
    _created(),
)

invoices = Table(
    "invoices",
    metadata,
    Column("invoice_id", String(64), primary_key=True),
    Column("account_id", String(64), ForeignKey("accounts.account_id"), nullable=False),
    Column("period_start", DateTime(timezone=True), nullable=False),
    Column("period_end", DateTime(timezone=True), nullable=False),
    Column("currency", String(3), nullable=False),
    Column("total_micros", BigInteger, nullable=False),
    Column("idempotency_key", String(200), nullable=False, unique=True),
    Column("fingerprint", Text, nullable=False),
    _created(),
    # Migration 0007: the number, the account's name and the balances of the period.
    Column("number", String(32), nullable=False, unique=True),
    Column("account_name", String(200), nullable=False, server_default=""),
    Column("opening_balance_micros", BigInteger, nullable=False, server_default="0"),
    Column("funded_micros", BigInteger, nullable=False, server_default="0"),
    Column("adjusted_micros", BigInteger, nullable=False, server_default="0"),
    Column("refunded_micros", BigInteger, nullable=False, server_default="0"),
    Column("closing_balance_micros", BigInteger, nullable=False, server_default="0"),
    Index("invoices_account_period_idx", "account_id", "period_start", "period_end"),
    Index("invoices_account_created_idx", "account_id", "created_at"),
)

invoice_lines = Table(
    "invoice_lines",
    metadata,
    Column("invoice_id", String(64), ForeignKey("invoices.invoice_id"), primary_key=True),
    Column("line_number", Integer, primary_key=True),
    Column("transaction_id", String(64), nullable=False),
    Column("reference", String(200), nullable=False),
    Column("amount_micros", BigInteger, nullable=False),
    Column("captured_at", DateTime(timezone=True), nullable=False),
)

# A bill's lines per service type and application, the sessions behind each, and the
# fundings, adjustments and refunds of its period (migration 0007). Like `invoices` and
# `invoice_lines`, a trigger refuses UPDATE and DELETE on them.
invoice_charges = Table(
    "invoice_charges",
    metadata,
    Column("invoice_id", String(64), ForeignKey("invoices.invoice_id"), primary_key=True),
    Column("charge_number", Integer, primary_key=True),
    Column("service_type", String(64), nullable=False),
    Column("application_id", String(256), nullable=False),
    Column("unit", String(32), nullable=False),
    Column("units", BigInteger, nullable=False),
    Column("amount_micros", BigInteger, nullable=False),
)

invoice_sessions = Table(
    "invoice_sessions",
    metadata,
    Column("invoice_id", String(64), primary_key=True),
    Column("charge_number", Integer, primary_key=True),
    Column("session_number", Integer, primary_key=True),
    Column("session_id", String(200), nullable=False),
    Column("start_time", DateTime(timezone=True), nullable=False),
    Column("endpoint", String(256), nullable=False),
    Column("duration_micros", BigInteger, nullable=False),
    Column("units", BigInteger, nullable=False),
    Column("amount_micros", BigInteger, nullable=False),
    ForeignKeyConstraint(
        ["invoice_id", "charge_number"],
        ["invoice_charges.invoice_id", "invoice_charges.charge_number"],
    ),
)

invoice_movements = Table(
    "invoice_movements",
    metadata,
    Column("invoice_id", String(64), ForeignKey("invoices.invoice_id"), primary_key=True),
    Column("movement_number", Integer, primary_key=True),
    Column("kind", String(16), nullable=False),
    Column("amount_micros", BigInteger, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("description", String(400), nullable=False),
    Column("transaction_id", String(64), nullable=False),
)

# The last bill number issued per year (migration 0007): a bill locks its year's row in
# the transaction that inserts it, so numbers have no gaps.
invoice_counters = Table(
    "invoice_counters",
    metadata,
    Column("year", Integer, primary_key=True),
    Column("last_number", BigInteger, nullable=False),
)

# What a captured hold paid for, from the Capture's UsageSummary (migration 0007).
capture_usage = Table(
    "capture_usage",
    metadata,
    Column("hold_id", String(64), ForeignKey("holds.hold_id"), primary_key=True),
    Column("session_id", String(200), nullable=False),
    Column("service_type", String(64), nullable=False),
    Column("endpoint", String(256), nullable=False),
    Column("application_id", String(256), nullable=False),
    Column("units", BigInteger, nullable=False),
    Column("unit", String(32), nullable=False),
    Column("start_time", DateTime(timezone=True), nullable=False),
    Column("end_time", DateTime(timezone=True), nullable=False),
    Column("charged_micros", BigInteger, nullable=False),
    _created(),
    CheckConstraint("units >= 0 AND charged_micros >= 0", name="capture_usage_non_negative"),
)

# Prepaid vouchers, by a keyed hash of the code (the code is never stored); redeemed by
# `ledger_redeem_voucher` (migration 0003) in the transaction of its FUND movement.
vouchers = Table(
    "vouchers",
    metadata,
    Column("code_hash", Text, primary_key=True),
    Column("batch_id", Text, nullable=False, index=True),
    Column("amount_micros", BigInteger, nullable=False),
    Column("currency", String(3), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=True),
    _created(),
    Column("redeemed_at", DateTime(timezone=True), nullable=True),
    Column("account_id", Text, ForeignKey("accounts.account_id"), nullable=True),
    Column("transaction_id", Text, ForeignKey("ledger_transactions.transaction_id"), nullable=True),
    CheckConstraint("amount_micros > 0", name="vouchers_amount_positive"),
)
