"""jobs and fine-tuned models

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "jobs",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("params", sa.JSON, nullable=False),
        sa.Column("progress", sa.JSON, nullable=False),
        sa.Column("result", sa.JSON, nullable=True),
        sa.Column("error", sa.String(2000), nullable=True),
        sa.Column("cancel_requested", sa.Boolean, nullable=False),
        sa.Column("worker_pid", sa.Integer, nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("model_id", sa.String(32), nullable=True),
    )
    op.create_index("ix_jobs_created_at", "jobs", ["created_at"])
    op.create_index("ix_jobs_status", "jobs", ["status"])
    op.create_table(
        "models",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("job_id", sa.String(32), nullable=False),
        sa.Column("source_id", sa.String(32), nullable=False),
        sa.Column("target_dataset_id", sa.String(32), nullable=False),
        sa.Column("architecture", sa.String(64), nullable=False),
        sa.Column("input_size", sa.Integer, nullable=False),
        sa.Column("class_names", sa.JSON, nullable=False),
        sa.Column("report", sa.JSON, nullable=False),
        sa.Column("artifact_key", sa.String(200), nullable=False),
        sa.Column("registered_source_id", sa.String(32), nullable=True),
    )
    op.create_index("ix_models_created_at", "models", ["created_at"])


def downgrade() -> None:
    op.drop_index("ix_models_created_at", "models")
    op.drop_table("models")
    op.drop_index("ix_jobs_status", "jobs")
    op.drop_index("ix_jobs_created_at", "jobs")
    op.drop_table("jobs")
