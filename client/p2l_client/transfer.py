"""Bodies in and out: folders zipped once for all attempts of an upload, files opened once
and rewound for each, and downloads written beside their target until whole."""

import io
import os
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import IO, Any, cast

import httpx

from p2l_client.operations import ArchiveInput, Call, FileInput, StrPath
from p2l_client.progress import TransferView, UploadProgress

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
# Archives up to this size are built in memory; larger ones spill to a temporary file.
SPOOL_BYTES = 64 * 1024 * 1024

# A multipart file part as httpx takes it: (field, (filename, bytes or a binary file)).
FilePart = tuple[str, tuple[str, Any]]


def zip_folder(folder: StrPath) -> IO[bytes]:
    """A zip of ``folder``'s files as ``<class>/<file>``, hidden files and folders skipped.

    Built in memory up to 64 MiB, in a temporary file beyond; positioned at its start.
    """
    root = Path(folder)
    archive = tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES)  # noqa: SIM115 (returned open)
    count = 0
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as out:
        for directory, subdirs, files in os.walk(root):
            # Pruned in place so os.walk does not descend into them (.git, __MACOSX...).
            subdirs[:] = sorted(d for d in subdirs if not _hidden(d))
            for file in sorted(files):
                path = Path(directory, file)
                if _hidden(file) or not path.is_file():
                    continue
                out.write(path, path.relative_to(root).as_posix())
                count += 1
    if count == 0:
        archive.close()
        raise ValueError(f"{root} holds no files to upload (hidden files are skipped)")
    archive.seek(0)
    return cast(IO[bytes], archive)


def _hidden(name: str) -> bool:
    return name.startswith(".") or name == "__MACOSX"


def is_archive(path: StrPath) -> bool:
    """True when the path's name ends like an archive the service accepts."""
    return str(path).lower().endswith(ARCHIVE_SUFFIXES)


@contextmanager
def _archive_part(data: ArchiveInput) -> Iterator[tuple[str, Any]]:
    """(filename, content) of a labelled upload: a folder is zipped, an archive sent as is.

    What is opened here (a zip, a file) is closed on exit; a caller's tuple is left open.
    """
    if isinstance(data, tuple):
        yield data
        return
    path = Path(data)
    if path.is_dir():
        content: IO[bytes] = zip_folder(path)
        filename = f"{path.resolve().name or 'dataset'}.zip"
    elif path.is_file():
        content, filename = path.open("rb"), path.name
    else:
        raise FileNotFoundError(f"no such file or folder: {path}")
    with content:
        yield filename, content


@contextmanager
def _file_part(item: FileInput) -> Iterator[tuple[str, Any]]:
    """(filename, content) of one file: a path is opened (and closed on exit)."""
    if isinstance(item, tuple):
        yield item
        return
    path = Path(item)
    with path.open("rb") as content:
        yield path.name, content


@contextmanager
def opened_uploads(call: Call[Any]) -> Iterator[list[FilePart]]:
    """The call's file parts, opened (a folder zipped) once for all its attempts: httpx
    rewinds each file before sending it again. With ``call.progress``, read through an
    upload bar."""
    with ExitStack() as stack:
        parts: list[FilePart] = []
        for upload in call.uploads:
            opener = _archive_part if upload.archive else _file_part
            parts.append((upload.field, stack.enter_context(opener(upload.source))))
        if call.progress and parts:
            counter = UploadProgress(stack.enter_context(TransferView(call.console)))
            parts = [
                (field, (name, counter.count(_as_file(body)))) for field, (name, body) in parts
            ]
            counter.start(parts[0][1][0])
        yield parts


def _as_file(body: bytes | IO[bytes]) -> IO[bytes]:
    return io.BytesIO(body) if isinstance(body, bytes) else body


class BodyFile:
    """Where a download's body goes: ``<name>.part`` beside the target, renamed to the
    final name once whole, so a cut stream, a full disk or Ctrl-C leaves no file behind.

    ``destination`` is a file, or a folder (the file takes the service's name for it).
    """

    def __init__(self, destination: StrPath, response: httpx.Response, path: str) -> None:
        self.target = Path(destination)
        if self.target.is_dir():
            self.target = self.target / _attachment_name(response, path)
        self.partial = self.target.with_name(self.target.name + ".part")
        self.response = response

    @contextmanager
    def writing(self, progress: bool, console: Any) -> Iterator[Callable[[bytes], None]]:
        """A function that writes the next piece of the body (and moves the bar)."""
        received = self.response
        try:
            with self.partial.open("wb") as out, TransferView(console, show=progress) as view:
                view.start(self.target.name, _content_length(received))

                def write(chunk: bytes) -> None:
                    out.write(chunk)
                    view.update(received.num_bytes_downloaded)

                yield write
                view.finish(received.num_bytes_downloaded)
            self.partial.replace(self.target)  # never a half-written file under the final name
        except BaseException:
            self.partial.unlink(missing_ok=True)  # a cut stream or a full disk leaves nothing
            raise


def _content_length(response: httpx.Response) -> int | None:
    """The body's size in bytes as sent (what ``num_bytes_downloaded`` counts), if stated."""
    try:
        return int(response.headers["content-length"])
    except (KeyError, ValueError):
        return None


def _attachment_name(response: httpx.Response, path: str) -> str:
    disposition = response.headers.get("content-disposition", "")
    for part in disposition.split(";"):
        key, _, value = part.strip().partition("=")
        if key.lower() == "filename" and value:
            return Path(value.strip('"')).name  # never a path the server chose
    return Path(path).name or "download"
