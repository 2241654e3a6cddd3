"""The Ray runner: queued jobs run as Ray tasks on a cluster, owned through the same leases.

Imported only when ``P2L_RUNNER=ray`` (``pip install -e '.[ray]'``). The job table stays
the queue and the judge of re-runs: each task claims a job itself, with the lease
functions the local worker uses, so Ray's own retries are off (``max_retries=0``).
Each task keeps a heartbeat row in ``workers`` (kind ``ray``) while it runs and reports the
training throughput it measures, like any worker (see app.jobs.estimates).
"""

import logging
import math
import uuid
from collections.abc import Callable
from typing import Any

import ray
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.jobs.runner import JobRunner
from app.jobs.service import release_jobs
from app.models import Job, JobStatus

logger = logging.getLogger("p2l")


def ray_worker_id(node_id: str, suffix: str) -> str:
    """The worker id of a Ray task: its node (where it ran) and the dispatcher's suffix."""
    return f"ray-{node_id[:12]}-{suffix}"


# A Ray task's body: claim the oldest queued job and run it; its id, or None (app.worker).
NextJob = Callable[[Settings, str], str | None]


def _run_on_ray(run_next_job: NextJob, settings: Settings, suffix: str) -> str | None:
    """The Ray task: claim the oldest queued job and run it, as the local worker would."""
    node_id = ray.get_runtime_context().get_node_id()
    return run_next_job(settings, ray_worker_id(node_id, suffix))


def _cluster_resources() -> dict[str, float]:
    """What the cluster holds, by resource name (ray ships no type hints for it)."""
    resources: dict[str, float] = ray.cluster_resources()  # type: ignore[no-untyped-call]
    return resources


class RayRunner(JobRunner):
    """Dispatches queued jobs to a Ray cluster, one task per job, from the supervisor's check.

    Why the task claims its job, rather than the dispatcher claiming it and passing it on:
    a job claimed here would be 'running' while its task waits for a node, with no one
    renewing its lease, and would be reaped (an attempt lost) whenever the wait outlasts
    a lease. Claimed by the task once it runs, a job is running only while a live process
    renews its lease, and the claim (an atomic UPDATE ... WHERE status='queued') lets one
    task have it, so a job never runs twice at once.
    """

    def __init__(
        self, settings: Settings, sessions: sessionmaker[Session], run_next_job: NextJob
    ) -> None:
        self.settings = settings
        self.sessions = sessions
        self.run_next_job = run_next_job
        self.remote: Any = None  # the remote function, once connected
        self.unit = "CPU"  # what each task asks one of: "GPU" where the cluster has some
        self.task_settings = settings
        self.pending: dict[Any, str] = {}  # unfinished task -> the suffix of its worker id

    @property
    def alive(self) -> bool:
        return ray.is_initialized()

    def start(self) -> None:
        ray.init(address=self.settings.ray_address, logging_level=logging.WARNING)
        options: dict[str, Any] = {
            # A task lost with its node is not retried by Ray: its lease expires, the
            # reaper re-queues (or fails) the job, and a new task claims it.
            "max_retries": 0,
            "resources": dict(self.settings.ray_resources),
        }
        self.unit = "GPU" if _cluster_resources().get("GPU", 0) >= 1 else "CPU"
        options["num_gpus" if self.unit == "GPU" else "num_cpus"] = 1
        self.remote = ray.remote(**options)(_run_on_ray)
        # What each task gets: the service's settings, less the API keys it has no use for.
        self.task_settings = self.settings.model_copy(update={"api_keys": []})
        logger.info("dispatching jobs to the Ray cluster at %s with %s",
                    self.settings.ray_address or "(local)", options)  # fmt: skip

    def capacity(self) -> int:
        """How many jobs the cluster can run at once (per task: 1 GPU or CPU, and resources)."""
        totals = _cluster_resources()
        asked = {self.unit: 1.0, **self.settings.ray_resources}
        return min(
            math.floor(totals.get(name, 0) / amount) for name, amount in asked.items() if amount > 0
        )

    def check(self) -> None:
        """Forget finished tasks, then submit one task per queued job the cluster can run."""
        if self.remote is None:
            return
        if self.pending:
            done, _ = ray.wait(list(self.pending), num_returns=len(self.pending), timeout=0)
            for ref in done:
                suffix = self.pending.pop(ref)
                try:
                    ray.get(ref)
                except Exception as exc:  # its node died, say: the reaper handles its job
                    logger.error("Ray task %s ended with %s: %s", suffix, type(exc).__name__, exc)
        # Never more unfinished tasks than the cluster can run at once: jobs wait in the
        # job table (cancellable, claimable by any worker), not in Ray's queue, and a
        # check every second adds no second task for a job a waiting task will take.
        free = self.capacity() - len(self.pending)
        if free <= 0:
            return
        with self.sessions() as session:
            queued = session.scalar(select(func.count()).where(Job.status == JobStatus.QUEUED)) or 0
        for _ in range(min(free, queued)):
            suffix = uuid.uuid4().hex[:16]
            task = self.remote.remote(self.run_next_job, self.task_settings, suffix)
            self.pending[task] = suffix

    def stop(self) -> None:
        if not ray.is_initialized():
            return
        for ref in self.pending:
            ray.cancel(ref, force=True)
        # A stop on purpose (a deploy) hands the jobs back without using up an attempt.
        if self.pending:
            with self.sessions() as session:
                release_jobs(
                    session,
                    "the service stopped while this job ran",
                    self.settings.job_max_attempts,
                    Job.worker_id.in_(self._worker_ids(session)),
                    handed_back=True,
                )
        self.pending.clear()
        ray.shutdown()

    def _worker_ids(self, session: Session) -> list[str]:
        """The worker ids this runner's unfinished tasks run under (on whichever node)."""
        suffixes = set(self.pending.values())
        ids = session.scalars(
            select(Job.worker_id).where(
                Job.status == JobStatus.RUNNING, Job.worker_id.like("ray-%")
            )
        )
        return [i for i in ids if i and i.rsplit("-", 1)[-1] in suffixes]
