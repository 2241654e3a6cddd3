"""an upload's rejections counted by kind and in all, so a replay answers the same

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-27
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Nullable: older rows kept only the listed rejections, and the counts are not derivable.
    with op.batch_alter_table("datasets") as batch:
        batch.add_column(sa.Column("rejected_counts", sa.JSON, nullable=True))
        batch.add_column(sa.Column("rejected_total", sa.Integer, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("datasets") as batch:
        batch.drop_column("rejected_total")
        batch.drop_column("rejected_counts")
