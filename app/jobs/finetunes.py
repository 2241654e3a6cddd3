"""Fine-tuning use cases: submit a job, and use the models jobs produce (predict, register)."""

import threading
from collections import OrderedDict
from typing import Any

import numpy as np
import torch
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.datasets.images import ImageRejected, open_rgb, square_pixels
from app.errors import Conflict, InvalidInput
from app.families import build_model, get_spec, layer_groups, load_model
from app.finetune.options import FinetuneOptions, check_class_sizes
from app.finetune.race import RaceOptions, race_trial_epochs
from app.finetune.train import ImageTensors
from app.jobs.estimates import estimate_finetune
from app.jobs.service import QUEUED, RUNNING, submit_job
from app.models import Dataset, FinetunedModel, Job, Source
from app.p2l.reference import ReferenceNetwork
from app.p2l.scoring import Measure, ScoringParams, SignatureIndex
from app.pagination import get_by_id, paginate
from app.schemas import Estimate
from app.store import ArtifactStore
from app.zoo.rankings import rank_sources
from app.zoo.sources import register_source, signature_for_dataset

MODEL_WEIGHTS = "weights.safetensors"


def submit_finetune(
    session: Session,
    store: ArtifactStore,
    index: SignatureIndex,
    reference: ReferenceNetwork,
    scoring: ScoringParams,
    measure: Measure,
    target_dataset_id: str,
    source_id: str,
    options: FinetuneOptions,
    race: RaceOptions | None = None,
    calibration_id: str | None = None,
) -> Job:
    """Check the request, resolve ``source_id`` "best" or "race" by P2L, estimate, and queue
    the job.

    The ranking made for "best" or "race" and the job are committed together: a refused
    request leaves neither behind.
    """
    params, estimate = plan_finetune(
        session, store, index, reference, scoring, measure, target_dataset_id, source_id,
        options, race, calibration_id,
    )  # fmt: skip
    params["estimate"] = estimate.model_dump(mode="json")
    params["warnings"] = list(estimate.warnings)
    return submit_job(session, "finetune", params)


def plan_finetune(
    session: Session,
    store: ArtifactStore,
    index: SignatureIndex,
    reference: ReferenceNetwork,
    scoring: ScoringParams,
    measure: Measure,
    target_dataset_id: str,
    source_id: str,
    options: FinetuneOptions,
    race: RaceOptions | None = None,
    calibration_id: str | None = None,
) -> tuple[dict[str, Any], Estimate]:
    """Every check of a fine-tune request, its job's params and its estimate; queues nothing.

    For ``source_id`` "best" or "race" the ranking is added to the session (flushed, not
    committed): a dry run rolls the session back, and nothing stays.
    """
    # Locked until the job is committed: a delete waits, then sees the job (409).
    dataset = get_by_id(session, Dataset, target_dataset_id, "dataset", for_update=True)
    try:
        check_class_sizes(dataset.class_counts, options)
    except ValueError as exc:
        raise InvalidInput(str(exc)) from None
    chosen_by, ranking_id = "given", None
    if source_id in ("best", "race"):
        race = (race or RaceOptions()) if source_id == "race" else None
        ranking, _ = rank_sources(
            session, store, index, reference, scoring, target_dataset_id=dataset.id,
            method="p2l", measure=measure, top_k=race.top if race is not None else 1,
            calibration_id=calibration_id,
        )  # fmt: skip
        if not ranking.results:
            raise InvalidInput(f"the zoo holds no rankable source to pick from ({source_id!r})")
        chosen_by, ranking_id = ("race" if race is not None else "p2l"), ranking.id
        # Locked in id order: concurrent races over overlapping shortlists cannot deadlock.
        locked = {
            ranked: get_by_id(session, Source, ranked, "source", for_update=True)
            for ranked in sorted(r["source_id"] for r in ranking.results)
        }
        sources = [locked[r["source_id"]] for r in ranking.results]
    else:
        sources = [get_by_id(session, Source, source_id, "source", for_update=True)]
    layouts = [_check_layout(source, options) for source in sources]  # every contestant fits
    groups = layouts[0]
    race_plan = None
    if race is not None:
        budget = race.budget_epochs or options.epochs
        race_plan = {
            **race.model_dump(),
            "budget_epochs": budget,
            "contestants": [
                {"source_id": s.id, "source_name": s.name, "p2l_rank": rank}
                for rank, s in enumerate(sources, start=1)
            ],
            "trial_epochs": race_trial_epochs(len(sources), budget),
        }
    first = sources[0]
    estimate = estimate_finetune(
        session, first.architecture, first.input_size, dataset.class_counts, options,
        race_plan["trial_epochs"] if race_plan else (),
    )  # fmt: skip
    params = {
        "target_dataset_id": dataset.id,
        "source_id": "race" if race_plan else first.id,
        "source_name": (
            f"race of {', '.join(s.name for s in sources)}" if race_plan else first.name
        ),
        "chosen_by": chosen_by,
        "ranking_id": ranking_id,
        "layer_groups": groups,  # a race's: its first contestant's (the result has the winner's)
        "options": options.model_dump(),
    }
    if race_plan:
        params["race"] = race_plan
    return params, estimate


def _check_layout(source: Source, options: FinetuneOptions) -> list[str]:
    """The source's layer group names; InvalidInput if the options do not fit them."""
    with torch.device("meta"):  # only the layout is needed: allocate nothing
        model = build_model(source.architecture, source.num_classes)
    groups = [g.name for g in layer_groups(model)]
    if options.freeze_below >= len(groups):
        raise InvalidInput(
            f"freeze_below={options.freeze_below}, but {source.architecture} ({source.name}) "
            f"has {len(groups)} layer groups {groups}; the head (last) cannot be frozen"
        )
    if options.multipliers is not None and len(options.multipliers) != len(groups):
        raise InvalidInput(
            f"{len(options.multipliers)} multipliers given; {source.architecture} "
            f"({source.name}) has {len(groups)} layer groups {groups}"
        )
    return groups


def job_source_ids(params: dict[str, Any]) -> list[str]:
    """The sources a fine-tune job needs: its source, or every contestant of its race."""
    race = params.get("race")
    if race:
        return [c["source_id"] for c in race["contestants"]]
    return [params["source_id"]] if params.get("source_id") else []


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


def ensure_no_active_job_uses(
    session: Session, *, dataset_id: str | None = None, source_id: str | None = None
) -> None:
    """Conflict naming the queued or running jobs that need this dataset or source.

    The row is locked first, so a fine-tune submitted meanwhile waits for the delete.
    """
    if dataset_id is not None:
        get_by_id(session, Dataset, dataset_id, "dataset", for_update=True)
    if source_id is not None:
        get_by_id(session, Source, source_id, "source", for_update=True)
    active = session.scalars(select(Job).where(Job.status.in_((QUEUED, RUNNING))))
    users = [
        job.id
        for job in active
        if (dataset_id is not None and job.params.get("target_dataset_id") == dataset_id)
        or (source_id is not None and source_id in job_source_ids(job.params))
    ]
    if users:
        noun = f"dataset {dataset_id}" if dataset_id is not None else f"source {source_id}"
        raise Conflict(
            f"{noun} is used by {len(users)} queued or running job(s): {', '.join(users[:20])}; "
            "cancel them or wait for them to finish",
            jobs=users,
        )


def model_weights_path(store: ArtifactStore, model: FinetunedModel):
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


def register_model(
    session: Session,
    store: ArtifactStore,
    index: SignatureIndex,
    reference: ReferenceNetwork,
    model_id: str,
    name: str | None,
    max_classes: int,
    max_name_bytes: int,
) -> Source:
    """Add a fine-tuned model to the zoo, with its target dataset's signature (once: Conflict)."""
    row = get_model(session, model_id)
    if row.registered_source_id and session.get(Source, row.registered_source_id):
        raise Conflict(
            f"model {model_id} is already the source {row.registered_source_id}",
            source_id=row.registered_source_id,
        )
    signature = signature_for_dataset(session, store, reference, row.target_dataset_id)
    source = register_source(
        session,
        store,
        index,
        reference,
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
        max_classes=max_classes,
        max_name_bytes=max_name_bytes,
    )
    row.registered_source_id = source.id
    session.commit()
    return source
