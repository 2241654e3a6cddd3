"""Job runners: where queued jobs execute. The local one is a supervised worker process."""

import logging
import multiprocessing
import os
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable

from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.jobs.service import make_worker_id, release_worker_jobs

logger = logging.getLogger("p2l")

# A worker process's body: (settings, the parent's pid, the worker id's suffix). The
# service's composition root (app.worker) binds the job kinds to it.
WorkerMain = Callable[[Settings, int | None, str | None], None]


class JobRunner(ABC):
    """The seam for other backends (a distributed queue): start, supervise, stop workers."""

    @abstractmethod
    def start(self) -> None:
        """Start executing queued jobs."""

    @abstractmethod
    def check(self) -> None:
        """Called periodically: notice dead workers, release their jobs, replace them."""

    @abstractmethod
    def stop(self) -> None:
        """Stop executing jobs (running ones are handed back: re-queued, attempt not counted)."""

    @property
    @abstractmethod
    def alive(self) -> bool:
        """Whether the runner's workers are up."""


class LocalProcessRunner(JobRunner):
    """One worker process beside the API (spawned, so it shares no state with it)."""

    def __init__(
        self, settings: Settings, sessions: sessionmaker[Session], worker_main: WorkerMain
    ) -> None:
        self.settings = settings
        self.sessions = sessions
        self.worker_main = worker_main
        self.process: multiprocessing.process.BaseProcess | None = None
        self.worker_id: str | None = None

    @property
    def pid(self) -> int | None:
        """The worker's process id (None before start)."""
        return self.process.pid if self.process else None

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.is_alive()

    def start(self) -> None:
        # The runner picks the id's suffix, so it can name the worker's jobs once it is gone.
        suffix = uuid.uuid4().hex[:8]
        context = multiprocessing.get_context("spawn")
        self.process = context.Process(
            target=self.worker_main,
            args=(self.settings, os.getpid(), suffix),
            name="p2l-worker",
            daemon=True,
        )
        self.process.start()
        assert self.process.pid is not None  # set by start()
        self.worker_id = make_worker_id(self.process.pid, suffix)
        logger.info("job worker %s started", self.worker_id)

    def check(self) -> None:
        if self.process is None or self.process.is_alive():
            return
        code = self.process.exitcode
        requeued, ended = self._release(f"the worker process died (exit code {code})")
        logger.error("job worker %s died (exit code %s); %d job(s) re-queued, %d ended; "
                     "restarting", self.worker_id, code, requeued, ended)  # fmt: skip
        self.start()

    def stop(self) -> None:
        if self.process is None:
            return
        if not self.process.is_alive():  # it died before the stop: that run counts
            self._release(f"the worker process died (exit code {self.process.exitcode})")
            self.process = None
            return
        self.process.terminate()  # the worker hands its job back on SIGTERM
        self.process.join(10)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(5)
        # In case it was killed before it could: hand back what it still holds. A stop on
        # purpose (a deploy) does not use up the job's attempts.
        self._release("the service stopped while this job ran", handed_back=True)
        self.process = None

    def _release(self, reason: str, handed_back: bool = False) -> tuple[int, int]:
        """Re-queue or fail the jobs of the worker that is gone (re-queue all if handed back)."""
        if self.worker_id is None:
            return 0, 0
        with self.sessions() as session:
            return release_worker_jobs(
                session, self.worker_id, reason, self.settings.job_max_attempts, handed_back
            )
