"""Safe extraction of an uploaded image-folder archive (zip, tar, tar.gz/bz2/xz).

Members are never extracted by path: each regular file is read (size-capped) into memory,
decoded as an image, and only then written under a destination path the service builds
itself. Links, devices, absolute paths and ``..`` never reach the file system.
"""

import lzma
import os
import stat
import struct
import tarfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path, PurePosixPath
from typing import IO, Any

from app.imaging.images import ImageRejected, verify_image

# What each rejection ``kind`` means (the API documents these; the reason says the details).
REJECTION_KINDS: dict[str, str] = {
    "unsafe_path": "absolute path, '..', NUL byte or empty name",
    "invalid_name": "name is not valid UTF-8",
    "name_too_long": "a folder or file name above P2L_MAX_NAME_BYTES bytes",
    "link": "symbolic or hard link (never followed)",
    "special_file": "device, FIFO or other entry that is not a regular file",
    "hidden": "hidden or OS metadata file (.DS_Store, __MACOSX, Thumbs.db...)",
    "wrong_layout": "not laid out as <class>/<image>",
    "duplicate": "the same path twice in the archive",
    "too_large": "file above P2L_MAX_IMAGE_BYTES",
    "encrypted": "encrypted zip entry (the service takes no passwords)",
    "unsupported_compression": "zip compression method the service cannot read",
    "unreadable": "archive member that cannot be read (bad CRC, truncated, wrong size)",
    "not_an_image": "not an image in a supported format",
    "too_many_pixels": "image above P2L_MAX_IMAGE_PIXELS (decompression-bomb guard)",
    "corrupt_image": "corrupt or truncated image",
}

# tarfile reads a GNU long name or a pax record whole into memory before anyone sees it; one
# this large is not a name but an attack, so the archive is refused before it is read.
MAX_EXTENDED_HEADER_BYTES = 64 * 1024
# A member path longer than this is rejected at once and only a shortened echo is kept: a
# usable path is [top/]<class>/<image>, names of at most 255 bytes each.
MAX_MEMBER_NAME_BYTES = 4096
# Listed paths and reasons are shortened to these many characters.
MAX_LISTED_PATH_CHARS = 1024
MAX_LISTED_REASON_CHARS = 512

# Zip compression methods zipfile reads (bzip2 and lzma need their stdlib modules, always
# present in the service's image), and names for some it does not.
_ZIP_METHODS = {zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA}
_ZIP_METHOD_NAMES = {9: "Deflate64", 93: "Zstandard", 95: "XZ", 98: "PPMd", 99: "AES"}
_ZIP_ENCRYPTED = 0x1 | 0x40  # traditional and strong encryption flag bits
_ZIP_PATCHED = 0x20  # compressed patched data
_ZIP_UTF8_NAME = 0x800  # the name (and comment) are UTF-8 (APPNOTE appendix D)

# Zip records read before zipfile is trusted with an archive (APPNOTE 4.3.12-4.3.16): the end
# of central directory (EOCD), the ZIP64 EOCD locator and record, and a central header.
_EOCD = struct.Struct("<4s4H2LH")  # sig, disk, cd disk, entries here, entries, cd size/offset
_EOCD64_LOCATOR = struct.Struct("<4sLQL")
_EOCD64 = struct.Struct("<4sQ2H2L4Q")  # sig, size, versions, disks, entries x2, cd size/offset
_CENTRAL_HEADER = struct.Struct("<4s4B4HL2L5H2L")
_CENTRAL_FLAG_HIGH_BYTE = 9  # where bits 8-15 of its flags are (little-endian, at 8)
_ZIP_TAIL = 1 << 16  # an archive comment is at most 64 KiB - 1; zipfile searches this far

# Errors a damaged member can raise while it is read.
_READ_ERRORS = (
    zipfile.BadZipFile,
    tarfile.TarError,
    zlib.error,
    lzma.LZMAError,
    OSError,
    EOFError,
    RuntimeError,  # zipfile: encrypted or compression module missing (both checked first)
    NotImplementedError,  # zipfile: unsupported method (checked first)
)


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
    max_name_bytes: int = 200
    max_rejected_listed: int = 100


@dataclass(frozen=True)
class RejectedFile:
    """One archive member that was not kept: its (shortened) path, kind and reason."""

    path: str
    kind: str
    reason: str

    def as_dict(self) -> dict[str, str]:
        """The JSON form stored and answered."""
        return {"path": self.path, "kind": self.kind, "reason": self.reason}


@dataclass
class Rejections:
    """Rejected members: the first ``limit`` listed with their reasons, all counted by kind."""

    limit: int = 100
    listed: list[RejectedFile] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        """Every rejected member, listed or not."""
        return sum(self.counts.values())

    def add(self, path: str, kind: str, reason: str) -> None:
        """Count a rejected member, and list it while fewer than ``limit`` are listed."""
        self.counts[kind] = self.counts.get(kind, 0) + 1
        if len(self.listed) < self.limit:
            self.listed.append(
                RejectedFile(
                    _printable(path, MAX_LISTED_PATH_CHARS),
                    kind,
                    _printable(reason, MAX_LISTED_REASON_CHARS),
                )
            )

    def summary(self) -> dict[str, Any]:
        """``rejected`` (the listed ones), ``rejected_counts`` by kind and ``rejected_total``."""
        return {
            "rejected": [r.as_dict() for r in self.listed],
            "rejected_counts": dict(sorted(self.counts.items())),
            "rejected_total": self.total,
        }


@dataclass
class ImageFolder:
    """What an archive held: accepted image files per class, and the rejected members."""

    root: Path
    files_by_class: dict[str, list[Path]] = field(default_factory=dict)
    rejected: Rejections = field(default_factory=Rejections)

    @property
    def class_counts(self) -> dict[str, int]:
        """Images kept per class, classes in sorted order."""
        return {name: len(files) for name, files in sorted(self.files_by_class.items())}


@dataclass
class _Member:
    name: str
    kind: str  # "file", "dir", "link" or "special_file"
    size: int
    open: Callable[[], IO[bytes]]
    problem: tuple[str, str] | None = None  # (kind, reason) known from the headers alone
    header_bytes: int = 0  # extended headers (tar long names, pax records) read for it


_METADATA_PARTS = ("__MACOSX", "Thumbs.db", "desktop.ini")


def extract_image_folder(archive: IO[bytes], dest: Path, limits: ArchiveLimits) -> ImageFolder:
    """Validate an archive of class folders and write its good images under ``dest/<class>/``.

    Raises ArchiveError when the archive is not a zip/tar, or breaks a size limit; members
    that are merely bad (unsafe or over-long name, link, encrypted, not an image, corrupt,
    too large) are counted in ``rejected`` (the first ``max_rejected_listed`` with reasons)
    and skipped.
    """
    archive_size = stream_size(archive)
    members = _read_members(archive, archive_size, limits)
    result = ImageFolder(root=dest, rejected=Rejections(limits.max_rejected_listed))
    reject = result.rejected.add

    candidates: list[tuple[_Member, tuple[str, ...]]] = []
    for member in members:
        if member.kind == "dir":
            continue
        parts: tuple[str, ...] = ()
        problem = member.problem
        if problem is None:
            parts, problem = _safe_parts(member.name, limits.max_name_bytes)
        if problem is None and member.kind != "file":
            what = "link" if member.kind == "link" else "device, FIFO or other special"
            problem = (member.kind, f"{what} entries are not extracted (only regular files)")
        if problem is None and any(p.startswith(".") or p in _METADATA_PARTS for p in parts):
            problem = ("hidden", "hidden or OS metadata file")
        if problem:
            reject(member.name, *problem)
        else:
            candidates.append((member, parts))

    candidates = _strip_single_top_folder(candidates)
    seen: set[tuple[str, ...]] = set()
    total_read = 0
    for member, parts in candidates:
        if len(parts) != 2:
            where = "at the top level" if len(parts) < 2 else "nested below a class folder"
            reject(member.name, "wrong_layout", f"file {where}; expected <class>/<image>")
            continue
        if parts in seen:
            reject(member.name, "duplicate", "duplicate entry in the archive")
            continue
        seen.add(parts)
        if member.size > limits.max_image_bytes:
            reject(
                member.name,
                "too_large",
                f"file is {member.size:,} bytes, above the per-image limit of "
                f"{limits.max_image_bytes:,}",
            )
            continue
        try:
            data = _read_capped(member, limits.max_image_bytes)
        except _READ_ERRORS as exc:
            reject(member.name, "unreadable", f"unreadable archive member: {exc}")
            continue
        if data is None:
            reject(member.name, "unreadable", "file larger than its header says")
            continue
        total_read += len(data)
        if total_read > limits.max_uncompressed_bytes:
            raise ArchiveError(f"archive expands beyond {limits.max_uncompressed_bytes:,} bytes")
        try:
            verify_image(data, limits.max_image_pixels)
        except ImageRejected as exc:
            reject(member.name, exc.kind, str(exc))
            continue
        class_name, file_name = parts
        class_dir = dest / class_name
        class_dir.mkdir(parents=True, exist_ok=True)
        target = class_dir / file_name
        target.write_bytes(data)
        result.files_by_class.setdefault(class_name, []).append(target)
    return result


def stream_size(stream: IO[bytes]) -> int:
    """Bytes of a seekable upload (its position is left at the start)."""
    stream.seek(0, os.SEEK_END)
    size = stream.tell()
    stream.seek(0)
    return size


def _read_members(archive: IO[bytes], archive_size: int, limits: ArchiveLimits) -> list[_Member]:
    members: list[_Member] = []
    declared = 0
    try:
        if zipfile.is_zipfile(archive):
            names = _zip_central_names(archive, archive_size, limits.max_members)
            archive.seek(0)
            iterator = _zip_members(archive, names)
        else:
            archive.seek(0)
            try:
                tar = tarfile.open(  # noqa: SIM115 (members open lazily)
                    fileobj=archive,
                    mode="r:*",
                    tarinfo=_BoundedTarInfo,
                    encoding="utf-8",
                    errors="surrogateescape",  # undecodable names are rejected, not fatal
                )
            except (tarfile.TarError, OSError, EOFError):
                raise ArchiveError(
                    "not a readable archive: upload a .zip, .tar, .tar.gz, .tar.bz2 or .tar.xz"
                ) from None
            iterator = _tar_members(tar)
        for member in iterator:
            members.append(member)
            if len(members) > limits.max_members:
                raise ArchiveError(f"archive has more than {limits.max_members:,} members")
            # Headers count too: a flood of long names must not expand unchecked.
            declared += member.size + member.header_bytes
            if declared > limits.max_uncompressed_bytes:
                raise ArchiveError(
                    f"archive expands to more than {limits.max_uncompressed_bytes:,} bytes"
                )
            if declared > limits.max_compression_ratio * max(archive_size, 1) and declared > 2**20:
                raise ArchiveError(
                    f"archive expands more than {limits.max_compression_ratio:g} times its size "
                    f"({archive_size:,} bytes -> over {declared:,}): refused as a compression bomb"
                )
    except (tarfile.TarError, zipfile.BadZipFile, lzma.LZMAError, OSError, EOFError) as exc:
        raise ArchiveError(f"archive is corrupt: {exc}") from None
    except RecursionError:
        # tarfile follows chained long-name/pax headers recursively.
        raise ArchiveError("archive is corrupt: too many chained tar headers") from None
    return members


@dataclass
class _ZipNames:
    """What the central directory's raw names say that zipfile would hide or choke on."""

    entries: int  # central headers walked
    # Entry index (central directory order) -> (printable name, kind, reason).
    problems: dict[int, tuple[str, str, str]] = field(default_factory=dict)
    # Offsets of the flag byte holding bit 0x800 (UTF-8 name) to clear for zipfile: a
    # flagged name that is not UTF-8 makes zipfile fail on the whole archive.
    utf8_flag_bytes: set[int] = field(default_factory=set)


def _zip_central_names(archive: IO[bytes], archive_size: int, max_members: int) -> _ZipNames | None:
    """Walk the central directory before zipfile reads it: count its entries and read the
    raw names (None when it cannot be walked: zipfile then says why).

    ArchiveError if the zip has more than ``max_members`` entries: zipfile builds an object
    for every central directory entry before the first one can be looked at (some 550 bytes
    of memory per 85 bytes of archive), so the count is read from the end of central
    directory record, and the central headers are then counted, at most ``max_members + 1``
    of them, since zipfile ignores a declared count that lies.

    The raw names are what zipfile hides: it cuts a name at a NUL byte (``b/x\\0.png``
    would be kept as ``b/x``), and refuses the whole archive when a name flagged UTF-8
    (general purpose bit 11) is not UTF-8. Such entries are noted by position, rejected one
    by one later (``unsafe_path``, ``invalid_name``).
    """
    refusal = ArchiveError(f"archive has more than {max_members:,} members")
    found = _zip_central_directory(archive, archive_size)
    if found is None:
        return None  # not a zip zipfile can open either: it says why
    declared, start, size = found
    if declared > max_members:
        raise refusal
    # Walk the central directory as zipfile will (from the same place, by the same sizes).
    names = _ZipNames(entries=0)
    offset = 0
    while offset < size:
        at = start + offset
        archive.seek(at)
        header = archive.read(_CENTRAL_HEADER.size)
        if len(header) != _CENTRAL_HEADER.size or header[:4] != b"PK\x01\x02":
            return None  # zipfile refuses the archive as corrupt
        fields = _CENTRAL_HEADER.unpack(header)
        flags = fields[5]
        name_size, extra_size, comment_size = fields[12:15]
        raw = archive.read(name_size)
        offset += _CENTRAL_HEADER.size + name_size + extra_size + comment_size
        index = names.entries
        names.entries += 1
        if names.entries > max_members:
            raise refusal
        echo = raw.decode("utf-8", "replace")
        if flags & _ZIP_UTF8_NAME:
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError:
                names.utf8_flag_bytes.add(at + _CENTRAL_FLAG_HIGH_BYTE)
                names.problems[index] = (
                    echo,
                    "invalid_name",
                    "name is flagged UTF-8 but is not valid UTF-8",
                )
                continue
        if b"\0" in raw:
            names.problems[index] = (echo, "unsafe_path", "unsafe path: contains a NUL byte")
    return names


def _zip_central_directory(archive: IO[bytes], archive_size: int) -> tuple[int, int, int] | None:
    """(declared entries, start, size) of the central directory, located as zipfile does."""
    tail_start = max(archive_size - _EOCD.size - _ZIP_TAIL, 0)
    archive.seek(tail_start)
    tail = archive.read()
    at = len(tail) - _EOCD.size  # no archive comment: the record ends the file
    if at < 0 or tail[at : at + 4] != b"PK\x05\x06" or tail[-2:] != b"\0\0":
        at = tail.rfind(b"PK\x05\x06")  # else the last signature, ahead of a comment
    if at < 0 or at + _EOCD.size > len(tail):
        return None
    eocd = _EOCD.unpack_from(tail, at)
    entries, size = eocd[4], eocd[5]
    eocd_at = tail_start + at
    # The directory ends where the records begin: zipfile trusts this over the stored offset.
    location = eocd_at
    # zipfile reads a ZIP64 record whenever its locator sits before the EOCD (not only when
    # the EOCD fields say 0xFFFF), and then takes its counts and sizes.
    record_at = eocd_at - _EOCD64_LOCATOR.size - _EOCD64.size
    if record_at >= 0:
        archive.seek(record_at)
        data = archive.read(_EOCD64.size + _EOCD64_LOCATOR.size)
        locator = _EOCD64_LOCATOR.unpack_from(data, _EOCD64.size)
        if locator[0] == b"PK\x06\x07" and data[:4] == b"PK\x06\x06":
            record = _EOCD64.unpack_from(data)
            entries, size = record[7], record[8]
            location = record_at
    start = location - size
    return (entries, start, size) if start >= 0 else None


def _zip_members(archive: IO[bytes], names: _ZipNames | None) -> Iterator[_Member]:
    stream: IO[bytes] = archive
    if names is not None and names.utf8_flag_bytes:
        stream = _ClearedUtf8Flags(archive, names.utf8_flag_bytes)  # type: ignore[assignment]
    try:
        zf = zipfile.ZipFile(stream)
    except zipfile.BadZipFile as exc:
        raise ArchiveError(f"zip archive is corrupt: {exc}") from None
    except UnicodeDecodeError as exc:  # not expected: the walk above clears such flags
        raise ArchiveError(f"zip archive has a member name that is not UTF-8: {exc}") from None
    infos = zf.infolist()
    problems = names.problems if names is not None else {}
    if names is not None and names.entries != len(infos):
        raise ArchiveError(
            f"zip archive is corrupt: its central directory holds {names.entries:,} entries "
            f"by their sizes, but {len(infos):,} as read"
        )
    for index, info in enumerate(infos):
        mode = info.external_attr >> 16
        if info.is_dir():
            kind = "dir"
        elif stat.S_ISLNK(mode):
            kind = "link"
        elif stat.S_IFMT(mode) and not stat.S_ISREG(mode):  # type bits are optional
            kind = "special_file"
        else:
            kind = "file"
        name, problem = _checked_name(info.filename)
        if index in problems:  # what zipfile's name hides (NUL) or could not decode
            name, bad_kind, reason = problems[index]
            name, problem = _printable(name, MAX_LISTED_PATH_CHARS), (bad_kind, reason)
        problem = problem or _zip_problem(info)
        yield _Member(name, kind, info.file_size, partial(zf.open, info), problem)


class _ClearedUtf8Flags:
    """A read-only view of a zip with the UTF-8 name flag cleared in some central headers.

    zipfile then decodes those names as cp437 (never an error) instead of refusing the
    whole archive; the entries themselves are rejected by position and never opened.
    """

    def __init__(self, inner: IO[bytes], flag_bytes: set[int]) -> None:
        self._inner = inner
        self._flag_bytes = sorted(flag_bytes)

    def read(self, size: int = -1) -> bytes:
        at = self._inner.tell()
        data = self._inner.read(size)
        patched: bytearray | None = None
        for offset in self._flag_bytes:
            if at <= offset < at + len(data):
                patched = patched if patched is not None else bytearray(data)
                patched[offset - at] &= ~(_ZIP_UTF8_NAME >> 8) & 0xFF
        return bytes(patched) if patched is not None else data

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        return self._inner.seek(offset, whence)

    def tell(self) -> int:
        return self._inner.tell()

    def seekable(self) -> bool:
        return True


def _zip_problem(info: zipfile.ZipInfo) -> tuple[str, str] | None:
    """Why zipfile could not read this entry, known from its header (else None)."""
    if info.flag_bits & _ZIP_ENCRYPTED:
        return "encrypted", "encrypted entry; upload it unencrypted (no passwords are taken)"
    if info.flag_bits & _ZIP_PATCHED:
        return "unsupported_compression", "compressed patched data is not supported"
    if info.compress_type not in _ZIP_METHODS:
        method = _ZIP_METHOD_NAMES.get(info.compress_type, "unknown")
        return (
            "unsupported_compression",
            f"compression method {info.compress_type} ({method}) is not supported; use "
            "deflate, bzip2, lzma or store",
        )
    return None


class _BoundedTarInfo(tarfile.TarInfo):
    """TarInfo that refuses oversized extended headers before tarfile reads them whole."""

    def _proc_gnulong(self, tar: tarfile.TarFile) -> tarfile.TarInfo:
        _check_extended_header(self)
        return super()._proc_gnulong(tar)  # type: ignore[misc]

    def _proc_pax(self, tar: tarfile.TarFile) -> tarfile.TarInfo:
        _check_extended_header(self)
        return super()._proc_pax(tar)  # type: ignore[misc]


def _check_extended_header(info: tarfile.TarInfo) -> None:
    if info.size > MAX_EXTENDED_HEADER_BYTES:
        raise ArchiveError(
            f"a tar header of {info.size:,} bytes (long name or pax record) is above the "
            f"limit of {MAX_EXTENDED_HEADER_BYTES:,} bytes"
        )


def _tar_members(tar: tarfile.TarFile) -> Iterator[_Member]:
    while (info := tar.next()) is not None:
        # tarfile keeps every member it has read; only ours (regular files) need to live on.
        tar.members.clear()  # type: ignore[attr-defined]
        if info.isdir():
            kind = "dir"
        elif info.issym() or info.islnk():
            kind = "link"
        elif info.isreg():
            kind = "file"
        else:
            kind = "special_file"
        name, problem = _checked_name(info.name)
        # Long names live in the header blocks between the member's offset and its data.
        header_bytes = info.offset_data - info.offset - tarfile.BLOCKSIZE
        info.name, info.pax_headers = name, {}  # drop what an over-long name held
        yield _Member(name, kind, info.size, _tar_opener(tar, info), problem, header_bytes)


def _tar_opener(tar: tarfile.TarFile, info: tarfile.TarInfo) -> Callable[[], IO[bytes]]:
    def open_member() -> IO[bytes]:
        stream = tar.extractfile(info)
        if stream is None:  # only for non-regular members, which are never opened
            raise tarfile.TarError(f"{info.name!r} is not a regular file")
        return stream

    return open_member


def _checked_name(name: str) -> tuple[str, tuple[str, str] | None]:
    """The member name, or a shortened echo and the (kind, reason) if it is unusable."""
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:  # tar names that are not UTF-8 arrive surrogate-escaped
        return _printable(name, MAX_LISTED_PATH_CHARS), ("invalid_name", "name is not UTF-8")
    if size > MAX_MEMBER_NAME_BYTES:
        reason = f"path is {size:,} bytes long; names are limited to a few hundred bytes"
        return _printable(name, MAX_LISTED_PATH_CHARS), ("name_too_long", reason)
    return name, None


def _safe_parts(name: str, max_name_bytes: int) -> tuple[tuple[str, ...], tuple[str, str] | None]:
    """Split a member name into path parts, or say (kind, reason) why the name is unusable."""
    normalised = name.replace("\\", "/")
    if "\x00" in normalised:
        return (), ("unsafe_path", "unsafe path: contains a NUL byte")
    path = PurePosixPath(normalised)
    if path.is_absolute() or (path.parts and ":" in path.parts[0]):
        return (), ("unsafe_path", "unsafe path: absolute paths are not extracted")
    parts = tuple(p for p in path.parts if p not in ("", "."))
    if ".." in parts:
        return (), ("unsafe_path", "unsafe path: contains '..' (path traversal)")
    if not parts:
        return (), ("unsafe_path", "empty member name")
    for part in parts:
        # Class folders and files become directory entries on disk (ENAMETOOLONG at 255).
        if (size := len(part.encode("utf-8"))) > max_name_bytes:
            return (), (
                "name_too_long",
                f"a folder or file name is {size:,} bytes, above the limit of "
                f"{max_name_bytes:,} (P2L_MAX_NAME_BYTES)",
            )
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


def _printable(text: str, limit: int) -> str:
    """``text`` safe for JSON and PostgreSQL (no lone surrogate, no NUL), at most ``limit`` long."""
    try:  # a name tarfile could not decode holds its bytes as surrogate escapes
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # any other lone surrogate
        raw = text.encode("utf-8", "surrogatepass")
    clean = raw.decode("utf-8", "replace")
    clean = clean.replace("\x00", "\ufffd")
    return clean if len(clean) <= limit else clean[: limit - 1] + "…"
