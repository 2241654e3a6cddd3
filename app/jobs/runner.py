"""Job runners: where queued jobs execute. The local one is a supervised worker process."""

import logging
import multiprocessing
import os
from abc import ABC, abstractmethod

from sqlalchemy.orm import Session, sessionmaker

from app.config import Settings
from app.jobs.service import fail_orphaned_jobs
from app.jobs.worker import run_worker

logger = logging.getLogger("p2l")


class JobRunner(ABC):
    """The seam for other backends (a distributed queue): start, supervise, stop workers."""

    @abstractmethod
    def start(self) -> None:
        """Start executing queued jobs."""

    @abstractmethod
    def check(self) -> None:
        """Called periodically: notice dead workers, fail their jobs, replace them."""

    @abstractmethod
    def stop(self) -> None:
        """Stop executing jobs (running ones are failed, never left 'running')."""


class LocalProcessRunner(JobRunner):
    """One worker process beside the API (spawned, so it shares no state with it)."""

    def __init__(self, settings: Settings, sessions: sessionmaker[Session]) -> None:
        self.settings = settings
        self.sessions = sessions
        self.process: multiprocessing.process.BaseProcess | None = None

    @property
    def pid(self) -> int | None:
        """The worker's process id (None before start)."""
        return self.process.pid if self.process else None

    def start(self) -> None:
        context = multiprocessing.get_context("spawn")
        self.process = context.Process(
            target=run_worker,
            args=(self.settings, os.getpid()),
            name="p2l-worker",
            daemon=True,
        )
        self.process.start()
        logger.info("job worker started (pid %s)", self.process.pid)

    def check(self) -> None:
        if self.process is None or self.process.is_alive():
            return
        code = self.process.exitcode
        with self.sessions() as session:
            failed = fail_orphaned_jobs(
                session, f"the worker process died (exit code {code})", self.process.pid
            )
        logger.error("job worker %s died (exit code %s); %d job(s) failed; restarting",
                     self.process.pid, code, failed)  # fmt: skip
        self.start()

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.terminate()
        self.process.join(10)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(5)
        with self.sessions() as session:
            fail_orphaned_jobs(session, "the service stopped while this job ran", self.process.pid)
        self.process = None
