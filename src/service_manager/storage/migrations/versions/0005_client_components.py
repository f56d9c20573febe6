"""Client components: each published version of a signed client component, and its
bytes in chunks.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "components",
        sa.Column("component_id", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("platform", sa.String(length=100), nullable=False),
        sa.Column("version", sa.String(length=64), nullable=False),
        sa.Column("version_normal", sa.String(length=64), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("signature", sa.Text(), nullable=False),
        sa.Column("public_key", sa.Text(), nullable=False),
        sa.Column("signing_key_id", sa.String(length=16), nullable=False),
        sa.Column("chunk_bytes", sa.Integer(), nullable=False),
        sa.Column(
            "published_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("published_by", sa.String(length=200), server_default="", nullable=False),
        sa.PrimaryKeyConstraint("component_id"),
        sa.UniqueConstraint("name", "platform", "version_normal", name="components_version_key"),
    )
    op.create_table(
        "component_chunks",
        sa.Column("component_id", sa.String(length=32), nullable=False),
        sa.Column("chunk_index", sa.Integer(), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(["component_id"], ["components.component_id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("component_id", "chunk_index"),
    )
    # Packages are mostly compressed already: store the chunks out of line without
    # trying to compress them again.
    op.execute("ALTER TABLE component_chunks ALTER COLUMN data SET STORAGE EXTERNAL")


def downgrade() -> None:
    op.drop_table("component_chunks")
    op.drop_table("components")
