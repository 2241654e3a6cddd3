"""Dataset use cases: ingest an upload, read, list and delete, keeping DB and files in step."""

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import IO

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.config import Settings
from app.errors import InvalidInput
from app.imaging import pixel_cache
from app.imaging.archive import (
    ArchiveError,
    ArchiveLimits,
    ImageFolder,
    extract_image_folder,
    stream_size,
)
from app.models import NAME_CHARS, Dataset
from app.p2l.signature import DatasetSignature, compute_signature, load_signature
from app.pagination import get_by_id, paginate
from app.services.context import Context
from app.services.handles import check_new_name, commit_numbered, name_race_lost
from app.services.quotas import check_storage
from app.store import ArtifactStore
from app.unit_of_work import UnitOfWork, unit_of_work

logger = logging.getLogger("p2l.datasets")

SIGNATURE_FILE = "signature.safetensors"
IMAGES_DIR = "images"
MIN_CLASSES = 2


@dataclass
class IngestResult:
    """A freshly stored dataset, with what was rejected on the way."""

    dataset: Dataset
    folder: ImageFolder


def archive_limits(settings: Settings) -> ArchiveLimits:
    """The extraction caps in force."""
    return ArchiveLimits(
        max_members=settings.max_archive_members,
        max_uncompressed_bytes=settings.max_uncompressed_bytes,
        max_compression_ratio=settings.max_compression_ratio,
        max_image_bytes=settings.max_image_bytes,
        max_image_pixels=settings.max_image_pixels,
        max_name_bytes=settings.max_name_bytes,
        max_rejected_listed=settings.max_rejected_listed,
    )


def check_dataset_name(name: str, settings: Settings) -> None:
    """InvalidInput unless ``name`` fits P2L_MAX_NAME_BYTES (UTF-8) and the name column."""
    size = len(name.encode("utf-8", "surrogatepass"))
    if size > settings.max_name_bytes or len(name) > NAME_CHARS:
        raise InvalidInput(
            f"dataset name is {size:,} UTF-8 bytes and {len(name):,} characters; the limits "
            f"are {settings.max_name_bytes:,} bytes (P2L_MAX_NAME_BYTES) and "
            f"{NAME_CHARS} characters"
        )


def default_dataset_name(filename: str | None, settings: Settings) -> str:
    """A name from the uploaded file's name (``garments.zip`` -> ``garments``), cut to fit."""
    stem = PurePath(filename or "dataset").name.split(".")[0] or "dataset"
    data = stem[:NAME_CHARS].encode("utf-8", "surrogatepass")[: settings.max_name_bytes]
    # A cut inside a multi-byte character (or a stray surrogate) drops that character.
    return data.decode("utf-8", "ignore") or "dataset"


def ingest_dataset(
    ctx: Context, archive: IO[bytes], name: str, number_if_taken: bool = False
) -> IngestResult:
    """Validate an archive, compute its signature and store both; all or nothing.

    A name the project holds already is a Conflict, before anything is read; with
    ``number_if_taken`` (a name the service made up from the file's) it is numbered instead.
    """
    session, store, reference, settings = ctx.session, ctx.store, ctx.reference, ctx.settings
    check_dataset_name(name, settings)
    if not number_if_taken:  # a made-up name is numbered at the commit, below
        check_new_name(session, Dataset, name, "dataset")
    # Its images take about what the archive does (images are compressed already).
    check_storage(session, store, settings, ctx.principal.project_id, stream_size(archive))
    dataset_id = uuid.uuid4().hex
    cache_key: str | None = None
    with name_race_lost(name, "dataset"), unit_of_work(session, store) as work:
        staging = work.stage()
        folder = _extract(archive, staging, settings)
        # The order fine-tunes read them in (``dataset_files``), so the pixels decoded here
        # can be cached for them.
        files = {
            name: sorted(folder.files_by_class[name]) for name in sorted(folder.files_by_class)
        }
        cache = _cache_writer(work, files, reference.input_size, settings.pixel_cache_max_bytes)
        key = f"datasets/{dataset_id}"
        try:
            signature = compute_signature(
                reference,
                files,
                batch_size=settings.embed_batch_size,
                threads=settings.loader_threads,
                on_pixels=cache,
            )
            (staging / SIGNATURE_FILE).write_bytes(signature.to_bytes())
            stored_bytes = work.publish(staging, key)
            if cache is not None:
                # With the dataset or not at all: the unit of work deletes it if the upload
                # fails later.
                cache_key = _publish_cache(work, cache, dataset_id)
        except BaseException:
            if cache is not None:
                cache.abort()  # its file closed now, not when collected
            raise
        rejected = folder.rejected.summary()
        dataset = Dataset(
            id=dataset_id,
            name=name,
            num_images=signature.n,
            class_counts=folder.class_counts,
            # Only the listed rejections are kept (P2L_MAX_REJECTED_LISTED), each shortened;
            # the counts cover all of them, so a replay answers what the upload did.
            rejected=rejected["rejected"],
            rejected_counts=rejected["rejected_counts"],
            rejected_total=rejected["rejected_total"],
            feature_dim=signature.feature_dim,
            reference_sha256=signature.reference_sha256,
            artifact_key=key,
            stored_bytes=stored_bytes,
        )
        if number_if_taken:
            commit_numbered(session, dataset, name, ctx.principal.project_id)
        else:
            session.add(dataset)
    folder.root = store.path(key) / IMAGES_DIR
    if cache_key is not None:
        _settle_cache(store, cache_key, settings.pixel_cache_max_bytes)
    return IngestResult(dataset, folder)


def _cache_writer(
    work: UnitOfWork, files: dict[str, list[Path]], size: int, max_bytes: int
) -> pixel_cache.EntryWriter | None:
    """A pixel cache entry to fill while the signature decodes, or None (off, or too big)."""
    names = [f"{name}/{path.name}" for name, paths in files.items() for path in paths]
    if not 0 < pixel_cache.payload_bytes(len(names), size) <= max_bytes:
        return None
    return pixel_cache.EntryWriter(work.stage(), names, size)


def _publish_cache(work: UnitOfWork, cache: pixel_cache.EntryWriter, dataset_id: str) -> str | None:
    """Publish a filled cache entry with the dataset; its key, or None where the disk or
    the store refused it (the upload goes on without: the cache is only a shortcut)."""
    try:
        nbytes = cache.finish()
        key = pixel_cache.entry_key(dataset_id, cache.size, nbytes)
        work.publish(cache.staging, key)
    except OSError:
        logger.warning("dataset %s: its pixels were not cached", dataset_id, exc_info=True)
        cache.abort()
        return None
    return key


def _settle_cache(store: ArtifactStore, key: str, max_bytes: int) -> None:
    """Keep the pixel cache within its bound; a failure here must not fail the upload."""
    try:
        pixel_cache.settle(store, key, max_bytes)
    except Exception:
        logger.exception("could not evict from the pixel cache")


def _extract(archive: IO[bytes], staging: Path, settings: Settings) -> ImageFolder:
    try:
        folder = extract_image_folder(archive, staging / IMAGES_DIR, archive_limits(settings))
    except ArchiveError as exc:
        raise InvalidInput(str(exc)) from None
    rejected = folder.rejected.summary()  # problem extensions: rejected, counts, total
    usable = {c: n for c, n in folder.class_counts.items() if n >= settings.min_images_per_class}
    if len(usable) < MIN_CLASSES:
        found = _class_list(folder.class_counts) or "none"
        raise InvalidInput(
            f"archive needs at least {MIN_CLASSES} class folders with usable images, laid out "
            f"as <class>/<image> (optionally inside one top folder); found: {found}",
            **rejected,
        )
    if len(usable) < len(folder.class_counts):
        raise InvalidInput(
            f"every class needs at least {settings.min_images_per_class} usable images; "
            f"counts: {_class_list(folder.class_counts)}",
            **rejected,
        )
    return folder


def _class_list(counts: dict[str, int], shown: int = 20) -> str:
    """``cats (3), dogs (0)``, the first ``shown`` classes, so a detail stays short."""
    text = ", ".join(f"{c} ({n})" for c, n in list(counts.items())[:shown])
    return text + (f" and {len(counts) - shown:,} more" if len(counts) > shown else "")


def get_dataset(session: Session, dataset_id: str) -> Dataset:
    """The dataset with this id, or NotFound."""
    return get_by_id(session, Dataset, dataset_id, "dataset")


def list_datasets(
    session: Session, page_size: int, page_token: str | None
) -> tuple[list[Dataset], str | None]:
    """Newest first, one page at a time."""
    return paginate(session, Dataset, page_size, page_token)


def dataset_exists(session: Session, dataset_id: str) -> bool:
    """Whether the dataset's row is there now (asked of the database, not the session's cache)."""
    return session.scalar(select(Dataset.id).where(Dataset.id == dataset_id)) is not None


def dataset_signature(store: ArtifactStore, dataset: Dataset) -> DatasetSignature:
    """The stored signature of a dataset."""
    return stored_signature(store, dataset.artifact_key, dataset.reference_sha256)


def stored_signature(store: ArtifactStore, key: str, reference_sha256: str) -> DatasetSignature:
    """The signature under ``key``, made by ``reference_sha256``'s network.

    A machine's cached copy can predate a re-sign done elsewhere (``python -m app.zoo
    upgrade`` rewrites signatures in place): then it is fetched again, once.
    """
    signature = load_signature(store.path(key) / SIGNATURE_FILE)
    if signature.reference_sha256 != reference_sha256:
        store.forget_cached(key)
        signature = load_signature(store.path(key) / SIGNATURE_FILE)
    return signature


def image_files(root: Path) -> dict[str, list[Path]]:
    """The image files under ``root/<class>/``, by class (classes and files sorted)."""
    return {
        folder.name: sorted(folder.iterdir())
        for folder in sorted(root.iterdir())
        if folder.is_dir()
    }


def dataset_files(store: ArtifactStore, dataset: Dataset) -> dict[str, list[Path]]:
    """The stored image files of a dataset, by class (classes and files sorted)."""
    return image_files(store.path(dataset.artifact_key) / IMAGES_DIR)


@dataclass
class DatasetArrays:
    """A stored dataset in memory at one input size, in class then file order."""

    images: np.ndarray  # (N, size, size, 3) uint8
    labels: np.ndarray  # (N,) int64, indices into class_names
    class_names: list[str]
    image_names: list[str]  # class/file


def dataset_arrays(
    store: ArtifactStore,
    dataset: Dataset,
    size: int,
    cache_max_bytes: int,
    processes: bool | None = None,
    dataset_exists: Callable[[], bool] = lambda: True,
) -> DatasetArrays:
    """A dataset's images at ``size`` px (decoded once per size: ``pixel_cache``), labelled."""
    files = dataset_files(store, dataset)
    class_names = sorted(files)
    paths = [path for name in class_names for path in files[name]]
    image_names = [f"{path.parent.name}/{path.name}" for path in paths]
    labels = np.array([i for i, name in enumerate(class_names) for _ in files[name]], np.int64)
    images = pixel_cache.load_pixels(
        store, dataset.id, paths, image_names, size, cache_max_bytes,
        processes=processes, dataset_exists=dataset_exists,
    )  # fmt: skip
    return DatasetArrays(images, labels, class_names, image_names)


def delete_dataset(session: Session, store: ArtifactStore, dataset_id: str) -> None:
    """Remove the row, then the files (a crash in between leaves only unreachable files)."""
    dataset = get_dataset(session, dataset_id)
    key = dataset.artifact_key
    session.delete(dataset)
    session.commit()
    store.delete(key)
    pixel_cache.delete_entries(store, dataset_id)
