"""Fine-tune use cases: plan and submit a fine-tune job, and the job's handler (the worker
runs it): an optional race over P2L's shortlist, the fine-tune, the model published."""

import functools
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any, Literal

import torch
from pydantic import BaseModel, ValidationError, field_validator
from safetensors.torch import save_file
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from app.db import retry_transient
from app.errors import Conflict, InvalidInput, StorageFull
from app.families import (
    build_model,
    expected_state,
    get_spec,
    layer_groups,
    load_model,
    weights_to_save,
)
from app.finetune.options import FinetuneOptions, check_class_sizes
from app.finetune.pipeline import finetune, race_trial
from app.finetune.race import RaceOptions, race_cost, race_trial_epochs, run_race
from app.finetune.train import Accelerator
from app.jobs.cost import Estimate
from app.jobs.estimates import device_type, estimate_finetune, phase_plan, split_totals
from app.jobs.kinds import JobKind, JobRun
from app.jobs.progress import Meter, ProgressWriter
from app.jobs.service import finish_job, submit_job
from app.models import Dataset, Evidence, FinetunedModel, Job, JobStatus, Source
from app.pagination import get_by_id
from app.services.access import ALL_PROJECTS
from app.services.calibration import evidence_of, ranking_params, refit_if_due
from app.services.context import Context
from app.services.datasets import DatasetArrays, dataset_arrays, dataset_exists, get_dataset
from app.services.handles import check_new_name, find_id, is_name_clash, numbered_name
from app.services.models import MODEL_WEIGHTS
from app.services.quotas import check_active_jobs, check_job_seconds, check_storage
from app.services.rankings import rank_sources
from app.services.sources import get_source, weights_path
from app.store import ArtifactStore
from app.unit_of_work import unit_of_work

logger = logging.getLogger("p2l.worker")

# Tries at publishing a model whose made-up name concurrent jobs keep taking.
PUBLISH_NAME_ATTEMPTS = 5


class Contestant(BaseModel):
    """A source in a race, in P2L's order."""

    source_id: str
    source_name: str
    p2l_rank: int


class RacePlan(RaceOptions):
    """A race as the request planned it: its options, its contestants and every trial's
    epochs (known before it starts, for the progress bar and the estimate)."""

    budget_epochs: int
    contestants: list[Contestant]
    trial_epochs: list[int]


class FinetuneJobParams(BaseModel):
    """What a fine-tune job runs: stored as the job's params, validated back by the worker.

    Defaults cover jobs stored before a field existed.
    """

    target_dataset_id: str
    source_id: str  # the source's id, or "race" until the race picks one
    source_name: str = ""
    chosen_by: Literal["given", "p2l", "race"] = "given"
    ranking_id: str | None = None
    layer_groups: list[str] = []  # a race's: its first contestant's (the result has the winner's)
    options: FinetuneOptions
    race: RacePlan | None = None
    estimate: dict[str, Any] | None = None  # the Estimate told at submission, as JSON
    warnings: list[str] = []
    model_name: str | None = None  # asked for; None: named after target and source

    @field_validator("options", mode="before")
    @classmethod
    def _stored_options(cls, value: object) -> object:
        # Stored options are read as jobs stored them (see FinetuneOptions.from_record).
        return FinetuneOptions.from_record(value) if isinstance(value, dict) else value

    def source_ids(self) -> list[str]:
        """The sources the job needs: its source, or every contestant of its race."""
        if self.race is not None:
            return [c.source_id for c in self.race.contestants]
        return [self.source_id]

    def phases(self) -> list[tuple[str, int]]:
        """The training phases the job runs, in order, with the epochs each plans at most."""
        return phase_plan(self.options, self.race.trial_epochs if self.race else ())

    def stored(self) -> dict[str, Any]:
        """The params as the job row keeps them (JSON; no ``race`` key unless it races)."""
        return self.model_dump(mode="json", exclude={"race"} if self.race is None else None)


def planned_phases(stored: Mapping[str, Any]) -> list[tuple[str, int]]:
    """The phases a fine-tune job's stored params plan, reading only their options and race
    (what a job snapshot is sure to hold; see ``FinetuneJobParams.phases``); ValueError
    (a ValidationError among them) for params this service did not write."""
    options, race = stored.get("options") or {}, stored.get("race")
    if not isinstance(options, Mapping):
        raise ValueError(f"stored options are a {type(options).__name__}, not a mapping")
    plan = RacePlan.model_validate(race) if race else None
    return phase_plan(FinetuneOptions.from_record(options), plan.trial_epochs if plan else ())


def submit_finetune(
    ctx: Context,
    target_dataset_id: str,
    source_id: str,
    options: FinetuneOptions,
    race: RaceOptions | None = None,
    model_name: str | None = None,
) -> Job:
    """Check the request, resolve ``source_id`` "best" or "race" by P2L, estimate, and queue
    the job.

    The ranking made for "best" or "race" and the job are committed together: a refused
    request leaves neither behind.
    """
    params, estimate = plan_finetune(ctx, target_dataset_id, source_id, options, race, model_name)
    check_active_jobs(ctx.session, ctx.settings, ctx.principal.project_id)
    params.estimate = estimate.model_dump(mode="json")
    params.warnings = list(estimate.warnings)
    return submit_job(ctx.session, FINETUNE.name, params.stored())


def plan_finetune(
    ctx: Context,
    target_dataset_id: str,
    source_id: str,
    options: FinetuneOptions,
    race: RaceOptions | None = None,
    model_name: str | None = None,
) -> tuple[FinetuneJobParams, Estimate]:
    """Every check of a fine-tune request, its job's params and its estimate; queues nothing.

    The dataset and a given source are named by id or name (``app.services.handles``), and
    so is the model to be (a name the project holds already: Conflict). For ``source_id``
    "best" or "race" the ranking is added to the session (flushed, not committed): a dry
    run rolls the session back, and nothing stays.
    """
    session = ctx.session
    if model_name is not None:
        check_new_name(session, FinetunedModel, model_name, "model")
    # Locked until the job is committed: a delete waits, then sees the job (409).
    dataset_id = find_id(session, Dataset, target_dataset_id, "dataset")
    dataset = get_by_id(session, Dataset, dataset_id, "dataset", for_update=True)
    try:
        check_class_sizes(dataset.class_counts, options)
    except ValueError as exc:
        raise InvalidInput(str(exc)) from None
    chosen_by: Literal["given", "p2l", "race"] = "given"
    ranking_id = None
    uncovered = False  # "best" on a target the zoo does not cover: a baseline by default
    if source_id in ("best", "race"):
        race = (race or RaceOptions()) if source_id == "race" else None
        scoring, measure, calibration_id = ranking_params(ctx)
        ranking, _ = rank_sources(
            ctx, scoring, target_dataset_id=dataset.id, method="p2l", measure=measure,
            top_k=race.top if race is not None else 1, calibration_id=calibration_id,
        )  # fmt: skip
        if not ranking.results:
            raise InvalidInput(f"the zoo holds no rankable source to pick from ({source_id!r})")
        chosen_by, ranking_id = ("race" if race is not None else "p2l"), ranking.id
        uncovered = source_id == "best" and (ranking.coverage or {}).get("covered") is False
        # Locked in id order: concurrent races over overlapping shortlists cannot deadlock.
        locked = {
            ranked: get_by_id(session, Source, ranked, "source", for_update=True)
            for ranked in sorted(r["source_id"] for r in ranking.results)
        }
        sources = [locked[r["source_id"]] for r in ranking.results]
    else:
        given = find_id(session, Source, source_id, "source")
        sources = [get_by_id(session, Source, given, "source", for_update=True)]
    if options.baseline is None:
        options = options.model_copy(update={"baseline": uncovered})
    layouts = [_check_layout(source, options) for source in sources]  # every contestant fits
    groups = layouts[0]
    race_plan = None
    if race is not None:
        budget = race.budget_epochs or options.epochs
        race_plan = RacePlan(
            **{**race.model_dump(), "budget_epochs": budget},
            contestants=[
                Contestant(source_id=s.id, source_name=s.name, p2l_rank=rank)
                for rank, s in enumerate(sources, start=1)
            ],
            trial_epochs=race_trial_epochs(len(sources), budget),
        )
    first = sources[0]
    need = max(artifact_bytes(s.architecture, len(dataset.class_counts)) for s in sources)
    check_free_space(ctx.store, ctx.settings.store_reserve_bytes, need)
    project_id = ctx.principal.project_id
    check_storage(session, ctx.store, ctx.settings, project_id, need)
    estimate = estimate_finetune(
        session, first.architecture, first.input_size, dataset.class_counts, options,
        race_plan.trial_epochs if race_plan else (),
    )  # fmt: skip
    check_job_seconds(session, ctx.settings, project_id, estimate.seconds)
    params = FinetuneJobParams(
        target_dataset_id=dataset.id,
        source_id="race" if race_plan else first.id,
        source_name=f"race of {', '.join(s.name for s in sources)}" if race_plan else first.name,
        chosen_by=chosen_by,
        ranking_id=ranking_id,
        layer_groups=groups,
        options=options,
        race=race_plan,
        model_name=model_name,
    )
    return params, estimate


def artifact_bytes(architecture: str, num_classes: int) -> int:
    """What a fine-tune of ``architecture`` for ``num_classes`` classes writes, at most: its
    model's weights twice (the staged file, and room for the writes around it), plus 16 MiB
    for the report, the calibration evidence and the database."""
    state = expected_state(architecture, num_classes)  # meta tensors, cached: sizes only
    weights = int(sum(t.numel() * t.element_size() for t in state.values()))
    return 2 * weights + 16 * 1024**2


def check_free_space(store: ArtifactStore, reserve: int, need: int) -> None:
    """StorageFull (507) unless ``need`` bytes can be written and ``reserve`` stay free."""
    free = store.free_bytes()
    if free - need < reserve:
        mib = 1024**2
        raise StorageFull(
            f"the server's storage is too full for this fine-tune: its model needs about "
            f"{need / mib:,.0f} MiB and P2L_STORE_RESERVE_BYTES ({reserve / mib:,.0f} MiB) must "
            f"stay free, but {free / mib:,.0f} MiB are free. Free space or delete datasets, "
            "models or sources, then retry"
        )


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


def ensure_no_active_job_uses(
    session: Session, *, dataset_id: str | None = None, source_id: str | None = None
) -> None:
    """Conflict naming the queued or running jobs that need this dataset or source.

    The row is locked first, so a fine-tune submitted meanwhile waits for the delete.
    """
    every_project = False
    if dataset_id is not None:
        get_by_id(session, Dataset, dataset_id, "dataset", for_update=True)
    if source_id is not None:
        # A shared source is used by every project's jobs: the caller must have checked
        # that it may delete one (operators, who see every project) before this lists them.
        every_project = get_by_id(session, Source, source_id, "source", for_update=True).shared
    active = session.scalars(
        select(Job)
        .where(Job.kind == FINETUNE.name, Job.status.in_((JobStatus.QUEUED, JobStatus.RUNNING)))
        .execution_options(**{ALL_PROJECTS: every_project})
    )
    users = []
    for job in active:
        try:
            params = FINETUNE.params_of(job)
        except ValidationError:  # a row this service did not write: it may need anything
            users.append(job.id)
            continue
        if (dataset_id is not None and params.target_dataset_id == dataset_id) or (
            source_id is not None and source_id in params.source_ids()
        ):
            users.append(job.id)
    if users:
        noun = f"dataset {dataset_id}" if dataset_id is not None else f"source {source_id}"
        raise Conflict(
            f"{noun} is used by {len(users)} queued or running job(s): {', '.join(users[:20])}; "
            "cancel them or wait for them to finish",
            jobs=users,
        )


def run_finetune(run: JobRun[FinetuneJobParams]) -> None:
    """The job's handler: fine-tune its source (a race's winner) on its target, and publish
    the model (all or nothing)."""
    params, sessions, store, settings = run.params, run.sessions, run.store, run.settings
    job, lease, device = run.job, run.lease, run.device
    options, race = params.options, params.race
    with sessions() as session:
        dataset = get_dataset(session, params.target_dataset_id)
        sources = [get_source(session, source_id) for source_id in params.source_ids()]
    source = sources[0]
    # The disk may have filled since the job was queued: fail now, not after training.
    need = max(artifact_bytes(s.architecture, len(dataset.class_counts)) for s in sources)
    check_free_space(store, settings.store_reserve_bytes, need)
    train_images, val_images, _ = split_totals(dataset.class_counts, options)
    meter = Meter(
        lease.worker_id, source.architecture, source.input_size, device_type(device),
        train_images, val_images,
    )  # fmt: skip
    estimate = params.estimate or {}
    plan = params.phases()
    progress = ProgressWriter(
        sessions, lease, plan, meter, estimate.get("seconds"), settings.db_retry_seconds
    )
    accelerator = Accelerator(
        mixed_precision=settings.mixed_precision,
        channels_last=settings.channels_last,
        pin_memory=settings.pin_memory,
    )

    @functools.cache
    def arrays(size: int) -> DatasetArrays:
        return dataset_arrays(
            store, dataset, size, settings.pixel_cache_max_bytes,
            processes=None if settings.decode_processes else False,
            dataset_exists=lambda: _dataset_exists(sessions, dataset.id),
        )  # fmt: skip

    race_record = None
    try:
        if race:
            progress.set_phase("loading", f"loading {dataset.num_images} images for the race")
            race_record = _race_shortlist(run, race, arrays, progress, accelerator)
            with sessions() as session:
                source = get_source(session, race_record["winner"])
            arrays.cache_clear()  # only the winner's input size is needed from here on
            progress.meter = replace(
                meter, architecture=source.architecture, input_size=source.input_size
            )
        progress.set_phase(
            "loading", f"loading {dataset.num_images} images and the source {source.name}"
        )
        target = arrays(source.input_size)
        model = load_model(source.architecture, source.num_classes, weights_path(store, source))
        spec = get_spec(source.architecture)
        model, report = finetune(
            model,
            source.architecture,
            target.images,
            target.labels,
            target.class_names,
            spec.mean,
            spec.std,
            options,
            device=device,
            progress=progress.update,
            should_stop=progress.should_stop,
            image_names=target.image_names,
            accelerator=accelerator,
        )
        progress.set_phase("saving", "saving the model")
    finally:
        progress.close()
        arrays.cache_clear()

    model_id = os.urandom(16).hex()
    key = f"models/{model_id}"
    result = {"model_id": model_id, **report.__dict__}
    if race_record is not None:
        finetune_epochs = sum(e for phase, e in plan if phase in ("auto_search", "fine_tune"))
        race_record["cost"] = {
            **race_cost(race_record["epochs"], finetune_epochs, len(race_record["contestants"])),
            "race_seconds": race_record.pop("seconds"),
            "finetune_seconds": round(report.seconds, 3),
        }
        result["race"] = race_record
    try:  # what the fine-tune showed, for the ranking's calibration: never worth the model
        evidence = evidence_of(store, job, dataset, source, result)
    except Exception:
        evidence = None
        logger.exception("job %s: no calibration evidence recorded", job.id)

    def publish() -> None:
        with sessions() as session, unit_of_work(session, store) as work:
            staging = work.stage()
            save_file(weights_to_save(model), staging / MODEL_WEIGHTS)
            stored_bytes = work.publish(staging, key)
            # Numbered where the name was taken since the job was submitted (or, for the
            # default, by an earlier fine-tune of the same pair): a finished training is
            # never refused for its name.
            wanted = params.model_name or f"{dataset.name}-from-{source.name}"
            session.add(
                FinetunedModel(
                    id=model_id,
                    project_id=job.project_id,
                    name=numbered_name(session, FinetunedModel, wanted, job.project_id),
                    job_id=job.id,
                    source_id=source.id,
                    target_dataset_id=dataset.id,
                    architecture=source.architecture,
                    input_size=source.input_size,
                    class_names=target.class_names,
                    report=result,
                    artifact_key=key,
                    stored_bytes=stored_bytes,
                )
            )
            if evidence is not None:
                session.add(evidence)
            # The commit checks the lease: a job reaped meanwhile (and perhaps running on
            # another worker) gets nothing from this one.
            if not finish_job(
                session, job.id, lease.worker_id, JobStatus.SUCCEEDED,
                result=result, model_id=model_id, error=None,
            ):  # fmt: skip
                logger.warning("job %s: lease lost before the commit; model discarded", job.id)
                work.abandon()

    # A connection dropped at the end costs a retry, not the training (the unit of work
    # undid the files): the commit is all or nothing. So does a name another job took
    # between the numbering and the commit: numbered again.
    for attempt in range(1, PUBLISH_NAME_ATTEMPTS + 1):
        try:
            retry_transient(
                publish, settings.db_retry_seconds, f"job {job.id}: publishing its model"
            )
            break
        except IntegrityError as exc:
            if not is_name_clash(exc) or attempt == PUBLISH_NAME_ATTEMPTS:
                raise
            logger.info("job %s: its model's name was taken meanwhile; numbering again", job.id)
    if race_record is None:  # a race's loads and trial evaluations are not this speed's
        progress.record_job(len(target.labels))


def _dataset_exists(sessions: sessionmaker[Session], dataset_id: str) -> bool:
    with sessions() as session:
        return dataset_exists(session, dataset_id)


def _race_shortlist(
    run: JobRun[FinetuneJobParams],
    plan: RacePlan,
    arrays: Callable[[int], DatasetArrays],
    progress: ProgressWriter,
    accelerator: Accelerator,
) -> dict[str, Any]:
    """A race job's first part: short fine-tunes of P2L's shortlist, the better half kept
    each round (app.finetune.race); the race's record, with its seconds.

    ``arrays(size)``: the target's images at a source's input size (decoded once per size).
    """
    with run.sessions() as session:
        sources = {c.source_id: get_source(session, c.source_id) for c in plan.contestants}

    def trial(source_id: str, epochs: int, number: int, planned: int) -> dict[str, Any]:
        source = sources[source_id]
        target = arrays(source.input_size)
        model = load_model(source.architecture, source.num_classes, weights_path(run.store, source))
        spec = get_spec(source.architecture)
        if progress.meter is not None:  # the speed measured is this source's
            progress.meter = replace(
                progress.meter, architecture=source.architecture, input_size=source.input_size
            )
        phase = {
            "phase": "race",
            "label": f"race {number}/{planned}: {source.name}, {epochs} epochs",
            "candidate_index": number,
            "candidates": planned,
        }
        return race_trial(
            model, source.architecture, target.images, target.labels, len(target.class_names),
            spec.mean, spec.std, run.params.options, epochs, phase, run.device, progress.update,
            progress.should_stop, accelerator,
        )  # fmt: skip

    started = time.perf_counter()
    contestants = [c.model_dump() for c in plan.contestants]
    record = run_race(contestants, plan.budget_epochs, plan.score, trial)
    record["seconds"] = round(time.perf_counter() - started, 3)
    return record


def refit_after(run: JobRun[FinetuneJobParams]) -> None:
    """The automatic calibration refit after a fine-tune that left evidence, when due."""
    with run.sessions() as session:
        reference = session.scalar(
            select(Evidence.reference_sha256).where(Evidence.job_id == run.job.id)
        )
        if reference is not None:
            refit_if_due(session, run.store, run.settings, reference)


FINETUNE = JobKind("finetune", FinetuneJobParams, run_finetune, after=refit_after)
