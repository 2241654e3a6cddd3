"""Fine-tuned model use cases: read, delete, predict with, export, and register as a source."""

import errno
import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import torch
from PIL import Image
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app.errors import Conflict, InvalidInput, NotFound, StorageFull
from app.families import get_spec, load_model
from app.finetune.export import ExportFormat, ModelCard, bundle_version, export_bundle
from app.finetune.train import ImageTensors
from app.imaging.images import ImageRejected, decode_square
from app.models import Dataset, FinetunedModel, Source
from app.pagination import get_by_id, paginate
from app.services.context import Context
from app.services.datasets import IMAGES_DIR
from app.services.handles import numbered_name
from app.services.quotas import check_storage
from app.services.sources import register_source, signature_for_dataset
from app.store import ArtifactStore, folder_bytes
from app.unit_of_work import unit_of_work

logger = logging.getLogger("p2l.models")

MODEL_WEIGHTS = "weights.safetensors"
# A model's exports are kept under its own key (deleted with it): <key>/exports/<format>-<version>/.
EXPORTS_DIR = "exports"


def get_model(session: Session, model_id: str) -> FinetunedModel:
    """The model with this id, or NotFound."""
    return get_by_id(session, FinetunedModel, model_id, "model")


def list_models(
    session: Session, page_size: int, page_token: str | None
) -> tuple[list[FinetunedModel], str | None]:
    """Newest first, one page at a time."""
    return paginate(session, FinetunedModel, page_size, page_token)


def delete_model(
    session: Session, store: ArtifactStore, cache: "ModelCache", model_id: str
) -> None:
    """Remove a model's row, then its files (a source registered from it keeps its own copy)."""
    row = get_model(session, model_id)
    key = row.artifact_key
    session.delete(row)
    session.commit()
    cache.forget(model_id)
    store.delete(key)


def model_weights_path(store: ArtifactStore, model: FinetunedModel) -> Path:
    """Where a fine-tuned model's safetensors weights are."""
    return store.path(model.artifact_key) / MODEL_WEIGHTS


@dataclass(frozen=True)
class ExportedZip:
    """An export zip to send: stored (``discard`` None), or built for this request alone
    (then ``discard`` is its staging folder, to throw away once sent)."""

    path: Path
    filename: str
    discard: Path | None = None


def export_key(model: FinetunedModel, format: ExportFormat) -> str:
    """Where the model's export in ``format`` is stored, by this release's bundle version."""
    return f"{model.artifact_key}/{EXPORTS_DIR}/{format}-{bundle_version()}"


def export_model(
    ctx: Context, cache: "ModelCache", model_id: str, format: ExportFormat
) -> ExportedZip:
    """The model's export zip: model file, preprocessing.json, labels.txt, predict.py and
    the model card (``app.finetune.export.bundle_files``).

    The first export of a model in a format builds it (seconds: ``torch.export`` or
    tracing) and stores it next to the model's files, counted in the model's stored bytes;
    later ones are served from the store. A zip that would pass the project's storage
    quota is served without being kept (so is one a concurrent export stored first).
    """
    session, store = ctx.session, ctx.store
    row = get_model(session, model_id)
    filename = f"model-{row.id}-{format}.zip"
    key = export_key(row, format)
    # The model's folder first: an object store's machine then holds it whole (weights and
    # the exports stored so far) before anything below it is fetched or adopted, which
    # would otherwise make a partial copy of the folder look cached.
    store.path(row.artifact_key)
    stored = store.path(key) / filename
    if stored.is_file():
        return ExportedZip(stored, filename)
    card = model_card(session, row)
    network = cache.get(store, row)  # the cache's lock is not held past this
    staging = store.new_staging_dir()
    files, packed = staging / "files", staging / "zip"
    try:
        files.mkdir()
        packed.mkdir()
        started = time.perf_counter()
        export_bundle(network, format, card, files, packed / filename)
        logger.info(
            "model %s: %s export built in %.1f s", row.id, format, time.perf_counter() - started
        )
        kept = _keep_export(ctx, row, format, key, packed)
    except BaseException:
        store.discard(staging)
        raise
    if not kept:
        return ExportedZip(packed / filename, filename, discard=staging)
    store.discard(staging)
    return ExportedZip(store.path(key) / filename, filename)


def _keep_export(
    ctx: Context, row: FinetunedModel, format: ExportFormat, key: str, folder: Path
) -> bool:
    """Publish a built export at ``key``, in place of the format's exports of other
    releases, and count it in the model's stored bytes; False where it is not kept."""
    session, store = ctx.session, ctx.store
    model_id, model_key = row.id, row.artifact_key
    size = folder_bytes(folder)
    stale = {
        other
        for other in store.keys_under(f"{model_key}/{EXPORTS_DIR}")
        if other != key and PurePosixPath(other).name.startswith(f"{format}-")
    }
    change = size - sum(store.size_bytes(other) for other in stale)
    try:
        check_storage(session, store, ctx.settings, row.project_id, change)
    except StorageFull as exc:  # a cache is not worth a refusal: served, not kept
        logger.info("model %s: %s export served, not kept: %s", model_id, format, exc)
        return False
    try:
        with unit_of_work(session, store) as work:
            # Concurrent exports of one model queue on its row (PostgreSQL), and the later
            # ones find the zip stored: an object store's publish would not refuse an
            # existing key, and the bytes would be counted twice.
            session.execute(
                select(FinetunedModel.id).where(FinetunedModel.id == model_id).with_for_update()
            )
            if key in store.keys_under(f"{model_key}/{EXPORTS_DIR}"):
                raise FileExistsError(errno.EEXIST, "export stored meanwhile", key)
            work.publish(folder, key)
            # In SQL, so that concurrent exports of two formats both count. A row from
            # before revision 0010 (None) is measured on demand, its exports with it.
            session.execute(
                update(FinetunedModel)
                .where(FinetunedModel.id == model_id, FinetunedModel.stored_bytes.is_not(None))
                .values(stored_bytes=FinetunedModel.stored_bytes + change)
            )
    except OSError as exc:
        # The key exists: another export of this model stored it first (on a local store,
        # the atomic rename refuses a folder that exists). Anything else is a real failure.
        if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
            raise
        logger.info("model %s: %s export stored meanwhile by another request", model_id, format)
        return False
    for other in stale:
        store.delete(other)
    if session.scalar(select(FinetunedModel.id).where(FinetunedModel.id == model_id)) is None:
        store.delete(model_key)  # deleted meanwhile: its folder must not come back for this
        raise NotFound(f"model {model_id} was deleted while it was being exported")
    return True


def model_card(session: Session, model: FinetunedModel) -> ModelCard:
    """What the model card of the model's exports says, read from its rows."""
    source = session.get(Source, model.source_id)
    dataset = session.get(Dataset, model.target_dataset_id)
    return ModelCard(
        model_id=model.id,
        created_at=model.created_at,
        architecture=model.architecture,
        input_size=model.input_size,
        class_names=list(model.class_names),
        report=dict(model.report),
        source_id=model.source_id,
        source=None
        if source is None
        else {
            "name": source.name,
            "architecture": source.architecture,
            "num_images": source.num_images,
            "num_classes": source.num_classes,
            "origin": source.origin,
            "image_counts": source.image_counts,
        },
        target_dataset_id=model.target_dataset_id,
        target=None
        if dataset is None
        else {
            "name": dataset.name,
            "num_images": dataset.num_images,
            "class_counts": dict(dataset.class_counts),
        },
        # Sources and datasets carry no licence (no column, nothing in the bundled
        # manifest): the card says it is unspecified (NO_LICENCE).
        licence=None,
    )


class ModelCache:
    """The few most recently used fine-tuned models, loaded and in eval mode.

    Bounded by count and by the bytes of their weights (the one just used always stays):
    a few large models must not keep the API process hundreds of MB above idle.
    """

    def __init__(self, capacity: int = 4, max_bytes: int = 256 * 1024**2) -> None:
        self.capacity = capacity
        self.max_bytes = max_bytes
        self._models: OrderedDict[str, torch.nn.Module] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, store: ArtifactStore, row: FinetunedModel) -> torch.nn.Module:
        """The loaded network of ``row``."""
        with self._lock:
            if row.id in self._models:
                self._models.move_to_end(row.id)
                return self._models[row.id]
        network = load_model(row.architecture, len(row.class_names), model_weights_path(store, row))
        with self._lock:
            self._models[row.id] = network
            self._models.move_to_end(row.id)  # loaded twice at once: still the newest
            while len(self._models) > 1 and (
                len(self._models) > self.capacity or self._nbytes() > self.max_bytes
            ):
                self._models.popitem(last=False)
        return network

    def _nbytes(self) -> int:
        """Bytes of the cached models' parameters and buffers."""
        return sum(
            t.nbytes
            for network in self._models.values()
            for t in [*network.parameters(), *network.buffers()]
        )

    def forget(self, model_id: str) -> None:
        """Drop a deleted model."""
        with self._lock:
            self._models.pop(model_id, None)


def predict(
    network: torch.nn.Module,
    row: FinetunedModel,
    images: list[tuple[str, bytes]],
    max_pixels: int,
    top_k: int,
) -> list[dict[str, Any]]:
    """Top-k labels with probabilities for each (filename, bytes); InvalidInput on a bad file."""
    if not images:
        raise InvalidInput("upload at least one image in the field 'files'")
    pixels, problems = [], []
    for filename, data in images:
        try:
            pixels.append(decode_square(data, max_pixels, row.input_size))
        except ImageRejected as exc:
            problems.append({"path": filename, "reason": str(exc)})
    if problems:
        raise InvalidInput(
            f"{len(problems)} of {len(images)} files are not usable images", rejected=problems
        )
    spec = get_spec(row.architecture)
    tensors = ImageTensors(np.stack(pixels), np.zeros(len(pixels)), spec.mean, spec.std)
    batch, _ = tensors.batch(torch.arange(len(tensors)), torch.device("cpu"))
    with torch.inference_mode():
        probabilities = network(batch).softmax(1)
    k = min(top_k, len(row.class_names))
    values, indices = probabilities.topk(k, dim=1)
    return [
        {
            "filename": filename,
            "top": [
                {"label": row.class_names[i], "probability": float(p)}
                for p, i in zip(value_row.tolist(), index_row.tolist(), strict=True)
            ],
        }
        for (filename, _), value_row, index_row in zip(images, values, indices, strict=True)
    ]


def register_model(ctx: Context, model_id: str, name: str | None) -> Source:
    """Add a fine-tuned model to the zoo, with its target dataset's signature (once: Conflict)."""
    session, store, settings = ctx.session, ctx.store, ctx.settings
    row = get_model(session, model_id)
    if row.registered_source_id and session.get(Source, row.registered_source_id):
        raise Conflict(
            f"model {model_id} is already the source {row.registered_source_id}",
            source_id=row.registered_source_id,
        )
    signature = signature_for_dataset(session, store, ctx.reference, row.target_dataset_id)
    source = register_source(
        session,
        store,
        ctx.index,
        ctx.reference,
        name=name or numbered_name(session, Source, row.name, ctx.principal.project_id),
        architecture=row.architecture,
        num_classes=len(row.class_names),
        class_names=row.class_names,
        weights_data=model_weights_path(store, row).read_bytes(),
        signature=signature,
        input_size=row.input_size,
        dataset_id=row.target_dataset_id,
        origin="finetune",
        # Unique in the database: of concurrent requests one source wins, the rest Conflict.
        model_id=row.id,
        max_classes=settings.max_source_classes,
        max_name_bytes=settings.max_name_bytes,
    )
    row.registered_source_id = source.id
    session.commit()
    return source


@dataclass(frozen=True)
class Confusion:
    """A model's confusion matrix on its held-out split, and what to title it."""

    matrix: list[list[int]]
    class_names: list[str]
    title: str


def confusion(session: Session, model_id: str) -> Confusion:
    """The confusion matrix of the model's test (or validation) split; NotFound without one."""
    row = get_model(session, model_id)
    report = row.report
    evaluation = report.get("evaluation")
    if evaluation:
        matrix, names = evaluation["confusion_matrix"], evaluation["class_names"]
        split, accuracy = evaluation["split"], evaluation["accuracy"]
    else:  # a model made before evaluation reports: the report's own matrix
        matrix, names, split = (
            report.get("confusion_matrix"),
            row.class_names,
            report.get("evaluated_on", "validation"),  # first releases: validation,
        )
        accuracy = report.get("test_accuracy" if split == "test" else "val_accuracy")
    if not matrix or split == "none":
        raise NotFound(
            f"model {model_id} has no confusion matrix: it was trained without a test or "
            "validation split (test_fraction and val_fraction 0)"
        )
    images = sum(sum(r) for r in matrix)
    shown = f"{accuracy:.3f}" if accuracy is not None else "n/a"
    title = f"model {model_id[:8]}, {split} split ({images} images): accuracy {shown}"
    return Confusion(matrix, names, title)


def misclassified_image(ctx: Context, model_id: str, k: int) -> tuple[bytes, str]:
    """The bytes and MIME type of the k-th misclassified image of the model's evaluation
    report, read from its target dataset; NotFound when there is none (or it is gone)."""
    session = ctx.session
    row = get_model(session, model_id)
    evaluation = row.report.get("evaluation")
    if not evaluation:
        raise NotFound(
            f"model {model_id} has no evaluation report (it was made before they existed, or "
            "without a held-out split): no misclassified images are listed"
        )
    listed = evaluation["misclassified"]
    if k >= len(listed):
        raise NotFound(
            f"model {model_id} lists {len(listed)} misclassified images (k from 0 to "
            f"{len(listed) - 1}); k={k}"
            if listed
            else f"model {model_id} misclassified no image of its {evaluation['split']} split"
        )
    name = listed[k]["image"]
    dataset = session.get(Dataset, row.target_dataset_id)
    if dataset is None:
        raise NotFound(
            f"the model's target dataset {row.target_dataset_id} was deleted, and its images "
            f"with it ({name!r})"
        )
    path = _dataset_image(ctx.store.path(dataset.artifact_key) / IMAGES_DIR, name)
    try:
        if path is None:
            raise FileNotFoundError(name)
        return path.read_bytes(), _image_type(path)
    except FileNotFoundError:  # never stored, or deleted with its dataset just now
        raise NotFound(f"image {name!r} is no longer in dataset {dataset.id}") from None


def _dataset_image(root: Path, name: str) -> Path | None:
    """The stored file ``root/<class>/<file>`` that ``name`` names, if it is there."""
    relative = PurePosixPath(name)
    parts = relative.parts
    if relative.is_absolute() or len(parts) != 2 or any(p in ("", ".", "..") for p in parts):
        return None
    path = root.joinpath(*parts)
    return path if path.is_file() else None


def _image_type(path: Path) -> str:
    """The MIME type of an image file, from its content (names can say anything)."""
    try:
        with Image.open(path) as image:
            return Image.MIME.get(image.format or "", "application/octet-stream")
    except OSError:
        return "application/octet-stream"
