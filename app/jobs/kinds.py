"""Job kinds: what a worker can run. Each kind pairs a typed params model with one handler.

A kind is declared beside the use case that submits it (``app.services.finetunes``,
``app.services.evaluations``) and listed once in the worker's composition root
(``app.worker.JOB_KINDS``). The queue stores a job's params as JSON; the worker validates
them back into the kind's model before the handler sees them, so the contract between
submit and run is a pydantic class that mypy follows, not a dict.
"""

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import torch
from pydantic import BaseModel
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.jobs.progress import HeldLease
from app.models import Job
from app.store import ArtifactStore

ParamsT = TypeVar("ParamsT", bound=BaseModel)


@dataclass(frozen=True)
class JobRun(Generic[ParamsT]):
    """One claimed job as its handler sees it: its row, its typed params, and what a worker
    holds (sessions: a job opens short sessions, never one for its whole run)."""

    job: Job
    params: ParamsT
    sessions: sessionmaker[Session]
    store: ArtifactStore
    settings: Settings
    device: torch.device
    lease: HeldLease


@dataclass(frozen=True)
class JobKind(Generic[ParamsT]):
    """A kind of job: its name (``Job.kind``), its params model and its handler.

    ``run`` ends the job itself (``finish_job``) when it succeeds; raising fails it (or
    cancels it, for ``Cancelled``). ``after`` runs once the job has ended and its lease is
    released; it is advice (a failure is logged, never the job's).
    """

    name: str
    params: type[ParamsT]
    run: Callable[[JobRun[ParamsT]], None]
    after: Callable[[JobRun[ParamsT]], None] | None = None

    def params_of(self, job: Job) -> ParamsT:
        """The job's stored params, validated into this kind's model."""
        return self.params.model_validate(job.params)


JobKinds = Mapping[str, JobKind[Any]]
