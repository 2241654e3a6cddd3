"""Revision 0011 (#26, names as handles) upgrades an install whose names repeat.

A database is built at revision 0010 (the previous release's schema) with rows as that
release let users make them: two datasets and three sources of one name in one project, the
same name in another project, and models (which had no names), one of them of a deleted
source. After the upgrade the oldest keeps each name, the later ones are numbered, every
model is named after its target and source, and the database refuses a repeated name.
"""

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy.exc import IntegrityError

from app.db import MIGRATIONS_DIR, make_engine
from app.models import DEFAULT_PROJECT_ID

pytestmark = pytest.mark.unit

OTHER_PROJECT = "1" * 32
START = datetime(2026, 12, 1, tzinfo=UTC)


def migrate_to(engine: sa.Engine, revision: str) -> None:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)


def row_id(number: int) -> str:
    return f"{number:032x}"


def dataset(number: int, name: str, project: str = DEFAULT_PROJECT_ID) -> dict:
    return {
        "id": row_id(number), "project_id": project, "name": name,
        "created_at": START + timedelta(minutes=number), "num_images": 10,
        "class_counts": {"a": 5, "b": 5}, "rejected": [], "feature_dim": 3,
        "reference_sha256": "0" * 64, "artifact_key": f"datasets/{row_id(number)}",
    }  # fmt: skip


def source(number: int, name: str, project: str = DEFAULT_PROJECT_ID) -> dict:
    return {
        "id": row_id(number), "project_id": project, "name": name,
        "created_at": START + timedelta(minutes=number), "architecture": "compact_cnn",
        "num_classes": 2, "input_size": 32, "class_names": ["a", "b"], "num_images": 10,
        "class_counts": {"a": 5, "b": 5}, "feature_dim": 3, "reference_sha256": "0" * 64,
        "weights_sha256": "0" * 64, "origin": "upload", "shared": False,
        "artifact_key": f"sources/{row_id(number)}", "image_counts": "verified",
    }  # fmt: skip


def model(number: int, source_id: str, dataset_id: str) -> dict:
    return {
        "id": row_id(number), "project_id": DEFAULT_PROJECT_ID,
        "created_at": START + timedelta(minutes=number), "job_id": row_id(900 + number),
        "source_id": source_id, "target_dataset_id": dataset_id, "architecture": "compact_cnn",
        "input_size": 32, "class_names": ["a", "b"], "report": {},
        "artifact_key": f"models/{row_id(number)}",
    }  # fmt: skip


def names(connection: sa.Connection, table: str) -> dict[str, str]:
    return dict(connection.execute(sa.text(f"SELECT id, name FROM {table}")).all())


def test_repeated_names_are_numbered_and_models_named(
    database_url: str | None, tmp_path: Path
) -> None:
    engine = make_engine(database_url or f"sqlite:///{tmp_path / 'p2l.db'}")
    migrate_to(engine, "0010")
    tables = sa.MetaData()
    tables.reflect(engine, only=["projects", "datasets", "sources", "models"])
    with engine.begin() as connection:
        connection.execute(
            tables.tables["projects"].insert(),
            [{"id": OTHER_PROJECT, "name": "other", "created_at": START, "quotas": {},
              "share_evidence": False}],
        )  # fmt: skip
        connection.execute(
            tables.tables["datasets"].insert(),
            [dataset(1, "fashion"), dataset(2, "fashion"), dataset(3, "fashion-2"),
             dataset(4, "fashion", OTHER_PROJECT)],
        )  # fmt: skip
        connection.execute(
            tables.tables["sources"].insert(),
            [source(11, "fashion-finetuned"), source(12, "fashion-finetuned"),
             source(13, "fashion-finetuned"), source(14, "tops")],
        )  # fmt: skip
        connection.execute(
            tables.tables["models"].insert(),
            [model(21, row_id(14), row_id(1)), model(22, row_id(14), row_id(1)),
             model(23, row_id(99), row_id(2))],
        )  # fmt: skip
    migrate_to(engine, "head")
    with engine.connect() as connection:
        # The oldest keeps its name; a later one is numbered around names already held.
        assert names(connection, "datasets") == {
            row_id(1): "fashion", row_id(2): "fashion-3", row_id(3): "fashion-2",
            row_id(4): "fashion",
        }  # fmt: skip
        assert names(connection, "sources") == {
            row_id(11): "fashion-finetuned", row_id(12): "fashion-finetuned-2",
            row_id(13): "fashion-finetuned-3", row_id(14): "tops",
        }  # fmt: skip
        assert names(connection, "models") == {
            row_id(21): "fashion-from-tops",
            row_id(22): "fashion-from-tops-2",
            row_id(23): f"model-{row_id(23)[:8]}",  # its source is gone
        }
    # From now on the database holds names unique, whatever the code above it does.
    tables = sa.MetaData()
    tables.reflect(engine, only=["datasets", "models"])
    for table, row in (("datasets", dataset(5, "fashion")), ("models", model(24, "x", "y"))):
        if table == "models":
            row["name"] = "fashion-from-tops"
        with pytest.raises(IntegrityError), engine.begin() as connection:
            connection.execute(tables.tables[table].insert(), [row])
    engine.dispose()
