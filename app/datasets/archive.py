"""Safe extraction of an uploaded image-folder archive (zip, tar, tar.gz/bz2/xz).

Members are never extracted by path: each regular file is read (size-capped) into memory,
decoded as an image, and only then written under a destination path the service builds
itself. Links, devices, absolute paths and ``..`` never reach the file system.
"""

import os
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO

from app.datasets.images import ImageRejected, open_rgb


class ArchiveError(ValueError):
    """The archive as a whole is unusable (bomb, wrong layout, unreadable)."""


@dataclass(frozen=True)
class ArchiveLimits:
    """Caps that keep a hostile archive from exhausting disk, memory or time."""

    max_members: int
    max_uncompressed_bytes: int
    max_compression_ratio: float
    max_image_bytes: int
    max_image_pixels: int


@dataclass(frozen=True)
class RejectedFile:
    """One archive member that was not kept, and why."""

    path: str
    reason: str


@dataclass
class ImageFolder:
    """What an archive held: accepted image files per class, and every rejected member."""

    root: Path
    files_by_class: dict[str, list[Path]] = field(default_factory=dict)
    rejected: list[RejectedFile] = field(default_factory=list)

    @property
    def class_counts(self) -> dict[str, int]:
        """Images kept per class, classes in sorted order."""
        return {name: len(files) for name, files in sorted(self.files_by_class.items())}


@dataclass
class _Member:
    name: str
    kind: str  # "file", "dir", "link" or "special"
    size: int
    open: Callable[[], IO[bytes]]


_METADATA_PARTS = ("__MACOSX", "Thumbs.db", "desktop.ini")


def extract_image_folder(archive: IO[bytes], dest: Path, limits: ArchiveLimits) -> ImageFolder:
    """Validate an archive of class folders and write its good images under ``dest/<class>/``.

    Raises ArchiveError when the archive is not a zip/tar, or breaks a size limit; members
    that are merely bad (unsafe path, link, not an image, corrupt, too large) are listed in
    ``rejected`` and skipped.
    """
    archive_size = _stream_size(archive)
    members = _read_members(archive, archive_size, limits)
    result = ImageFolder(root=dest)

    candidates: list[tuple[_Member, tuple[str, ...]]] = []
    for member in members:
        if member.kind == "dir":
            continue
        parts, problem = _safe_parts(member.name)
        if problem is None and member.kind != "file":
            problem = f"{member.kind} entries are not extracted (only regular files)"
        if problem is None and any(p.startswith(".") or p in _METADATA_PARTS for p in parts):
            problem = "hidden or OS metadata file"
        if problem:
            result.rejected.append(RejectedFile(member.name, problem))
        else:
            candidates.append((member, parts))

    candidates = _strip_single_top_folder(candidates)
    seen: set[tuple[str, ...]] = set()
    total_read = 0
    for member, parts in candidates:
        if len(parts) != 2:
            where = "at the top level" if len(parts) < 2 else "nested below a class folder"
            result.rejected.append(
                RejectedFile(member.name, f"file {where}; expected <class>/<image>")
            )
            continue
        if parts in seen:
            result.rejected.append(RejectedFile(member.name, "duplicate entry in the archive"))
            continue
        seen.add(parts)
        if member.size > limits.max_image_bytes:
            result.rejected.append(
                RejectedFile(
                    member.name,
                    f"file is {member.size:,} bytes, above the per-image limit of "
                    f"{limits.max_image_bytes:,}",
                )
            )
            continue
        try:
            data = _read_capped(member, limits.max_image_bytes)
        except (zipfile.BadZipFile, tarfile.TarError, zlib.error, OSError, EOFError) as exc:
            result.rejected.append(RejectedFile(member.name, f"unreadable archive member: {exc}"))
            continue
        if data is None:
            result.rejected.append(RejectedFile(member.name, "file larger than its header says"))
            continue
        total_read += len(data)
        if total_read > limits.max_uncompressed_bytes:
            raise ArchiveError(f"archive expands beyond {limits.max_uncompressed_bytes:,} bytes")
        try:
            open_rgb(data, limits.max_image_pixels)
        except ImageRejected as exc:
            result.rejected.append(RejectedFile(member.name, str(exc)))
            continue
        class_name, file_name = parts
        class_dir = dest / class_name
        class_dir.mkdir(parents=True, exist_ok=True)
        target = class_dir / file_name
        target.write_bytes(data)
        result.files_by_class.setdefault(class_name, []).append(target)
    return result


def _stream_size(stream: IO[bytes]) -> int:
    stream.seek(0, os.SEEK_END)
    size = stream.tell()
    stream.seek(0)
    return size


def _read_members(archive: IO[bytes], archive_size: int, limits: ArchiveLimits) -> list[_Member]:
    if zipfile.is_zipfile(archive):
        archive.seek(0)
        iterator = _zip_members(archive)
    else:
        archive.seek(0)
        try:
            tar = tarfile.open(fileobj=archive, mode="r:*")  # noqa: SIM115 (members open lazily)
        except (tarfile.TarError, OSError, EOFError):
            raise ArchiveError(
                "not a readable archive: upload a .zip, .tar, .tar.gz, .tar.bz2 or .tar.xz"
            ) from None
        iterator = _tar_members(tar)

    members: list[_Member] = []
    declared = 0
    try:
        for member in iterator:
            members.append(member)
            if len(members) > limits.max_members:
                raise ArchiveError(f"archive has more than {limits.max_members:,} members")
            declared += member.size
            if declared > limits.max_uncompressed_bytes:
                raise ArchiveError(
                    f"archive expands to more than {limits.max_uncompressed_bytes:,} bytes"
                )
            if declared > limits.max_compression_ratio * max(archive_size, 1) and declared > 2**20:
                raise ArchiveError(
                    f"archive expands more than {limits.max_compression_ratio:g} times its size "
                    f"({archive_size:,} bytes -> over {declared:,}): refused as a compression bomb"
                )
    except (tarfile.TarError, zipfile.BadZipFile, OSError, EOFError) as exc:
        raise ArchiveError(f"archive is corrupt: {exc}") from None
    return members


def _zip_members(archive: IO[bytes]) -> Iterator[_Member]:
    try:
        zf = zipfile.ZipFile(archive)
    except zipfile.BadZipFile as exc:
        raise ArchiveError(f"zip archive is corrupt: {exc}") from None
    for info in zf.infolist():
        mode = info.external_attr >> 16
        if info.is_dir():
            kind = "dir"
        elif stat.S_ISLNK(mode):
            kind = "link"
        elif stat.S_IFMT(mode) and not stat.S_ISREG(mode):  # type bits are optional
            kind = "special"
        else:
            kind = "file"
        yield _Member(info.filename, kind, info.file_size, lambda info=info: zf.open(info))


def _tar_members(tar: tarfile.TarFile) -> Iterator[_Member]:
    while (info := tar.next()) is not None:
        if info.isdir():
            kind = "dir"
        elif info.issym() or info.islnk():
            kind = "link"
        elif info.isreg():
            kind = "file"
        else:
            kind = "special"
        opener: Callable[[], IO[bytes]] = lambda info=info: tar.extractfile(info)  # noqa: E731
        yield _Member(info.name, kind, info.size, opener)


def _safe_parts(name: str) -> tuple[tuple[str, ...], str | None]:
    """Split a member name into path parts, or say why the name is unsafe."""
    normalised = name.replace("\\", "/")
    if "\x00" in normalised:
        return (), "unsafe path: contains a NUL byte"
    path = PurePosixPath(normalised)
    if path.is_absolute() or (path.parts and ":" in path.parts[0]):
        return (), "unsafe path: absolute paths are not extracted"
    parts = tuple(p for p in path.parts if p not in ("", "."))
    if ".." in parts:
        return (), "unsafe path: contains '..' (path traversal)"
    if not parts:
        return (), "empty member name"
    return parts, None


def _strip_single_top_folder(
    candidates: list[tuple[_Member, tuple[str, ...]]],
) -> list[tuple[_Member, tuple[str, ...]]]:
    """Allow archives that wrap the class folders in one top folder (``data/<class>/x.png``)."""
    if not candidates:
        return candidates
    tops = {parts[0] for _, parts in candidates}
    if len(tops) == 1 and any(len(parts) >= 3 for _, parts in candidates):
        return [(member, parts[1:]) for member, parts in candidates]
    return candidates


def _read_capped(member: _Member, cap: int) -> bytes | None:
    """Read a member, never more than ``cap`` bytes; None if it holds more than declared."""
    with member.open() as stream:
        data = stream.read(min(member.size, cap) + 1)
    return None if len(data) > member.size else data
