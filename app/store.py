"""Artifact store: dataset files, signatures and weights, addressed by a relative key.

Everything is staged under ``tmp/`` and published with one atomic rename, so a crash never
leaves a half-written artifact visible under its final key. Every ``tmp/`` entry names its
owner (``stage-<host>-<pid>-...``), so what a dead process left is swept at once.
"""

import os
import re
import shutil
import socket
import tempfile
import time
import uuid
from abc import ABC, abstractmethod
from pathlib import Path

# stage-, write- or trash-, then the owner (host, pid), then a random part without a dash.
_OWNED_ENTRY = re.compile(r"(?:stage|write|trash)-(?P<host>[^-]+)-(?P<pid>\d{1,9})-[^-]+")


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
        return Path(tempfile.mkdtemp(prefix=f"stage-{tmp_owner()}-", dir=self.tmp))

    def publish(self, staging: Path, key: str) -> str:
        target = self.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.rename(staging, target)  # atomic on one file system; fails if target exists
        _fsync_dir(target.parent)
        return self.uri(key)

    def write_file(self, key: str, data: bytes) -> str:
        target = self.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, temp_name = tempfile.mkstemp(prefix=f"write-{tmp_owner()}-", dir=self.tmp)
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
        trash = self.tmp / f"trash-{tmp_owner()}-{uuid.uuid4().hex}"
        os.rename(target, trash)
        self.discard(trash)

    def discard(self, staging: Path) -> None:
        if staging.is_dir():
            shutil.rmtree(staging, ignore_errors=True)
        else:
            staging.unlink(missing_ok=True)

    def sweep_tmp(self, older_than_seconds: float = 0) -> int:
        """Remove leftovers of interrupted writes; returns how many.

        An entry of a process on this host goes as soon as that process is dead, and stays
        while it lives. Any other entry (another host's, or named before owners were) goes
        once older than ``older_than_seconds``: its writer may still be at work.
        """
        cutoff = time.time() - older_than_seconds
        host = _host()
        removed = 0
        for entry in self.tmp.iterdir():
            owner = _OWNED_ENTRY.fullmatch(entry.name)
            if owner is not None and owner["host"] == host:
                doomed = not _alive(int(owner["pid"]))
            else:
                try:
                    doomed = entry.lstat().st_mtime <= cutoff
                except FileNotFoundError:  # its writer finished meanwhile
                    continue
            if doomed:
                self.discard(entry)
                removed += 1
        return removed

    def keys_under(self, prefix: str) -> set[str]:
        """Keys of the artifacts directly under ``prefix`` (e.g. ``datasets``)."""
        folder = self.root / prefix
        if not folder.is_dir():
            return set()
        return {f"{prefix}/{entry.name}" for entry in folder.iterdir()}


def tmp_owner(pid: int | None = None) -> str:
    """``<host>-<pid>``, the owner part of a ``tmp/`` entry's name (this process by default)."""
    return f"{_host()}-{os.getpid() if pid is None else pid}"


def _host() -> str:
    """Where a pid names a process: the host name (no dashes), and the pid namespace if any."""
    host = re.sub(r"[^A-Za-z0-9.]", "_", socket.gethostname())[:40] or "host"
    try:  # containers sharing a volume and a host name still number their processes apart
        return f"{host}.{os.stat('/proc/self/ns/pid').st_ino}"
    except OSError:  # no /proc (macOS): the host name alone
        return host


def _alive(pid: int) -> bool:
    """Whether a process with this pid runs here (a signal-0 probe sends nothing).

    A dead writer's pid may have been reused by an unrelated process; its leftovers then
    stay until that process ends too, which is harmless enough: they are only disk space.
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: alive, under another user
        return True
    return True


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
