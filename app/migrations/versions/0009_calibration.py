"""evidence from finished fine-tunes, calibrations refitted on it, and the calibration each
ranking used

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-26
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "evidence",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("job_id", sa.String(32), nullable=False, unique=True),
        sa.Column("target_dataset_id", sa.String(32), nullable=False),
        sa.Column("target_signature", sa.LargeBinary, nullable=False),
        sa.Column("reference_sha256", sa.String(64), nullable=False),
        sa.Column("source_id", sa.String(32), nullable=False),
        sa.Column("source_name", sa.String(200), nullable=False),
        sa.Column("accuracy", sa.Float, nullable=False),
        sa.Column("accuracy_split", sa.String(16), nullable=False),
        sa.Column("schedule", sa.JSON, nullable=False),
        sa.Column("baseline_accuracy", sa.Float, nullable=True),
    )
    op.create_index("ix_evidence_created_at", "evidence", ["created_at"])
    op.create_index("ix_evidence_target_dataset_id", "evidence", ["target_dataset_id"])
    op.create_table(
        "calibrations",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("reference_sha256", sa.String(64), nullable=False),
        sa.Column("measure", sa.String(16), nullable=False),
        sa.Column("lam", sa.Float, nullable=False),
        sa.Column("trigger", sa.String(16), nullable=False),
        sa.Column("evidence_count", sa.Integer, nullable=False),
        sa.Column("targets", sa.Integer, nullable=False),
        sa.Column("report", sa.JSON, nullable=False),
    )
    op.create_index("ix_calibrations_created_at", "calibrations", ["created_at"])
    op.add_column("rankings", sa.Column("calibration_id", sa.String(32), nullable=True))


def downgrade() -> None:
    op.drop_column("rankings", "calibration_id")
    op.drop_table("calibrations")
    op.drop_table("evidence")
