"""sources and rankings tables

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "sources",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("architecture", sa.String(64), nullable=False),
        sa.Column("num_classes", sa.Integer, nullable=False),
        sa.Column("input_size", sa.Integer, nullable=False),
        sa.Column("class_names", sa.JSON, nullable=False),
        sa.Column("num_images", sa.Integer, nullable=False),
        sa.Column("class_counts", sa.JSON, nullable=False),
        sa.Column("feature_dim", sa.Integer, nullable=False),
        sa.Column("reference_sha256", sa.String(64), nullable=False),
        sa.Column("weights_sha256", sa.String(64), nullable=False),
        sa.Column(
            "dataset_id",
            sa.String(32),
            sa.ForeignKey("datasets.id", ondelete="SET NULL"),
            nullable=True,
        ),
        sa.Column("origin", sa.String(16), nullable=False),
        sa.Column("artifact_key", sa.String(200), nullable=False),
    )
    op.create_index("ix_sources_created_at", "sources", ["created_at"])
    op.create_table(
        "rankings",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("target_dataset_id", sa.String(32), nullable=False),
        sa.Column("method", sa.String(16), nullable=False),
        sa.Column("measure", sa.String(16), nullable=False),
        sa.Column("params", sa.JSON, nullable=False),
        sa.Column("results", sa.JSON, nullable=False),
        sa.Column("excluded", sa.JSON, nullable=False),
    )
    op.create_index("ix_rankings_created_at", "rankings", ["created_at"])


def downgrade() -> None:
    op.drop_index("ix_rankings_created_at", "rankings")
    op.drop_table("rankings")
    op.drop_index("ix_sources_created_at", "sources")
    op.drop_table("sources")
