"""Ownership and fencing of sessions, and pending holds for every slice: the instance that
holds a session's stream owns it under an epoch that every write it makes must carry;
any slice's hold (not only the first) is noted as pending before it is asked for.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "sessions", sa.Column("owner_id", sa.String(64), server_default="", nullable=False)
    )
    op.add_column(
        "sessions", sa.Column("owner_epoch", sa.BigInteger(), server_default="1", nullable=False)
    )
    op.add_column(
        "sessions", sa.Column("hold_count", sa.Integer(), server_default="0", nullable=False)
    )
    op.add_column(
        "sessions",
        sa.Column("pending_hold_number", sa.Integer(), server_default="0", nullable=False),
    )
    op.add_column(
        "sessions",
        sa.Column("pending_granted_units", sa.BigInteger(), server_default="0", nullable=False),
    )
    op.execute(
        "UPDATE sessions SET hold_count = (SELECT count(*) FROM session_holds h "
        "WHERE h.session_id = sessions.session_id)"
    )
    # A first hold pending from before (migration 0002) is hold number 1.
    op.execute("UPDATE sessions SET pending_hold_number = 1 WHERE pending_hold_micros > 0")


def downgrade() -> None:
    for column in (
        "pending_granted_units",
        "pending_hold_number",
        "hold_count",
        "owner_epoch",
        "owner_id",
    ):
        op.drop_column("sessions", column)
