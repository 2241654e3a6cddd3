"""The unit of work: files and rows land together, or neither does (real SQLite, real files)."""

from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.models import Ranking
from app.store import LocalArtifactStore
from app.unit_of_work import UnitOfWork, unit_of_work

pytestmark = pytest.mark.unit


@pytest.fixture
def store(tmp_path: Path) -> LocalArtifactStore:
    return LocalArtifactStore(tmp_path / "data")


def row(ranking_id: str) -> Ranking:
    return Ranking(
        id=ranking_id, target_dataset_id="t", method="p2l", measure="js",
        params={}, results=[], excluded=[],
    )  # fmt: skip


def stage_and_publish(work: UnitOfWork, key: str) -> Path:
    staging = work.stage()
    (staging / "weights.bin").write_bytes(b"\x00" * 64)
    work.publish(staging, key)
    return staging


def leftovers(store: LocalArtifactStore) -> list[Path]:
    return list(store.tmp.iterdir())


def test_success_publishes_files_and_commits_rows(
    session: Session, store: LocalArtifactStore
) -> None:
    with unit_of_work(session, store) as work:
        stage_and_publish(work, "models/a")
        session.add(row("a" * 32))
    assert (store.path("models/a") / "weights.bin").stat().st_size == 64
    assert session.scalars(select(Ranking.id)).all() == ["a" * 32]
    assert leftovers(store) == []


def test_an_error_after_publishing_removes_the_files_and_the_rows(
    session: Session, store: LocalArtifactStore
) -> None:
    with (
        pytest.raises(RuntimeError, match="signature failed"),
        unit_of_work(session, store) as work,
    ):
        stage_and_publish(work, "models/b")
        session.add(row("b" * 32))
        work.stage()  # a second folder, never published
        raise RuntimeError("signature failed")
    assert not store.path("models/b").exists()
    assert session.scalars(select(Ranking.id)).all() == []
    assert leftovers(store) == []


def test_a_failed_commit_removes_the_published_files(
    session: Session, store: LocalArtifactStore
) -> None:
    with unit_of_work(session, store):
        session.add(row("c" * 32))
    with pytest.raises(IntegrityError), unit_of_work(session, store) as work:
        stage_and_publish(work, "models/c")
        session.add(row("c" * 32))  # same primary key: the commit fails
    assert not store.path("models/c").exists()
    assert leftovers(store) == []


def test_abandoned_work_keeps_nothing_and_raises_nothing(
    session: Session, store: LocalArtifactStore
) -> None:
    with unit_of_work(session, store) as work:
        stage_and_publish(work, "models/d")
        session.add(row("d" * 32))
        work.abandon()
    assert not store.path("models/d").exists()
    assert session.scalars(select(Ranking.id)).all() == []
