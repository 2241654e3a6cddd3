"""Artifact store: dataset files, signatures and weights, addressed by a relative key.

Everything is staged under ``tmp/`` and published with one atomic rename, so a crash never
leaves a half-written artifact visible under its final key.
"""

import os
import shutil
import tempfile
import time
import uuid
from abc import ABC, abstractmethod
from pathlib import Path


class ArtifactStore(ABC):
    """Where artifacts live; one implementation per backend (local disk today)."""

    @abstractmethod
    def new_staging_dir(self) -> Path:
        """A fresh private directory to build an artifact in."""

    @abstractmethod
    def publish(self, staging: Path, key: str) -> str:
        """Atomically move a staged directory to ``key``; returns the artifact URI."""

    @abstractmethod
    def write_file(self, key: str, data: bytes) -> str:
        """Atomically write one file at ``key``; returns the artifact URI."""

    @abstractmethod
    def path(self, key: str) -> Path:
        """Local path of an artifact (files are read directly by the science code)."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove an artifact; a missing one is not an error."""

    @abstractmethod
    def discard(self, staging: Path) -> None:
        """Throw away a staging directory."""


class LocalArtifactStore(ArtifactStore):
    """Artifacts as files under one root directory (the data dir)."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.tmp = self.root / "tmp"
        self.tmp.mkdir(parents=True, exist_ok=True)

    def uri(self, key: str) -> str:
        """``file://`` URI of a key."""
        return self.path(key).as_uri()

    def path(self, key: str) -> Path:
        target = (self.root / key).resolve()
        if not target.is_relative_to(self.root) or target == self.root:
            raise ValueError(f"artifact key {key!r} escapes the store")
        return target

    def new_staging_dir(self) -> Path:
        return Path(tempfile.mkdtemp(prefix="stage-", dir=self.tmp))

    def publish(self, staging: Path, key: str) -> str:
        target = self.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.rename(staging, target)  # atomic on one file system; fails if target exists
        _fsync_dir(target.parent)
        return self.uri(key)

    def write_file(self, key: str, data: bytes) -> str:
        target = self.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, temp_name = tempfile.mkstemp(prefix="write-", dir=self.tmp)
        try:
            with os.fdopen(fd, "wb") as stream:
                stream.write(data)
                stream.flush()
                os.fsync(stream.fileno())
            os.replace(temp_name, target)
        except BaseException:
            Path(temp_name).unlink(missing_ok=True)
            raise
        _fsync_dir(target.parent)
        return self.uri(key)

    def delete(self, key: str) -> None:
        target = self.path(key)
        if not target.exists():
            return
        # Rename first so the artifact disappears atomically, then remove at leisure.
        trash = self.tmp / f"trash-{uuid.uuid4().hex}"
        os.rename(target, trash)
        self.discard(trash)

    def discard(self, staging: Path) -> None:
        if staging.is_dir():
            shutil.rmtree(staging, ignore_errors=True)
        else:
            staging.unlink(missing_ok=True)

    def sweep_tmp(self, older_than_seconds: float = 0) -> int:
        """Remove leftovers of interrupted writes (run at start-up); returns how many.

        ``older_than_seconds`` spares recent entries, which another process sharing the
        data dir (a separate job worker) may still be writing.
        """
        cutoff = time.time() - older_than_seconds
        leftovers = [e for e in self.tmp.iterdir() if e.lstat().st_mtime <= cutoff]
        for entry in leftovers:
            self.discard(entry)
        return len(leftovers)

    def keys_under(self, prefix: str) -> set[str]:
        """Keys of the artifacts directly under ``prefix`` (e.g. ``datasets``)."""
        folder = self.root / prefix
        if not folder.is_dir():
            return set()
        return {f"{prefix}/{entry.name}" for entry in folder.iterdir()}


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
