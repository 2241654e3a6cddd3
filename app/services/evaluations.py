"""Evaluating a fine-tuned model on a labelled archive (``POST /v1/models/{id}/evaluate``).

A small archive is scored in the request; a larger one is stored under
``evaluations/<job id>`` and scored by a worker as a job of kind ``evaluate``, whose result
is the EvaluationReport. The stored images are deleted once the job has succeeded; a job
that failed or was cancelled leaves them until its record is deleted (``DELETE
/v1/jobs/{id}`` deletes them with it) or ``sweep_evaluation_archives`` (at service start
and periodically) removes them.
"""

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.orm import Session

from app.config import Settings
from app.errors import InvalidInput
from app.families import get_spec, load_model
from app.finetune.evaluation import evaluation_report
from app.finetune.train import Cancelled, ImageTensors, evaluate
from app.imaging.archive import ArchiveError, ImageFolder, extract_image_folder
from app.imaging.loading import pixel_batches
from app.jobs.kinds import JobKind, JobRun
from app.jobs.progress import ProgressWriter
from app.jobs.service import finish_job, submit_job
from app.models import TERMINAL_STATUSES, FinetunedModel, Job, JobStatus
from app.services.context import Context
from app.services.datasets import IMAGES_DIR, archive_limits, image_files
from app.services.models import ModelCache, get_model, model_weights_path
from app.services.quotas import check_active_jobs
from app.store import ArtifactStore
from app.unit_of_work import unit_of_work

logger = logging.getLogger("p2l.evaluations")

EVALUATIONS_PREFIX = "evaluations"
# Images decoded and scored at a time: bounds memory whatever the archive's size.
BATCH_IMAGES = 256


def evaluation_key(job_id: str) -> str:
    """Where an evaluation job's images are stored."""
    return f"{EVALUATIONS_PREFIX}/{job_id}"


def extract_labelled_archive(
    archive: IO[bytes], dest: Path, settings: Settings, class_names: list[str]
) -> ImageFolder:
    """The archive's images under ``dest/<class>/``, checked as dataset uploads are.

    InvalidInput when the archive is unusable, holds no usable image, or has class folders
    the model does not know (the detail names them).
    """
    try:
        folder = extract_image_folder(archive, dest, archive_limits(settings))
    except ArchiveError as exc:
        raise InvalidInput(str(exc)) from None
    rejected = folder.rejected.summary()
    unknown = sorted(set(folder.files_by_class) - set(class_names))
    if unknown:
        shown = ", ".join(repr(name) for name in unknown[:20])
        more = f" and {len(unknown) - 20} more" if len(unknown) > 20 else ""
        raise InvalidInput(
            f"class folders not among the model's classes: {shown}{more}; the model's "
            f"classes are {', '.join(class_names[:50])}",
            unknown_classes=unknown[:100],
            **rejected,
        )
    if not folder.files_by_class:
        raise InvalidInput(
            "the archive holds no usable image laid out as <class>/<image> (optionally "
            "inside one top folder), with class folders named like the model's classes",
            **rejected,
        )
    return folder


def evaluate_files(
    network: torch.nn.Module,
    architecture: str,
    input_size: int,
    class_names: list[str],
    files_by_class: dict[str, list[Path]],
    split: str,
    device: torch.device | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> dict[str, Any]:
    """The EvaluationReport of ``network`` on image files; images named ``class/file``.

    Decoded and scored a batch at a time, the way training and the fine-tune's own
    evaluation see images (``app.imaging.loading``). ``should_stop`` is checked before
    every batch and raises Cancelled.
    """
    device = device or torch.device("cpu")
    index = {name: i for i, name in enumerate(class_names)}
    classes = sorted(files_by_class)
    paths = [path for name in classes for path in files_by_class[name]]
    labels = np.array([index[name] for name in classes for _ in files_by_class[name]])
    names = [f"{path.parent.name}/{path.name}" for path in paths]
    spec = get_spec(architecture)
    predictions, probabilities = [], []
    first = 0
    for pixels in pixel_batches(paths, input_size, BATCH_IMAGES):
        if should_stop is not None and should_stop():
            raise Cancelled(f"stopped after {first} of {len(paths)} images")
        batch = ImageTensors(pixels, labels[first : first + len(pixels)], spec.mean, spec.std)
        scored = evaluate(network, batch, device, probabilities=True)
        assert scored.probabilities is not None  # asked for
        predictions.append(scored.predictions)
        probabilities.append(scored.probabilities)
        first += len(pixels)
    return evaluation_report(
        np.concatenate(predictions) if predictions else np.zeros(0, dtype=np.int64),
        labels,
        np.concatenate(probabilities) if probabilities else np.zeros((0, len(class_names))),
        class_names,
        names,
        split,
    )


class EvaluationJobParams(BaseModel):
    """What an evaluation job scores: the model, and the stored archive's images."""

    model_id: str
    images: int
    class_counts: dict[str, int]
    rejected: list[dict[str, Any]] = []
    rejected_counts: dict[str, int] = {}
    rejected_total: int = 0
    artifact_key: str = ""  # set once the job's id (which names the key) is known


def evaluate_upload(
    ctx: Context, cache: ModelCache, model: FinetunedModel, archive: IO[bytes]
) -> dict[str, Any] | Job:
    """Check an uploaded archive; score it now (the report), or queue a job (the Job).

    Up to ``settings.evaluate_sync_max_images`` images are scored in the request; a larger
    archive is stored and queued, the two committed together. A refused archive leaves
    nothing behind.
    """
    session, store, settings = ctx.session, ctx.store, ctx.settings
    with unit_of_work(session, store) as work:
        staging = work.stage()
        folder = extract_labelled_archive(
            archive, staging / IMAGES_DIR, settings, model.class_names
        )
        rejected = folder.rejected.summary()
        count = sum(len(files) for files in folder.files_by_class.values())
        if count <= settings.evaluate_sync_max_images:
            network = cache.get(store, model)
            report = evaluate_files(
                network, model.architecture, model.input_size, model.class_names,
                folder.files_by_class, "archive",
            )  # fmt: skip
            return {**report, **rejected}
        params = EvaluationJobParams(
            model_id=model.id, images=count, class_counts=folder.class_counts, **rejected
        )
        check_active_jobs(session, settings, ctx.principal.project_id)
        job = submit_job(session, EVALUATE.name, params.model_dump(mode="json"))
        key = evaluation_key(job.id)
        params.artifact_key = key
        job.params = params.model_dump(mode="json")
        work.publish(staging, key)
    return job


def run_evaluation(run: JobRun[EvaluationJobParams]) -> None:
    """The job's handler: score the job's model on its stored archive and record the report
    as the job's result."""
    started = time.monotonic()
    sessions, store, device, job, lease = run.sessions, run.store, run.device, run.job, run.lease
    key = run.params.artifact_key
    with sessions() as session:
        model = get_model(session, run.params.model_id)  # NotFound: deleted since; job fails
        weights = model_weights_path(store, model)
    root = store.path(key) / IMAGES_DIR
    if not root.is_dir():
        raise FileNotFoundError(f"the images of this evaluation ({key}) are gone")
    files = image_files(root)
    count = sum(len(paths) for paths in files.values())
    progress = ProgressWriter(sessions, lease, db_retry_seconds=run.settings.db_retry_seconds)
    try:
        progress.set_phase("evaluating", f"evaluating {count} images")
        network = load_model(model.architecture, len(model.class_names), weights).to(device)
        report = evaluate_files(
            network, model.architecture, model.input_size, model.class_names, files, "archive",
            device=device, should_stop=progress.should_stop,
        )  # fmt: skip
    finally:
        progress.close()
    seconds = time.monotonic() - started
    final = {
        "phase": "done",
        "label": f"done: {count} images evaluated in {seconds:.0f} s",
        "epochs_done": 0,
        "eta_seconds": 0,
        "elapsed_seconds": round(seconds, 1),
    }
    with sessions() as session:
        finished = finish_job(
            session, job.id, lease.worker_id, JobStatus.SUCCEEDED,
            result=report, error=None, progress=final,
        )  # fmt: skip
        session.commit()
    if not finished:
        logger.warning("job %s: lease lost before the commit; report discarded", job.id)
        return
    store.delete(key)  # the report names the images; they are not needed any more


def sweep_evaluation_archives(
    session: Session, store: ArtifactStore, older_than_seconds: float
) -> int:
    """Delete stored evaluation archives whose job is gone or has ended; returns how many.

    Recent ones are spared: their job may be about to be committed by another process.
    """
    cutoff = time.time() - older_than_seconds
    keys = store.keys_under(EVALUATIONS_PREFIX)
    if not keys:
        return 0
    active = {
        evaluation_key(job_id)
        for job_id in session.scalars(
            select(Job.id).where(Job.kind == EVALUATE.name, Job.status.not_in(TERMINAL_STATUSES))
        )
    }
    removed = 0
    for key in keys - active:
        try:
            published = store.published_at(key)
        except FileNotFoundError:
            continue
        if published <= cutoff:
            store.delete(key)
            removed += 1
    return removed


EVALUATE = JobKind("evaluate", EvaluationJobParams, run_evaluation)
