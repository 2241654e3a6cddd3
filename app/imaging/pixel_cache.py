"""Decoded-pixel cache: each dataset's images decoded once per input size, kept in the store.

An entry is one folder under ``pixel-cache/`` holding ``pixels.npy`` (``(N, size, size, 3)``
uint8, images in ``dataset_files`` order: classes sorted, then files sorted) and
``entry.json`` (count, size, a digest of the image names). Everything a reader or the
evictor needs to choose is in the key, ``<dataset>-<size>px-<bytes>b-<stamp>-<token>``, so
listing the prefix is enough, whatever the store (an object store then downloads only the
entry it reads). Entries are staged and published whole, so readers never see half of
one; when two writers race for one (dataset, size), the newest stamp wins and the loser is
deleted by the winner. Each read rewrites a tiny ``used`` file in the entry, which moves the
entry's ``published_at`` (folder mtime, or the newest object): that is the recency the
evictor keeps the total under its bound by, least recently used first, across processes.
"""

import hashlib
import json
import logging
import re
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from app.imaging.loading import load_all_pixels, pixel_batches
from app.store import ArtifactStore

logger = logging.getLogger("p2l.pixel_cache")

PREFIX = "pixel-cache"
PIXELS_FILE = "pixels.npy"
META_FILE = "entry.json"
USED_FILE = "used"
_ENTRY_NAME = re.compile(
    r"(?P<dataset>[0-9a-f]+)-(?P<size>\d+)px-(?P<nbytes>\d+)b-(?P<stamp>\d+)-(?P<token>[0-9a-f]+)"
)


@dataclass(frozen=True)
class CacheEntry:
    """One published entry, as its key describes it."""

    key: str
    dataset_id: str
    size: int
    nbytes: int
    stamp: int


def payload_bytes(count: int, size: int) -> int:
    """Bytes of ``count`` decoded ``size`` px images (what an entry holds, headers aside)."""
    return count * size * size * 3


def names_digest(image_names: Iterable[str]) -> str:
    """SHA-256 of the image names in order: an entry is only good for exactly these files."""
    digest = hashlib.sha256()
    for name in image_names:
        digest.update(name.encode("utf-8", "surrogatepass") + b"\n")
    return digest.hexdigest()


def list_entries(store: ArtifactStore) -> list[CacheEntry]:
    """Every published entry (names that do not parse are not entries and are left alone)."""
    entries = []
    for key in store.keys_under(PREFIX):
        match = _ENTRY_NAME.fullmatch(key.rpartition("/")[2])
        if match is not None:
            entries.append(
                CacheEntry(
                    key,
                    match["dataset"],
                    int(match["size"]),
                    int(match["nbytes"]),
                    int(match["stamp"]),
                )
            )
    return entries


def entries_of(store: ArtifactStore, dataset_id: str, size: int) -> list[CacheEntry]:
    """The entries of one dataset at one size, newest first."""
    found = [e for e in list_entries(store) if e.dataset_id == dataset_id and e.size == size]
    return sorted(found, key=lambda e: e.stamp, reverse=True)


def read_entry(
    store: ArtifactStore, dataset_id: str, size: int, image_names: Sequence[str]
) -> np.ndarray | None:
    """The cached pixels of these images (read-only, memory-mapped), or None.

    An entry that does not match (other files, a wrong shape, a truncated or unreadable
    file) is ignored: the caller decodes and writes a fresh one, which replaces it.
    """
    digest = names_digest(image_names)
    for entry in entries_of(store, dataset_id, size):
        pixels = _open_checked(store, entry, len(image_names), digest)
        if pixels is not None:
            _mark_used(store, entry)
            return pixels
        logger.warning("pixel cache entry %s does not match its dataset; ignored", entry.key)
    return None


class EntryWriter:
    """Streams decoded batches straight to a staged ``pixels.npy`` (plain writes, no big
    buffer: a large dataset never sits in memory), then describes it; see ``publish_entry``.
    """

    def __init__(self, staging: Path, image_names: Sequence[str], size: int) -> None:
        self.staging = staging
        self.size = size
        self.count = len(image_names)
        self.digest = names_digest(image_names)
        self.written = 0
        self.failed = False  # a write failed: nothing to publish (see ``__call__``)
        self._file: BinaryIO = open(staging / PIXELS_FILE, "wb")  # noqa: SIM115 (closed in finish)
        header = {"descr": "|u1", "fortran_order": False, "shape": (self.count, size, size, 3)}
        np.lib.format.write_array_header_1_0(self._file, header)

    def __call__(self, batch: np.ndarray) -> None:
        """Append one ``(B, size, size, 3)`` uint8 batch (the next images in order)."""
        if batch.shape[1:] != (self.size, self.size, 3) or batch.dtype != np.uint8:
            raise ValueError(f"batch of shape {batch.shape} {batch.dtype} does not fit the entry")
        if self.written + len(batch) > self.count:
            raise ValueError("more images than the entry was opened for")
        if self.failed:
            return
        try:
            self._file.write(np.ascontiguousarray(batch).data)
        except OSError:  # a full disk, say: the cache gives way, what it serves does not fail
            logger.warning("pixel cache entry abandoned", exc_info=True)
            self.failed = True
            self.abort()
            return
        self.written += len(batch)

    def finish(self) -> int:
        """Close the file and write the metadata; the entry's bytes (ValueError if short).

        OSError if a write failed (``failed``), or if the metadata cannot be written.
        """
        self._file.close()
        if self.failed:
            raise OSError("a write to the pixel cache entry failed")
        if self.written != self.count:
            raise ValueError(f"entry got {self.written} images of {self.count}")
        meta = {"count": self.count, "size": self.size, "names_sha256": self.digest}
        (self.staging / META_FILE).write_text(json.dumps(meta))
        return sum(path.stat().st_size for path in self.staging.iterdir())

    def abort(self) -> None:
        """Close and remove the file: its disk space goes back at once."""
        self._file.close()
        (self.staging / PIXELS_FILE).unlink(missing_ok=True)


def entry_key(dataset_id: str, size: int, nbytes: int) -> str:
    """A fresh key for an entry of ``nbytes`` bytes (stamped now, so newer keys win)."""
    return f"{PREFIX}/{dataset_id}-{size}px-{nbytes}b-{time.time_ns()}-{uuid.uuid4().hex[:12]}"


def publish_entry(
    store: ArtifactStore, staging: Path, writer: EntryWriter, dataset_id: str
) -> tuple[str, np.ndarray]:
    """Finish ``writer`` and publish its staging folder as a new entry: its key and pixels.

    The pixels are mapped before the publish: the mapping stays valid however the entry
    moves afterwards, even if another process's eviction deletes it at once.
    """
    nbytes = writer.finish()
    pixels: np.ndarray = np.load(staging / PIXELS_FILE, mmap_mode="r", allow_pickle=False)
    key = entry_key(dataset_id, writer.size, nbytes)
    store.publish(staging, key)
    return key, pixels


def settle(store: ArtifactStore, published: CacheEntry | str, max_bytes: int) -> list[str]:
    """After a publish: drop the older entries of the same dataset and size (the last
    publish wins), then evict least recently used entries beyond ``max_bytes``.

    Returns the deleted keys. Another process may publish meanwhile: each writer settles
    after its own publish, so the bound holds again once the last one has settled.
    """
    key = published if isinstance(published, str) else published.key
    entries = list_entries(store)
    mine = next((e for e in entries if e.key == key), None)
    deleted: list[str] = []
    survivors: list[tuple[float, CacheEntry]] = []
    for entry in entries:
        if (
            mine is not None
            and entry is not mine
            and (entry.dataset_id, entry.size) == (mine.dataset_id, mine.size)
            and entry.stamp < mine.stamp
        ):
            store.delete(entry.key)
            deleted.append(entry.key)
            continue
        try:
            last_used = store.published_at(entry.key)
        except FileNotFoundError:  # deleted meanwhile by another process
            continue
        survivors.append((last_used, entry))
    # The entry just published first (its writer is about to read it), then by recency.
    survivors.sort(key=lambda item: (item[1].key == key, item[0]), reverse=True)
    total = 0
    for _, entry in survivors:
        if total + entry.nbytes <= max_bytes:
            total += entry.nbytes
        else:
            store.delete(entry.key)
            deleted.append(entry.key)
    return deleted


def delete_entries(store: ArtifactStore, dataset_id: str) -> int:
    """Delete every entry of a dataset (all sizes); returns how many."""
    doomed = [e for e in list_entries(store) if e.dataset_id == dataset_id]
    for entry in doomed:
        store.delete(entry.key)
    return len(doomed)


def total_bytes(store: ArtifactStore) -> int:
    """Bytes of all entries, as their keys state them."""
    return sum(e.nbytes for e in list_entries(store))


def _open_checked(
    store: ArtifactStore, entry: CacheEntry, count: int, digest: str
) -> np.ndarray | None:
    """The entry's pixels if it is whole and made from exactly these images, else None."""
    folder = store.path(entry.key)
    try:
        meta = json.loads((folder / META_FILE).read_text())
        if meta != {"count": count, "size": entry.size, "names_sha256": digest}:
            return None
        # Memory-mapped: a reader copies what it needs, nothing is read twice into RAM.
        pixels = np.load(folder / PIXELS_FILE, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, TypeError):  # missing, truncated, not an array, bad JSON
        return None
    if pixels.dtype != np.uint8 or pixels.shape != (count, entry.size, entry.size, 3):
        return None
    return pixels


def _mark_used(store: ArtifactStore, entry: CacheEntry) -> None:
    """Move the entry's recency to now (one small write; a failure costs only LRU order)."""
    try:
        if store.path(entry.key).is_dir():  # not deleted meanwhile: do not recreate it
            store.write_file(f"{entry.key}/{USED_FILE}", b"")
    except Exception:  # an object store's own errors too: never worth failing a job over
        logger.warning("could not mark pixel cache entry %s as used", entry.key, exc_info=True)


def load_pixels(
    store: ArtifactStore,
    dataset_id: str,
    paths: Sequence[Path],
    image_names: Sequence[str],
    size: int,
    max_bytes: int,
    processes: bool | None = None,
    dataset_exists: Callable[[], bool] = lambda: True,
) -> np.ndarray:
    """A dataset's images at ``size`` px: from its entry, else decoded once into a new one.

    The cache is a shortcut: whatever goes wrong with it, the images are decoded instead.
    ``max_bytes`` bounds the cache (0: off); ``dataset_exists`` is asked after a new entry
    is published (a dataset deleted meanwhile takes its entry with it).
    """
    if max_bytes <= 0 or payload_bytes(len(paths), size) > max_bytes:
        return load_all_pixels(paths, size, processes=processes)
    try:
        cached = read_entry(store, dataset_id, size, image_names)
    except Exception:  # e.g. the object store cannot list now
        logger.exception("dataset %s: pixel cache unreadable; decoding", dataset_id)
        return load_all_pixels(paths, size, processes=processes)
    if cached is not None:
        return cached
    try:
        key, pixels = decode_into_entry(store, dataset_id, paths, image_names, size, processes)
    except OSError:  # the disk or the store refused the entry: decode into memory instead
        logger.warning("dataset %s: pixels not cached; decoding again", dataset_id, exc_info=True)
        return load_all_pixels(paths, size, processes=processes)
    try:
        if dataset_exists():
            settle(store, key, max_bytes)
        else:
            store.delete(key)  # the mapped pixels stay readable until the caller drops them
    except Exception:  # the caller has its pixels; eviction is tried again next time
        logger.exception("dataset %s: could not tidy the pixel cache", dataset_id)
    return pixels


def decode_into_entry(
    store: ArtifactStore,
    dataset_id: str,
    paths: Sequence[Path],
    image_names: Sequence[str],
    size: int,
    processes: bool | None = None,
) -> tuple[str, np.ndarray]:
    """Decode the files straight into a new entry and publish it: its key and pixels
    (OSError where the disk or the store refuses it)."""
    staging = store.new_staging_dir()
    try:
        writer = EntryWriter(staging, image_names, size)
        try:
            # 256 a batch, as load_all_pixels decodes; each batch goes straight to disk.
            for batch in pixel_batches(paths, size, 256, processes=processes):
                writer(batch)
        except BaseException:
            writer.abort()
            raise
        return publish_entry(store, staging, writer, dataset_id)
    finally:
        store.discard(staging)  # gone already once published
