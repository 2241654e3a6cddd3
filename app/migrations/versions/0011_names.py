"""names are handles: one dataset, source and model per name and project; models get names

An install of the previous release upgrades in place. Where a project holds several
datasets (or sources) of one name, the oldest keeps it and each later one is renamed
``NAME-2``, ``NAME-3``, ... in order of creation (nothing else changes: ids, files, rankings
and jobs stay as they were). Every model is named ``TARGET-from-SOURCE`` after its target
dataset and source (``model-`` and its id's first 8 digits where either is gone), numbered
the same way where two would share a name.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07
"""

from collections import defaultdict
from collections.abc import Iterable

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

NAME_CHARS = 200  # the name columns' length, as of this revision
NAMED = ("datasets", "sources", "models")


def numbered(name: str, taken: set[str]) -> str:
    """``name``, or the first of ``name-2``, ``name-3``, ... not in ``taken`` (each cut to
    the column), which it joins."""
    candidate, number = name[:NAME_CHARS], 1
    while candidate in taken:
        number += 1
        suffix = f"-{number}"
        candidate = name[: NAME_CHARS - len(suffix)] + suffix
    taken.add(candidate)
    return candidate


def distinct_names(rows: Iterable[sa.Row]) -> dict[str, str]:
    """New names by id for the rows (id, project_id, name), oldest first, whose name an
    older row of their project holds already."""
    rows = list(rows)
    taken: dict[str, set[str]] = defaultdict(set)
    for row in rows:  # every name stays where it is unique: later ones number around them
        taken[row.project_id].add(row.name)
    seen: dict[str, set[str]] = defaultdict(set)
    renamed = {}
    for row in rows:
        if row.name in seen[row.project_id]:
            renamed[row.id] = numbered(row.name, taken[row.project_id])
        seen[row.project_id].add(row.name)
    return renamed


def upgrade() -> None:
    bind = op.get_bind()
    with op.batch_alter_table("models") as batch:
        batch.add_column(sa.Column("name", sa.String(NAME_CHARS), nullable=True))
    for table in ("datasets", "sources"):
        rows = bind.execute(
            sa.text(f"SELECT id, project_id, name FROM {table} ORDER BY created_at, id")
        )
        for row_id, name in distinct_names(rows).items():
            bind.execute(
                sa.text(f"UPDATE {table} SET name = :name WHERE id = :id"),
                {"name": name, "id": row_id},
            )
    models = bind.execute(
        sa.text(
            "SELECT m.id, m.project_id, d.name AS target, s.name AS source FROM models m "
            "LEFT JOIN datasets d ON d.id = m.target_dataset_id "
            "LEFT JOIN sources s ON s.id = m.source_id ORDER BY m.created_at, m.id"
        )
    )
    taken: dict[str, set[str]] = defaultdict(set)
    for model in list(models):
        if model.target is not None and model.source is not None:
            wanted = f"{model.target}-from-{model.source}"
        else:
            wanted = f"model-{model.id[:8]}"
        bind.execute(
            sa.text("UPDATE models SET name = :name WHERE id = :id"),
            {"name": numbered(wanted, taken[model.project_id]), "id": model.id},
        )
    with op.batch_alter_table("models") as batch:
        batch.alter_column("name", existing_type=sa.String(NAME_CHARS), nullable=False)
    for table in NAMED:
        with op.batch_alter_table(table) as batch:
            batch.create_unique_constraint(f"uq_{table}_project_name", ["project_id", "name"])


def downgrade() -> None:
    for table in NAMED:
        with op.batch_alter_table(table) as batch:
            batch.drop_constraint(f"uq_{table}_project_name", type_="unique")
    with op.batch_alter_table("models") as batch:
        batch.drop_column("name")
