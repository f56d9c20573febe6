"""Usage counters per reporter: the device's and the gateway's cumulative counters are
each checked against their own last report; the session's usage is the larger.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "sessions",
        sa.Column("client_used_units", sa.BigInteger(), server_default="0", nullable=False),
    )
    op.add_column(
        "sessions",
        sa.Column("gateway_used_units", sa.BigInteger(), server_default="0", nullable=False),
    )
    op.execute("UPDATE sessions SET client_used_units = used_units")


def downgrade() -> None:
    op.drop_column("sessions", "gateway_used_units")
    op.drop_column("sessions", "client_used_units")
