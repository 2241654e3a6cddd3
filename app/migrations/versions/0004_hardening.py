"""job leases, one source per fine-tuned model, idempotency keys

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("worker_id", sa.String(64), nullable=True))
        batch.add_column(sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("attempts", sa.Integer, nullable=False, server_default="0"))
    with op.batch_alter_table("sources") as batch:
        batch.add_column(sa.Column("model_id", sa.String(32), nullable=True))
        batch.create_unique_constraint("uq_sources_model_id", ["model_id"])
    # Sources registered from a model before this revision keep that link.
    op.execute(
        "UPDATE sources SET model_id = (SELECT models.id FROM models "
        "WHERE models.registered_source_id = sources.id) WHERE origin = 'finetune'"
    )
    op.create_table(
        "idempotency_keys",
        sa.Column("scope", sa.String(32), nullable=False),
        sa.Column("key", sa.String(200), nullable=False),
        sa.Column("request_sha256", sa.String(64), nullable=False),
        sa.Column("resource_id", sa.String(32), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("scope", "key"),
    )


def downgrade() -> None:
    op.drop_table("idempotency_keys")
    with op.batch_alter_table("sources") as batch:
        batch.drop_constraint("uq_sources_model_id", type_="unique")
        batch.drop_column("model_id")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("attempts")
        batch.drop_column("lease_expires_at")
        batch.drop_column("worker_id")
