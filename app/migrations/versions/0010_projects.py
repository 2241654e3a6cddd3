"""projects, API keys with roles, the audit log; every row owned by a project; the shared
zoo and claimed image counts; the bytes each dataset, source and model stores

An install of the previous release upgrades in place: every row lands in the ``default``
project (unlimited quotas, its evidence shared: as every install worked before), the
bundled zoo becomes the shared zoo, and sources registered with an uploaded signature are
marked ``claimed`` (so are sources whose dataset was deleted: a row cannot tell the two
apart). Keys in P2L_API_KEYS stay valid, as operator keys.

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

DEFAULT_PROJECT_ID = "0" * 32  # app.models.DEFAULT_PROJECT_ID, as of this revision
OWNED = ("datasets", "sources", "rankings", "jobs", "models", "evidence")


def upgrade() -> None:
    projects = op.create_table(
        "projects",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("name", sa.String(100), nullable=False, unique=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("quotas", sa.JSON, nullable=False),
        sa.Column("share_evidence", sa.Boolean, nullable=False),
    )
    op.create_index("ix_projects_created_at", "projects", ["created_at"])
    op.execute(
        projects.insert().values(
            id=DEFAULT_PROJECT_ID,
            name="default",
            created_at=sa.func.now(),
            # Unlimited, and feeding the calibration: what every install did before projects
            # (a single-user service, or an upgraded one, keeps working as it did).
            quotas={
                "max_active_jobs": None,
                "max_job_seconds": None,
                "max_storage_bytes": None,
                "max_event_streams_per_key": None,
                "requests_per_minute_per_key": None,
            },
            share_evidence=True,
        )
    )
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column(
            "project_id",
            sa.String(32),
            sa.ForeignKey("projects.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("key_sha256", sa.String(64), nullable=False, unique=True),
        sa.Column("prefix", sa.String(16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
    )
    op.create_index("ix_api_keys_project_id", "api_keys", ["project_id"])
    op.create_index("ix_api_keys_created_at", "api_keys", ["created_at"])
    op.create_table(
        "audit_log",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("key_id", sa.String(32), nullable=True),
        sa.Column("project_id", sa.String(32), nullable=False),
        sa.Column("action", sa.String(120), nullable=False),
        sa.Column("object_id", sa.String(64), nullable=True),
        sa.Column("status", sa.Integer, nullable=False),
        sa.Column("detail", sa.String(300), nullable=True),
    )
    op.create_index("ix_audit_log_created_at", "audit_log", ["created_at"])
    op.create_index("ix_audit_log_project_id", "audit_log", ["project_id"])
    for table in OWNED:
        op.add_column(
            table,
            sa.Column(
                "project_id", sa.String(32), nullable=False, server_default=DEFAULT_PROJECT_ID
            ),
        )
        op.create_index(f"ix_{table}_project_id", table, ["project_id"])
    for table in ("datasets", "sources", "models"):  # None: counted on demand
        op.add_column(table, sa.Column("stored_bytes", sa.BigInteger, nullable=True))
    op.add_column(
        "sources", sa.Column("shared", sa.Boolean, nullable=False, server_default=sa.false())
    )
    op.add_column(
        "sources",
        sa.Column("image_counts", sa.String(16), nullable=False, server_default="verified"),
    )
    op.execute("UPDATE sources SET shared = true WHERE origin = 'bundled'")
    op.execute(
        "UPDATE sources SET image_counts = 'claimed' WHERE origin = 'upload' AND dataset_id IS NULL"
    )
    with op.batch_alter_table("idempotency_keys") as batch:
        batch.alter_column("scope", type_=sa.String(80), existing_type=sa.String(32))


def downgrade() -> None:
    with op.batch_alter_table("idempotency_keys") as batch:
        batch.alter_column("scope", type_=sa.String(32), existing_type=sa.String(80))
    for table in ("datasets", "sources", "models"):
        op.drop_column(table, "stored_bytes")
    op.drop_column("sources", "image_counts")
    op.drop_column("sources", "shared")
    for table in OWNED:
        op.drop_index(f"ix_{table}_project_id", table)
        op.drop_column(table, "project_id")
    op.drop_table("audit_log")
    op.drop_table("api_keys")
    op.drop_table("projects")
