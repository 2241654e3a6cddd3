"""Fine-tuning jobs: start (202), poll, stream progress (SSE), cancel."""

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query, Response, status
from fastapi.responses import StreamingResponse

from app.api import streams
from app.api.deps import PAGE_PROBLEMS, ApiKeyRequired, PageToken, SessionDep, StateDep
from app.api.idempotency import IdempotencyHeader, digest_json, idempotent
from app.api.problems import problem_responses
from app.errors import NotFound
from app.jobs import finetunes
from app.jobs import service as jobs
from app.models import Job
from app.pagination import is_valid_id
from app.schemas import FinetuneRequest, JobOut, Page

router = APIRouter(tags=["jobs"])


@router.post(
    "/v1/finetunes",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobOut,
    dependencies=[ApiKeyRequired],
    summary="Start fine-tuning a source on a target (a background job)",
)
def start_finetune(
    state: StateDep,
    session: SessionDep,
    request: FinetuneRequest,
    response: Response,
    idempotency_key: IdempotencyHeader,
) -> Job:
    """Queue the job and answer at once; follow ``Location`` (or the events stream).

    Every problem the request can have is found here (422), not later in the worker.
    """
    digest = digest_json(request.model_dump_json(exclude_unset=True))
    with idempotent(state.sessions, session, "finetunes", idempotency_key, digest) as claim:
        if claim.replay_id is not None:
            job = jobs.get_job(session, claim.replay_id)
            response.headers["Idempotent-Replayed"] = "true"
        else:
            job = finetunes.submit_finetune(
                session,
                state.store,
                state.index,
                state.reference,
                state.scoring_params(),
                state.settings.p2l_measure,
                request.target_dataset_id,
                request.source_id,
                request.options(),
            )
            claim.complete(job.id)  # committed with the job and its ranking
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    return job


@router.get(
    "/v1/jobs",
    response_model=Page[JobOut],
    summary="List jobs, newest first",
    responses=PAGE_PROBLEMS,
)
def list_jobs(
    session: SessionDep,
    page_size: Annotated[int, Query(ge=1, le=200)] = 50,
    page_token: PageToken = None,
) -> Page[JobOut]:
    """One page of jobs."""
    rows, next_token = jobs.list_jobs(session, page_size, page_token)
    return Page[JobOut](items=[JobOut.model_validate(r) for r in rows], next_page_token=next_token)


@router.get("/v1/jobs/{job_id}", response_model=JobOut, summary="Job status and progress")
def get_job(session: SessionDep, job_id: str) -> Job:
    """Status, progress (phase, epoch, step, metrics so far, ETA), and the result when done."""
    return jobs.get_job(session, job_id)


@router.post(
    "/v1/jobs/{job_id}/cancel",
    response_model=JobOut,
    dependencies=[ApiKeyRequired],
    summary="Cancel a job",
)
def cancel_job(session: SessionDep, job_id: str) -> Job:
    """A queued job is cancelled at once; a running one stops before its next training step."""
    return jobs.cancel_job(session, job_id)


@router.delete(
    "/v1/jobs/{job_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    dependencies=[ApiKeyRequired],
    summary="Delete a finished job's record",
    responses=problem_responses(_409="The job is queued or running: cancel it first"),
)
def delete_job(session: SessionDep, job_id: str) -> Response:
    """The model the job produced, if any, is kept (delete it at /v1/models/{id})."""
    jobs.delete_job(session, job_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get(
    "/v1/jobs/{job_id}/events",
    response_class=StreamingResponse,
    responses={
        200: {"content": {"text/event-stream": {}}},
        **problem_responses(_503="P2L_MAX_EVENT_STREAMS streams are open; retry later"),
    },
    # Each open stream holds a slot for minutes: with keys set, only key holders may.
    dependencies=[ApiKeyRequired],
    summary="Stream a job's progress as server-sent events",
)
async def job_events(state: StateDep, job_id: str) -> StreamingResponse:
    """``event: progress`` whenever the job changes; then ``event: end`` once it is finished,
    or ``event: timeout`` after P2L_EVENT_STREAM_IDLE_SECONDS without a change."""
    if not is_valid_id(job_id):  # before the cache keeps anything for it
        raise NotFound(f"no job with id {job_id[:100]!r}")
    first = await state.job_snapshots.get(job_id)  # 404 before the stream starts
    slot = state.streams.try_acquire()
    if slot is None:
        raise HTTPException(
            503,
            f"{state.streams.limit} event streams are open, the limit; poll "
            f"/v1/jobs/{job_id} or retry later",
            headers={"Retry-After": "5"},
        )
    events = streams.job_events(
        first, state.job_snapshots, slot, jobs.TERMINAL, state.settings.event_stream_idle_seconds
    )
    return streams.SlotStreamingResponse(
        events, slot, media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
    )
