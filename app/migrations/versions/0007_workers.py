"""workers and their heartbeats; the training throughput they measure (for job estimates)

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-26
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "workers",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("host", sa.String(200), nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("device", sa.String(64), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen", sa.DateTime(timezone=True), nullable=False),
        sa.Column("job_id", sa.String(32), nullable=True),
        sa.Column("jobs_run", sa.Integer, nullable=False),
    )
    op.create_index("ix_workers_last_seen", "workers", ["last_seen"])
    op.create_table(
        "worker_throughput",
        sa.Column("architecture", sa.String(64), nullable=False),
        sa.Column("input_size", sa.Integer, nullable=False),
        sa.Column("device", sa.String(64), nullable=False),
        sa.Column("train_images_per_second", sa.Float, nullable=False),
        sa.Column("eval_images_per_second", sa.Float, nullable=True),
        sa.Column("overhead_seconds_per_image", sa.Float, nullable=True),
        sa.Column("epochs_measured", sa.Integer, nullable=False),
        sa.Column("jobs_measured", sa.Integer, nullable=False),
        sa.Column("worker_id", sa.String(64), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("architecture", "input_size", "device"),
    )


def downgrade() -> None:
    op.drop_table("worker_throughput")
    op.drop_index("ix_workers_last_seen", table_name="workers")
    op.drop_table("workers")
