"""Artifact store: dataset files, signatures and weights, addressed by a relative key.

Everything is staged under a local ``tmp/`` and then published: on local disk with one
atomic rename, so a crash never leaves a half-written artifact visible under its final key;
in an object store (S3) by upload, where visibility comes from the committed row that
references the key instead (see ``app.unit_of_work``). Every ``tmp/`` entry names its owner
(``stage-<host>-<pid>-...``), so what a dead process left is swept at once.
"""

import contextlib
import errno
import os
import re
import shutil
import socket
import tempfile
import time
import uuid
from abc import ABC, abstractmethod
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Any

from app.config import Settings

# stage-, write-, trash- or fetch-, then the owner (host, pid), then a random part without a dash.
_OWNED_ENTRY = re.compile(r"(?:stage|write|trash|fetch)-(?P<host>[^-]+)-(?P<pid>\d{1,9})-[^-]+")


class ArtifactStore(ABC):
    """Where artifacts live (local disk or an object store); staging is always local.

    ``scratch`` is the local folder whose ``tmp/`` holds staging folders and partial
    writes, swept by ``sweep_tmp``.
    """

    def __init__(self, scratch: Path) -> None:
        self.tmp = scratch.resolve() / "tmp"
        self.tmp.mkdir(parents=True, exist_ok=True)

    @abstractmethod
    def publish(self, staging: Path, key: str) -> str:
        """Move a staged directory to ``key`` (refused if it exists); returns the artifact URI."""

    @abstractmethod
    def write_file(self, key: str, data: bytes) -> str:
        """Atomically write (or overwrite) one file at ``key``; returns the artifact URI."""

    @abstractmethod
    def path(self, key: str) -> Path:
        """Local path of an artifact (files are read directly by the science code)."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove an artifact; a missing one is not an error."""

    @abstractmethod
    def keys_under(self, prefix: str) -> set[str]:
        """Keys of the artifacts directly under ``prefix`` (e.g. ``datasets``)."""

    @abstractmethod
    def uri(self, key: str) -> str:
        """URI of a key (``file://...``, ``s3://...``)."""

    @abstractmethod
    def published_at(self, key: str) -> float:
        """When an artifact was published or last written (POSIX time)."""

    @abstractmethod
    def size_bytes(self, key: str) -> int:
        """Bytes an artifact takes (every file under its key; 0 when it is missing)."""

    def forget_cached(self, key: str) -> None:  # noqa: B027 (a no-op where nothing is cached)
        """Drop this machine's copy of an artifact, if it keeps one (the next read refetches)."""

    def free_bytes(self) -> int:
        """Free space where artifacts are staged (and, for the local store, kept)."""
        return shutil.disk_usage(self.tmp).free

    def new_staging_dir(self) -> Path:
        """A fresh private directory to build an artifact in."""
        return Path(tempfile.mkdtemp(prefix=f"stage-{tmp_owner()}-", dir=self.tmp))

    def discard(self, staging: Path) -> None:
        """Throw away a staging directory (or a temporary file)."""
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

    def _trash(self, target: Path) -> None:
        """Remove a local file or folder: renamed away first, so it vanishes at once."""
        trash = self.tmp / f"trash-{tmp_owner()}-{uuid.uuid4().hex}"
        try:
            os.rename(target, trash)
        except FileNotFoundError:
            return
        self.discard(trash)


class LocalArtifactStore(ArtifactStore):
    """Artifacts as files under one root directory (the data dir)."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.root = root.resolve()

    def uri(self, key: str) -> str:
        """``file://`` URI of a key."""
        return self.path(key).as_uri()

    def path(self, key: str) -> Path:
        target = (self.root / key).resolve()
        if not target.is_relative_to(self.root) or target == self.root:
            raise ValueError(f"artifact key {key!r} escapes the store")
        return target

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
        self._trash(target)

    def keys_under(self, prefix: str) -> set[str]:
        folder = self.root / prefix
        if not folder.is_dir():
            return set()
        return {f"{prefix}/{entry.name}" for entry in folder.iterdir()}

    def size_bytes(self, key: str) -> int:
        return folder_bytes(self.path(key))

    def published_at(self, key: str) -> float:
        # Publishing renames a folder just written: its mtime is when it was published.
        return self.path(key).stat().st_mtime


class ObjectArtifactStore(ArtifactStore):
    """Artifacts as objects under an fsspec URL (``s3://bucket/prefix``), read through a cache.

    Object stores have no atomic rename, so ``publish`` uploads file by file and the
    artifact counts as there only once a committed row references its key (the unit of
    work deletes the upload if the commit fails; start-up sweeps what a crash left).
    Published artifacts are immutable, so a local copy under ``<scratch>/cache/<key>``,
    fetched on first use, stays valid; ``write_file`` updates this machine's copy only.
    """

    def __init__(self, url: str, scratch: Path, **storage_options: Any) -> None:
        super().__init__(scratch)
        # Optional dependency: only an object-store deployment needs fsspec and s3fs.
        import fsspec  # type: ignore[import-untyped]

        self.cache = scratch.resolve() / "cache"
        self.cache.mkdir(parents=True, exist_ok=True)
        self.protocol, _, _ = url.partition("://")
        # Other machines publish and delete too: a cached listing would hide their changes.
        storage_options.setdefault("use_listings_cache", False)
        self.fs, root = fsspec.core.url_to_fs(url, **storage_options)
        self.root = root.rstrip("/")

    def uri(self, key: str) -> str:
        return f"{self.protocol}://{self._remote(key)}"

    def path(self, key: str) -> Path:
        target = self._cached(key)
        if not target.exists():
            self._fetch(key, target)
        return target  # missing when nothing is published there, like a local path

    def publish(self, staging: Path, key: str) -> str:
        remote = self._remote(key)
        if self.fs.exists(remote):
            # Checked, not atomic: keys are fresh ids, so two publishers never race for one.
            raise FileExistsError(errno.EEXIST, "artifact exists", self.uri(key))
        files = sorted(item for item in staging.rglob("*") if item.is_file())
        remotes = [f"{remote}/{item.relative_to(staging).as_posix()}" for item in files]
        try:
            if files:
                self.fs.put([str(item) for item in files], remotes)
        except BaseException:
            self._remove_remote(remote)  # no row will ever own half an upload
            raise
        self._adopt(staging, key)
        return self.uri(key)

    def write_file(self, key: str, data: bytes) -> str:
        remote = self._remote(key)
        self.fs.pipe_file(remote, data)  # one PUT: readers get the old object or the new one
        target = self._cached(key)
        # Keep a cached artifact folder whole; with no cached folder, the next path() fetches
        # the lot (writing the file alone would make a partial folder look cached).
        if target.parent.is_dir():
            fd, temp_name = tempfile.mkstemp(prefix=f"write-{tmp_owner()}-", dir=self.tmp)
            try:
                with os.fdopen(fd, "wb") as stream:
                    stream.write(data)
                os.replace(temp_name, target)
            except BaseException:
                Path(temp_name).unlink(missing_ok=True)
                raise
        return self.uri(key)

    def delete(self, key: str) -> None:
        self._remove_remote(self._remote(key))
        self._trash(self._cached(key))

    def forget_cached(self, key: str) -> None:
        self._trash(self._cached(key))

    def keys_under(self, prefix: str) -> set[str]:
        try:
            entries = self.fs.ls(self._remote(prefix), detail=False)
        except FileNotFoundError:
            return set()
        return {f"{prefix}/{PurePosixPath(entry).name}" for entry in entries}

    def size_bytes(self, key: str) -> int:
        try:
            return int(self.fs.du(self._remote(key), total=True))
        except FileNotFoundError:
            return 0

    def published_at(self, key: str) -> float:
        found = self.fs.find(self._remote(key), detail=True)
        if not found:
            raise FileNotFoundError(errno.ENOENT, "no such artifact", self.uri(key))
        return max(_modified(info) for info in found.values())

    def _remote(self, key: str) -> str:
        """``bucket/prefix/key``, the path fsspec takes, after checking the key."""
        return f"{self.root}/{_checked_key(key)}"

    def _cached(self, key: str) -> Path:
        return self.cache / _checked_key(key)

    def _adopt(self, staging: Path, key: str) -> None:
        """Keep a published staging folder as the cached copy: no download on this machine."""
        target = self._cached(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        now = time.time()
        os.utime(staging, (now, now))  # the sweep ages an artifact by its folder's mtime
        self._trash(target)  # a stale copy of a key deleted elsewhere and published again
        try:
            os.rename(staging, target)
        except OSError:  # a reader cached it meanwhile: that copy is as good
            self.discard(staging)

    def _fetch(self, key: str, target: Path) -> None:
        """Download an artifact into the cache, whole or not at all."""
        remote = self._remote(key)
        found: dict[str, dict[str, Any]] = self.fs.find(remote, detail=True)
        if not found:
            return
        fetch = Path(tempfile.mkdtemp(prefix=f"fetch-{tmp_owner()}-", dir=self.tmp))
        try:
            if list(found) == [remote]:  # a single file (``write_file``)
                local = fetch / "file"
                self.fs.get_file(remote, str(local))
            else:
                local = fetch / "folder"
                remotes = sorted(found)
                locals_ = [local / name[len(remote) + 1 :] for name in remotes]
                for item in locals_:
                    item.parent.mkdir(parents=True, exist_ok=True)
                self.fs.get(remotes, [str(item) for item in locals_])
            # Its mtime is when it was published, as with a local store (the sweep reads it).
            published = max(_modified(info) for info in found.values())
            os.utime(local, (published, published))
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.rename(local, target)  # readers see all of it or nothing
            except OSError:
                if not target.exists():
                    raise
                # Another reader renamed its copy into place first: the same bytes.
        finally:
            self.discard(fetch)

    def _remove_remote(self, remote: str) -> None:
        with contextlib.suppress(FileNotFoundError):  # already gone: deleting is idempotent
            self.fs.rm(remote, recursive=True)


def folder_bytes(path: Path) -> int:
    """Bytes of the files under ``path`` (or of the file itself; 0 when it is missing)."""
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def make_store(settings: Settings) -> ArtifactStore:
    """The store ``P2L_STORE_URL`` names: the data dir by default, a folder, or s3://."""
    url = settings.store_url
    if url is None:
        return LocalArtifactStore(settings.data_dir)
    protocol, separator, rest = url.partition("://")
    if separator and protocol == "file":
        # A folder (a shared mount, say): atomic renames, so no cache is needed.
        return LocalArtifactStore(Path(rest))
    if separator and protocol in ("s3", "s3a"):
        options: dict[str, Any] = {}
        if settings.s3_endpoint_url:
            options["client_kwargs"] = {"endpoint_url": settings.s3_endpoint_url}
        # Credentials and region come from the usual AWS_* variables (or files) via boto.
        return ObjectArtifactStore(url, settings.data_dir, **options)
    raise ValueError(f"P2L_STORE_URL={url!r}: expected file:///path or s3://bucket/prefix")


def _checked_key(key: str) -> str:
    """A key as given, if it is relative and stays below the store's root."""
    parts = key.split("/")
    if not key or key.startswith("/") or "\\" in key or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"artifact key {key!r} escapes the store")
    return key


def _modified(info: dict[str, Any]) -> float:
    """An fsspec listing entry's modification time (S3: LastModified; files: mtime)."""
    value = info.get("LastModified", info.get("mtime"))
    if isinstance(value, datetime):
        return value.timestamp()
    return float(value) if value is not None else time.time()


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
