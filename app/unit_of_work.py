"""Files and rows that land together, or not at all.

Files are built in staging folders and published with one atomic rename each; rows are
added to the session and committed once, after every publish. If anything raises (the
commit included), or the work is abandoned, the published artifacts are deleted again and
the transaction is rolled back, so no row points at a missing file and no file is left
that no row owns (a crash between publish and commit leaves one, which start-up sweeps).
"""

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy.orm import Session

from app.store import ArtifactStore, folder_bytes


class UnitOfWork:
    """What one operation staged and published; see ``unit_of_work``."""

    def __init__(self, session: Session, store: ArtifactStore) -> None:
        self.session = session
        self.store = store
        self.staged: list[Path] = []
        self.published: list[str] = []
        self.abandoned = False

    def stage(self) -> Path:
        """A fresh staging folder, discarded at the end unless published."""
        staging = self.store.new_staging_dir()
        self.staged.append(staging)
        return staging

    def publish(self, staging: Path, key: str) -> int:
        """Move a staged folder to ``key``; deleted again if the unit of work fails. Returns
        the bytes it holds (what a project's storage quota counts)."""
        size = folder_bytes(staging)
        self.store.publish(staging, key)
        self.published.append(key)
        return size

    def abandon(self) -> None:
        """Keep nothing, without an error (e.g. the job this work was for is gone)."""
        self.abandoned = True

    def _undo(self) -> None:
        self.session.rollback()
        for key in self.published:
            self.store.delete(key)


@contextmanager
def unit_of_work(session: Session, store: ArtifactStore) -> Iterator[UnitOfWork]:
    """Commit the session after the body, or undo its files and rows if anything fails."""
    work = UnitOfWork(session, store)
    try:
        yield work
        if work.abandoned:
            work._undo()
        else:
            session.commit()
    except BaseException:
        work._undo()
        raise
    finally:
        for staging in work.staged:
            store.discard(staging)  # a published folder is no longer there: a no-op
