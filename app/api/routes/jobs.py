"""Fine-tuning jobs: start (202), poll, stream progress (SSE), cancel."""

from typing import Annotated

import anyio
from fastapi import APIRouter, HTTPException, Query, Response, status
from fastapi.responses import StreamingResponse
from sqlalchemy.orm import Session

from app.api import streams
from app.api.deps import (
    PAGE_PROBLEMS,
    ContextDep,
    JobId,
    PageSize,
    PageToken,
    PrincipalDep,
    ServiceState,
    SessionDep,
    StateDep,
)
from app.api.idempotency import IdempotencyHeader, digest_json, idempotent
from app.api.problems import problem_responses
from app.errors import NotFound, QuotaExceeded
from app.jobs import service as jobs
from app.jobs.estimates import alive_workers, no_worker_warning
from app.models import TERMINAL_STATUSES, Job, JobStatus
from app.pagination import is_valid_id
from app.schemas import Estimate, FinetuneRequest, JobOut, Page
from app.services import evaluations, finetunes
from app.services.evaluations import EVALUATE
from app.services.quotas import project_quotas

router = APIRouter(tags=["jobs"])


def no_worker_warning_for(state: ServiceState, session: Session) -> str | None:
    """The warning that nothing would run a queued job, saying why, or None: this service
    runs no worker (or its runner is down) and no worker anywhere has a fresh heartbeat."""
    if state.runner is not None and state.runner.alive:
        return None
    if alive_workers(session):
        return None
    return no_worker_warning(state.settings.runner if state.runner is not None else None)


def job_outs(state: ServiceState, session: Session, rows: list[Job]) -> list[JobOut]:
    """The jobs' bodies, queued ones with the warning that no worker is alive while that
    holds (looked up once for them all)."""
    queued = any(job.status == JobStatus.QUEUED for job in rows)
    warning = no_worker_warning_for(state, session) if queued else None
    outs = [JobOut.model_validate(job) for job in rows]
    for out in outs:
        if out.status == "queued" and warning is not None:
            out.warnings = [*out.warnings, warning]
    return outs


def job_out(state: ServiceState, session: Session, job: Job) -> JobOut:
    """The job's body, with the warning that no worker is alive while that holds (queued)."""
    return job_outs(state, session, [job])[0]


DryRun = Annotated[
    bool,
    Query(
        description="true: answer 200 with the estimate only, after the same checks (same "
        "422s); nothing is stored (no job, no ranking, no Idempotency-Key record)."
    ),
]


@router.post(
    "/v1/finetunes",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=None,
    summary="Start fine-tuning a source on a target (a background job), or estimate it",
    responses={
        202: {
            "model": JobOut,
            "description": "Queued: the job, with its `estimate` and any `warnings` (e.g. that "
            "no worker is alive to run it). Follow `Location`.",
        },
        200: {
            "model": Estimate,
            "description": "`dry_run=true`: what the job would cost; nothing was stored.",
        },
        **problem_responses(
            _507="Too little free disk for the model the job would write, beyond "
            "P2L_STORE_RESERVE_BYTES; nothing is queued"
        ),
    },
)
def start_finetune(
    state: StateDep,
    ctx: ContextDep,
    request: FinetuneRequest,
    response: Response,
    idempotency_key: IdempotencyHeader,
    dry_run: DryRun = False,
) -> JobOut | Estimate:
    """Queue the job and answer at once with its estimated run time; follow ``Location``
    (or the events stream). With ``dry_run=true``, the estimate alone.

    Every problem the request can have is found here (422), not later in the worker.
    """
    # What both a dry run and a real submission check and plan from.
    session = ctx.session
    plan = (
        ctx,
        request.target_dataset_id,
        request.source_id,
        request.options(),
        request.race,
        request.model_name,
    )
    if dry_run:
        _, estimate = finetunes.plan_finetune(*plan)
        session.rollback()  # the ranking made for "best" stays unstored
        if warning := no_worker_warning_for(state, session):
            estimate.warnings.append(warning)
        response.status_code = status.HTTP_200_OK
        return estimate
    digest = digest_json(request.model_dump_json(exclude_unset=True))
    with idempotent(state.sessions, session, "finetunes", idempotency_key, digest) as claim:
        if claim.replay_id is not None:
            job = jobs.get_job(session, claim.replay_id)
            response.headers["Idempotent-Replayed"] = "true"
        else:
            job = finetunes.submit_finetune(*plan)
            claim.complete(job.id)  # committed with the job and its ranking
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    return job_out(state, session, job)


@router.get(
    "/v1/jobs",
    response_model=Page[JobOut],
    summary="List jobs, newest first",
    responses=PAGE_PROBLEMS,
)
def list_jobs(
    state: StateDep,
    session: SessionDep,
    page_size: PageSize = 50,
    page_token: PageToken = None,
) -> Page[JobOut]:
    """One page of jobs."""
    rows, next_token = jobs.list_jobs(session, page_size, page_token)
    return Page[JobOut](items=job_outs(state, session, rows), next_page_token=next_token)


@router.get("/v1/jobs/{job_id}", response_model=JobOut, summary="Job status and progress")
def get_job(state: StateDep, session: SessionDep, job_id: JobId) -> JobOut:
    """Status, progress (phase, epochs done of planned, metrics so far, ETA), the estimate,
    warnings (a queued job: whether any worker is alive to run it), and the result when
    done."""
    return job_out(state, session, jobs.get_job(session, job_id))


@router.post(
    "/v1/jobs/{job_id}/cancel",
    response_model=JobOut,
    summary="Cancel a job",
)
def cancel_job(state: StateDep, session: SessionDep, job_id: JobId) -> JobOut:
    """A queued job is cancelled at once; a running one stops before its next training step."""
    return job_out(state, session, jobs.cancel_job(session, job_id))


@router.delete(
    "/v1/jobs/{job_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Delete a finished job's record",
    responses=problem_responses(_409="The job is queued or running: cancel it first"),
)
def delete_job(state: StateDep, session: SessionDep, job_id: JobId) -> Response:
    """The model the job produced, if any, is kept (delete it at /v1/models/{id}); an
    evaluation job's stored images go with it."""
    job = jobs.delete_job(session, job_id)
    if job.kind == EVALUATE.name:  # the images were this job's alone (gone once it succeeded)
        state.store.delete(evaluations.evaluation_key(job.id))
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get(
    "/v1/jobs/{job_id}/events",
    response_class=StreamingResponse,
    responses={
        200: {"content": {"text/event-stream": {}}},
        **problem_responses(
            _429="This key holds its quota of open streams (max_event_streams_per_key)",
            _503="P2L_MAX_EVENT_STREAMS streams are open; retry later",
        ),
    },
    summary="Stream a job's progress as server-sent events (for clients, not Swagger)",
)
async def job_events(
    state: StateDep, session: SessionDep, principal: PrincipalDep, job_id: JobId
) -> StreamingResponse:
    """**For clients**: Swagger UI's *Try it out* waits for the whole stream and shows
    nothing until the job ends. Watch it live with `curl -N $P2L_URL/v1/jobs/{id}/events` or
    `p2l jobs watch {id}`; poll `GET /v1/jobs/{id}` otherwise.

    An event per meaningful change, never the whole job every tick:

    - `job`: once at connect, the whole job.
    - `status`: `{status, attempts, worker_id}` when one of them changes.
    - `phase`: `{phase, label, epochs, epochs_done, epochs_planned}` (auto_search and race
      add `candidate_index`: the trial's number, `candidates`: trials planned; auto_search
      also `candidate`, the schedule; halving tries the better candidates again, for
      longer). Phases: queued, loading, race, auto_search, fine_tune, baseline, evaluating,
      saving, done, failed, cancelled.
    - `epoch`: at every epoch end, `{phase, epoch, epochs, metrics, epochs_done,
      epochs_planned, elapsed_seconds, eta_seconds}`.
    - `step`: within an epoch, at most one per 0.5 s: `{phase, epoch, step,
      steps_per_epoch, epochs_done, epochs_planned, eta_seconds}`.
    - `end`: once the job has ended, the whole final job; then the stream closes.
    - `timeout`: `{status, idle_seconds}` after P2L_EVENT_STREAM_IDLE_SECONDS without a
      change; then the stream closes.
    """
    if not is_valid_id(job_id):  # before the cache keeps anything for it
        raise NotFound(f"no job with id {job_id[:100]!r}")
    # The job must be the project's (404 otherwise) before the cache reads it for anyone.
    await anyio.to_thread.run_sync(jobs.get_job, session, job_id)
    per_key = None
    if principal.authenticated:  # an open service counts nobody's streams
        quotas = await anyio.to_thread.run_sync(
            project_quotas, session, principal.key_project_id, state.settings
        )
        per_key = quotas["max_event_streams_per_key"]
    first = await state.job_snapshots.get(job_id)  # 404 before the stream starts
    owner = principal.key_label
    slot = state.streams.try_acquire(owner, per_key)
    if slot is None and per_key is not None and (held := state.streams.held_by(owner)) >= per_key:
        raise QuotaExceeded(
            f"this key holds {held} open event streams, its quota max_event_streams_per_key "
            f"is {per_key}; close one, or poll /v1/jobs/{job_id}",
            quota="max_event_streams_per_key",
            usage=held,
            limit=per_key,
            retry_after=5,
        )
    if slot is None:
        raise HTTPException(
            503,
            f"{state.streams.limit} event streams are open, the limit; poll "
            f"/v1/jobs/{job_id} or retry later",
            headers={"Retry-After": "5"},
        )
    events = streams.job_events(
        first,
        state.job_snapshots,
        slot,
        TERMINAL_STATUSES,
        state.settings.event_stream_idle_seconds,
    )
    return streams.SlotStreamingResponse(
        events, slot, media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
    )
