"""jobs.worker_pid goes: written at every claim, read by nothing (a worker's process id is
in its heartbeat row, workers.pid, with the job it runs)

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("worker_pid")


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("worker_pid", sa.Integer, nullable=True))
