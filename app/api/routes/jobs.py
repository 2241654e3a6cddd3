"""Fine-tuning jobs: start (202), poll, stream progress (SSE), cancel."""

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Query, Response, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse

from app.api.deps import SessionDep, StateDep, WriteAccess
from app.jobs import finetunes
from app.jobs import service as jobs
from app.models import Job
from app.schemas import FinetuneRequest, JobOut, Page

router = APIRouter(tags=["jobs"])


@router.post(
    "/v1/finetunes",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobOut,
    dependencies=[WriteAccess],
    summary="Start fine-tuning a source on a target (a background job)",
)
def start_finetune(
    state: StateDep, session: SessionDep, request: FinetuneRequest, response: Response
) -> Job:
    """Queue the job and answer at once; follow ``Location`` (or the events stream)."""
    job = finetunes.submit_finetune(
        session,
        state.store,
        state.index,
        state.reference,
        state.scoring_params(),
        state.settings.p2l_measure,
        request.model_dump(),
    )
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    return job


@router.get("/v1/jobs", response_model=Page[JobOut], summary="List jobs, newest first")
def list_jobs(
    session: SessionDep,
    page_size: Annotated[int, Query(ge=1, le=200)] = 50,
    page_token: str | None = None,
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
    dependencies=[WriteAccess],
    summary="Cancel a job",
)
def cancel_job(session: SessionDep, job_id: str) -> Job:
    """A queued job is cancelled at once; a running one stops before its next training step."""
    return jobs.cancel_job(session, job_id)


@router.get(
    "/v1/jobs/{job_id}/events",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}}},
    summary="Stream a job's progress as server-sent events",
)
async def job_events(state: StateDep, job_id: str) -> StreamingResponse:
    """``event: progress`` whenever the job changes; ``event: end`` once it is finished."""

    def snapshot() -> dict:
        with state.sessions() as session:
            return JobOut.model_validate(jobs.get_job(session, job_id)).model_dump(mode="json")

    first = await run_in_threadpool(snapshot)  # 404 before the stream starts

    async def stream() -> AsyncIterator[str]:
        current, last = first, None
        while True:
            if current != last:
                yield f"event: progress\ndata: {json.dumps(current)}\n\n"
                last = current
            if current["status"] in jobs.TERMINAL:
                yield f"event: end\ndata: {json.dumps({'status': current['status']})}\n\n"
                return
            await asyncio.sleep(0.5)
            current = await run_in_threadpool(snapshot)

    return StreamingResponse(
        stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
    )
