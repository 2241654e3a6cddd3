"""The worker's composition root: every job kind the service runs, bound to the job loop.

``python -m app.worker`` runs a standalone worker (same P2L_ settings as the service,
sharing its database and data dir). Adding a job kind: declare it beside its use case
(a ``JobKind`` in ``app.services``) and list it in ``JOB_KINDS`` here.
"""

from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.jobs import worker
from app.jobs.kinds import JobKinds
from app.jobs.runner import JobRunner, LocalProcessRunner
from app.services.evaluations import EVALUATE
from app.services.finetunes import FINETUNE

JOB_KINDS: JobKinds = {kind.name: kind for kind in (FINETUNE, EVALUATE)}


def run_worker(
    settings: Settings, parent_pid: int | None = None, id_suffix: str | None = None
) -> None:
    """Run queued jobs of every kind until stopped (see ``app.jobs.worker.run_worker``)."""
    worker.run_worker(JOB_KINDS, settings, parent_pid, id_suffix)


def run_next_job(settings: Settings, worker_id: str) -> str | None:
    """Claim and run the oldest queued job (a Ray task's body); its id, or None."""
    return worker.run_next_job(JOB_KINDS, settings, worker_id)


def make_runner(settings: Settings, sessions: sessionmaker[Session]) -> JobRunner:
    """The runner the settings ask for: a local worker process, or tasks on a Ray cluster."""
    if settings.runner == "ray":
        from app.jobs.ray_runner import RayRunner  # lazily: ray is an optional extra

        return RayRunner(settings, sessions, run_next_job)
    return LocalProcessRunner(settings, sessions, run_worker)


if __name__ == "__main__":
    run_worker(Settings())
