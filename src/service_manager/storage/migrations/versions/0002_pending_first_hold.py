"""A session remembers the first hold it asked for until the hold is recorded, so a crash
between the two cannot leave the hold open with nothing to release it.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "sessions",
        sa.Column("pending_hold_micros", sa.BigInteger(), server_default="0", nullable=False),
    )


def downgrade() -> None:
    op.drop_column("sessions", "pending_hold_micros")
