"""rankings say what the learned ranker learned from and how well the zoo covers the target

Two nullable JSON columns; rankings made before the upgrade have neither.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("rankings") as batch:
        batch.add_column(sa.Column("learned", sa.JSON, nullable=True))
        batch.add_column(sa.Column("coverage", sa.JSON, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("rankings") as batch:
        batch.drop_column("coverage")
        batch.drop_column("learned")
