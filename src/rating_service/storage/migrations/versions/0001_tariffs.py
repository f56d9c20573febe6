"""Tariffs.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "tariffs",
        sa.Column("tariff_id", sa.String(64), primary_key=True),
        sa.Column("service_type", sa.String(32), nullable=False),
        sa.Column("prefix", sa.String(64), nullable=False),
        sa.Column("unit", sa.String(16), nullable=False),
        sa.Column("price_per_unit_micros", sa.BigInteger, nullable=False),
        sa.Column("increment_units", sa.BigInteger, nullable=False),
        sa.Column("minimum_units", sa.BigInteger, nullable=False),
        sa.Column("setup_fee_micros", sa.BigInteger, nullable=False),
        sa.Column("currency", sa.String(3), nullable=False),
        sa.Column("description", sa.Text, nullable=False, server_default=""),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.UniqueConstraint("service_type", "prefix", name="tariffs_service_type_prefix_key"),
        sa.CheckConstraint("price_per_unit_micros >= 0", name="tariffs_price_non_negative"),
        sa.CheckConstraint("increment_units >= 1", name="tariffs_increment_positive"),
        sa.CheckConstraint("minimum_units >= 0", name="tariffs_minimum_non_negative"),
        sa.CheckConstraint("setup_fee_micros >= 0", name="tariffs_setup_fee_non_negative"),
    )


def downgrade() -> None:
    op.drop_table("tariffs")
