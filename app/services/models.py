"""Fine-tuned model use cases: read, delete, predict with, and register as a source."""

import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sqlalchemy.orm import Session

from app.errors import Conflict, InvalidInput
from app.families import get_spec, load_model
from app.finetune.train import ImageTensors
from app.imaging.images import ImageRejected, open_rgb, square_pixels
from app.models import FinetunedModel, Source
from app.pagination import get_by_id, paginate
from app.services.context import Context
from app.services.sources import register_source, signature_for_dataset
from app.store import ArtifactStore

MODEL_WEIGHTS = "weights.safetensors"


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
            pixels.append(square_pixels(open_rgb(data, max_pixels), row.input_size))
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
        name=name or f"finetuned-{model_id[:8]}",
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
