"""The gateway registry (state, region, capacity, liveness), subscriber identities, each
gateway's durable notice stream, and service records that keep unbilled usage and the
reporters' counts.

Gateways registered before this revision were never asked for liveness, so they keep
counting as alive (skip_liveness_check); gateways registered later are checked unless
registered otherwise.

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "gateways", sa.Column("state", sa.String(16), server_default="ENABLED", nullable=False)
    )
    op.execute("UPDATE gateways SET state = 'DISABLED' WHERE NOT enabled")
    op.drop_column("gateways", "enabled")
    op.add_column("gateways", sa.Column("region", sa.String(64), server_default="", nullable=False))
    op.add_column(
        "gateways", sa.Column("capacity", sa.Integer(), server_default="0", nullable=False)
    )
    op.add_column(
        "gateways",
        sa.Column(
            "skip_liveness_check", sa.Boolean(), server_default=sa.text("true"), nullable=False
        ),
    )
    op.alter_column("gateways", "skip_liveness_check", server_default=sa.text("false"))
    op.add_column("gateways", sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column(
        "gateways",
        sa.Column(
            "registered_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
    )
    op.add_column(
        "gateways",
        sa.Column("last_notice_cursor", sa.BigInteger(), server_default="0", nullable=False),
    )

    op.create_table(
        "account_identities",
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("value", sa.String(256), nullable=False),
        sa.Column("account_id", sa.String(64), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("kind", "value"),
    )
    op.create_index("account_identities_account_idx", "account_identities", ["account_id"])

    op.create_table(
        "gateway_notices",
        sa.Column("gateway_id", sa.String(100), nullable=False),
        sa.Column("cursor", sa.BigInteger(), nullable=False),
        sa.Column("kind", sa.String(24), nullable=False),
        sa.Column("session_id", sa.String(64), nullable=False),
        sa.Column("account_id", sa.String(64), nullable=False),
        sa.Column("reason", sa.String(32), nullable=True),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("balance_micros", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column("seconds_left", sa.BigInteger(), nullable=True),
        sa.Column("granted_units", sa.BigInteger(), server_default="0", nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(["gateway_id"], ["gateways.gateway_id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("gateway_id", "cursor"),
    )
    op.create_index("gateway_notices_created_idx", "gateway_notices", ["created_at"])

    for column in ("unbilled_units", "usage_discrepancy", "client_used_units"):
        op.add_column(
            "service_records",
            sa.Column(column, sa.BigInteger(), server_default="0", nullable=False),
        )
    op.add_column(
        "service_records",
        sa.Column("gateway_used_units", sa.BigInteger(), server_default="0", nullable=False),
    )
    op.add_column(
        "service_records",
        sa.Column("unbilled_reason", sa.Text(), server_default="", nullable=False),
    )
    # Records written before: what was used beyond what was billed went unbilled.
    op.execute(
        "UPDATE service_records SET unbilled_units = used_units - billed_units "
        "WHERE used_units > billed_units"
    )


def downgrade() -> None:
    for column in (
        "unbilled_reason",
        "gateway_used_units",
        "client_used_units",
        "usage_discrepancy",
        "unbilled_units",
    ):
        op.drop_column("service_records", column)
    op.drop_index("gateway_notices_created_idx", table_name="gateway_notices")
    op.drop_table("gateway_notices")
    op.drop_index("account_identities_account_idx", table_name="account_identities")
    op.drop_table("account_identities")
    op.add_column(
        "gateways",
        sa.Column("enabled", sa.Boolean(), server_default=sa.text("true"), nullable=False),
    )
    op.execute("UPDATE gateways SET enabled = (state = 'ENABLED')")
    for column in (
        "last_notice_cursor",
        "registered_at",
        "last_seen_at",
        "skip_liveness_check",
        "capacity",
        "region",
        "state",
    ):
        op.drop_column("gateways", column)
