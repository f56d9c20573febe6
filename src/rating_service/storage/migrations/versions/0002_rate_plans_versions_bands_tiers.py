"""Rate plans with time bands, tariff versions (effective from / to), first increments,
unit sizes, band prices, volume tiers, and account plan assignments.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "rate_plans",
        sa.Column("plan_id", sa.String(64), primary_key=True),
        sa.Column("display_name", sa.String(200), nullable=False),
        sa.Column("time_zone", sa.String(64), nullable=False, server_default="UTC"),
        sa.Column("default_band", sa.String(32), nullable=False, server_default="STANDARD"),
        sa.Column("time_bands", JSONB, nullable=False, server_default=sa.text("'[]'::jsonb")),
        sa.Column("is_default", sa.Boolean, nullable=False, server_default=sa.text("false")),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
    )
    op.execute(
        "INSERT INTO rate_plans (plan_id, display_name, is_default) "
        "VALUES ('default', 'Default', true)"
    )
    op.add_column(
        "tariffs",
        sa.Column(
            "plan_id",
            sa.String(64),
            sa.ForeignKey("rate_plans.plan_id"),
            nullable=False,
            server_default="default",
        ),
    )
    op.add_column("tariffs", sa.Column("effective_from", sa.DateTime(timezone=True)))
    op.add_column("tariffs", sa.Column("effective_to", sa.DateTime(timezone=True)))
    op.add_column(
        "tariffs",
        sa.Column("first_increment_units", sa.BigInteger, nullable=False, server_default="0"),
    )
    op.add_column(
        "tariffs", sa.Column("unit_size", sa.BigInteger, nullable=False, server_default="1")
    )
    op.add_column(
        "tariffs",
        sa.Column("band_prices", JSONB, nullable=False, server_default=sa.text("'[]'::jsonb")),
    )
    op.add_column(
        "tariffs", sa.Column("tiers", JSONB, nullable=False, server_default=sa.text("'[]'::jsonb"))
    )
    op.create_check_constraint("tariffs_unit_size_positive", "tariffs", "unit_size >= 1")
    op.drop_constraint("tariffs_service_type_prefix_key", "tariffs", type_="unique")
    # One version per key and start; NULL (the first version) counts as one start.
    op.execute(
        "CREATE UNIQUE INDEX tariffs_version_key ON tariffs (plan_id, service_type, prefix, "
        "COALESCE(effective_from, '-infinity'::timestamptz))"
    )
    op.create_table(
        "account_plans",
        sa.Column("account_id", sa.String(64), primary_key=True),
        sa.Column("plan_id", sa.String(64), sa.ForeignKey("rate_plans.plan_id"), nullable=False),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
    )


def downgrade() -> None:
    op.drop_table("account_plans")
    op.execute("DROP INDEX tariffs_version_key")
    op.create_unique_constraint(
        "tariffs_service_type_prefix_key", "tariffs", ["service_type", "prefix"]
    )
    op.drop_constraint("tariffs_unit_size_positive", "tariffs", type_="check")
    for column in (
        "tiers",
        "band_prices",
        "unit_size",
        "first_increment_units",
        "effective_to",
        "effective_from",
        "plan_id",
    ):
        op.drop_column("tariffs", column)
    op.drop_table("rate_plans")
