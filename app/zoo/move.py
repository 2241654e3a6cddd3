"""Move an install to another database and artifact store (e.g. SQLite + local files to
PostgreSQL + S3): ``python -m app.zoo move --database-url URL --store-url URL``.

Artifacts are copied first, then rows, table by table in dependency order, in one
transaction on the destination: a row only lands once every artifact it points to is there.
Re-running after an interruption skips what is already there. The source install is only
read; stop the service while moving, so that nothing changes under the copy.
"""

import shutil
from dataclasses import dataclass, field

from sqlalchemy import Engine, func, insert, select, text
from sqlalchemy.orm import Session

from app.db import migrate
from app.models import Base
from app.store import ArtifactStore

ARTIFACT_PREFIXES = ("datasets", "sources", "models")
# Alembic's own table is written by migrate() on the destination.
SKIPPED_TABLES = ("alembic_version",)


@dataclass
class MoveReport:
    """What a move copied, and what it found already in place."""

    artifacts_copied: int = 0
    artifacts_present: int = 0
    rows_copied: dict[str, int] = field(default_factory=dict)
    rows_present: dict[str, int] = field(default_factory=dict)


def move_install(
    source_engine: Engine,
    source_store: ArtifactStore,
    target_engine: Engine,
    target_store: ArtifactStore,
) -> MoveReport:
    """Copy every artifact, then every row, from one install to another (idempotent)."""
    report = MoveReport()
    migrate(target_engine)
    committed = _referenced_keys(target_engine)
    for prefix in ARTIFACT_PREFIXES:
        present = target_store.keys_under(prefix)
        for key in sorted(source_store.keys_under(prefix)):
            if key in committed:
                report.artifacts_present += 1
                continue
            if key in present:  # an earlier run died before its rows: maybe half uploaded
                target_store.delete(key)
            staging = target_store.new_staging_dir()
            shutil.copytree(source_store.path(key), staging, dirs_exist_ok=True)
            target_store.publish(staging, key)
            report.artifacts_copied += 1
    with Session(source_engine) as reading, Session(target_engine) as writing:
        for table in Base.metadata.sorted_tables:
            if table.name in SKIPPED_TABLES:
                continue
            keys = list(table.primary_key.columns)
            existing = {tuple(row) for row in writing.execute(select(*keys))}
            rows = [dict(row._mapping) for row in reading.execute(select(table))]
            new = [r for r in rows if tuple(r[k.name] for k in keys) not in existing]
            if new:
                writing.execute(insert(table), new)
            report.rows_copied[table.name] = len(new)
            report.rows_present[table.name] = len(rows) - len(new)
        _advance_sequences(writing)
        writing.commit()
    return report


def _referenced_keys(engine: Engine) -> set[str]:
    """Artifact keys the destination's committed rows point to (complete by construction)."""
    keys: set[str] = set()
    with engine.connect() as connection:
        for table in Base.metadata.sorted_tables:
            if "artifact_key" in table.columns:
                keys |= set(connection.scalars(select(table.columns["artifact_key"])))
    return keys


def _advance_sequences(session: Session) -> None:
    """PostgreSQL: move serial sequences past the ids copied in explicitly."""
    if session.get_bind().dialect.name != "postgresql":
        return
    for table in Base.metadata.sorted_tables:
        for column in table.primary_key.columns:
            if column.autoincrement is True:
                highest = session.scalar(select(func.max(column)))
                if highest is not None:
                    session.execute(
                        text("SELECT setval(pg_get_serial_sequence(:t, :c), :v)"),
                        {"t": table.name, "c": column.name, "v": highest},
                    )
