"""Service records that say when the charge captured differs from the usage's: a hold
someone else captured or released before settlement (settlement_difference_micros is the
usage's charge less what was captured; settlement_note says why).

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "service_records",
        sa.Column(
            "settlement_difference_micros", sa.BigInteger(), server_default="0", nullable=False
        ),
    )
    op.add_column(
        "service_records",
        sa.Column("settlement_note", sa.Text(), server_default="", nullable=False),
    )


def downgrade() -> None:
    op.drop_column("service_records", "settlement_note")
    op.drop_column("service_records", "settlement_difference_micros")
