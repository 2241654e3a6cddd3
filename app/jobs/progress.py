"""A running job's progress: throttled writes of where it stands, and the stop check.

Shared by the job bodies (fine-tunes in app.services.finetunes, evaluations in
app.services.evaluations); imports neither, so both can import it.
"""

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy import Connection, Select, select, update
from sqlalchemy.orm import Session, sessionmaker

from app.db import is_transient
from app.jobs.estimates import record_epoch, record_job
from app.jobs.service import CANDIDATE_FIELDS, LOADING_PROGRESS
from app.models import Job, JobStatus

logger = logging.getLogger("p2l.worker")

# Progress is written at most this often during an epoch (always at its end).
WRITE_SECONDS = 0.5
# The database is asked about cancellation at most this often: a query (~20 us on SQLite)
# before every step is 1-2 % of a GPU's millisecond steps; a lost lease shows at every step.
STOP_CHECK_SECONDS = 0.1
# While the database is away, a stop check or progress write tries again after this long,
# doubling up to the cap (training goes on meanwhile).
DB_RETRY_FIRST_SECONDS = 0.2
DB_RETRY_MAX_SECONDS = 5.0


class HeldLease(Protocol):
    """What a job body needs of the worker's lease on its job."""

    job_id: str
    worker_id: str
    lost: threading.Event


@dataclass
class Meter:
    """What a job's epochs measure the worker's throughput on (see app.jobs.estimates)."""

    worker_id: str
    architecture: str
    input_size: int
    device: str
    train_images: int
    val_images: int


class ProgressWriter:
    """Throttled progress writes and the stop check, for one running job.

    Folds the pipeline's events (phase, epoch, step) into the job's ``progress`` (see
    JobProgress in app.schemas): epochs done out of those planned, elapsed time and ETA.
    ``plan`` lists the training phases and their epochs; when a phase ends early (early
    stopping), the epochs it skipped leave the plan.

    A lost database connection does not stop the job: the stop check reconnects (with
    backoff) and answers "go on" meanwhile, and a progress write that fails is skipped (the
    next one writes the whole state). Only once the database has been away for
    ``db_retry_seconds`` does the stop check raise its error: the worker then hands the
    job back (app.jobs.worker.run_job).
    """

    def __init__(
        self,
        sessions: sessionmaker[Session],
        lease: HeldLease,
        plan: list[tuple[str, int]] | None = None,
        meter: Meter | None = None,
        estimate_seconds: float | None = None,
        db_retry_seconds: float = 60.0,
    ) -> None:
        self.sessions = sessions
        self.db_retry_seconds = db_retry_seconds
        self.lease = lease
        self.job_id = lease.job_id
        self.plan = plan or []
        self.meter = meter
        self.estimate_seconds = estimate_seconds
        self.epochs_done = 0
        self.segment = -1  # index in plan of the phase now training
        self.segment_key: tuple[str, Any] | None = None
        self.started = self.epoch_started = time.monotonic()
        self.last_step_write = 0.0
        self.state: dict[str, Any] = {
            **LOADING_PROGRESS,
            "epochs_done": 0,
            # None for a job without epochs (an evaluation): no bar to fill.
            "epochs_planned": sum(epochs for _, epochs in self.plan) if self.plan else None,
            "history": [],
        }
        self._connection: Connection | None = None
        self._stop_query: Select[bool, str | None, str] | None = None
        self._last_check = -STOP_CHECK_SECONDS  # the first check always asks
        self._db_lost_since: float | None = None  # the stop check's database is away since
        self._check_retry_at = 0.0
        self._check_delay = DB_RETRY_FIRST_SECONDS
        self._write_pending = False  # the last write failed: write at the next chance
        self._write_retry_at = 0.0
        self._write_delay = DB_RETRY_FIRST_SECONDS

    @property
    def epoch_seconds(self) -> float:
        """Time spent in the epochs finished so far."""
        return float(sum(m["seconds"] for m in self.state["history"]))

    def set_phase(self, phase: str, label: str) -> None:
        """Enter a phase without epochs (loading, evaluating, saving) and store it at once."""
        for key in ("epoch", "epochs", "step", "steps_per_epoch", *CANDIDATE_FIELDS):
            self.state.pop(key, None)
        self.state.update(phase=phase, label=label)
        self.epoch_started = time.monotonic()
        self._timing()
        self.write()

    def update(self, event: dict[str, Any]) -> None:
        """Fold in a phase, step or epoch event; write steps at most twice a second (epochs
        and phase changes always)."""
        if "epoch" not in event:
            self.set_phase(event["phase"], event.get("label") or event["phase"])
            return
        event = dict(event)
        changed = self._enter(event)
        epoch_end = "metrics" in event
        if epoch_end:
            self.epochs_done += 1
            metrics = {"phase": event["phase"], **event.pop("metrics")}
            # Its phase's words and auto candidate: a stream that missed the phase (shorter
            # than a poll) still announces it properly (app.api.streams).
            for key in ("label", *CANDIDATE_FIELDS):
                if event.get(key) is not None:
                    metrics[key] = event[key]
            self.state["history"] = [*self.state["history"], metrics]
            self.state.pop("step", None)
            self.state.pop("steps_per_epoch", None)
            self.epoch_started = time.monotonic()
        self.state.update(event)
        self.state["epochs_done"] = self.epochs_done
        self._timing()
        # Steps are throttled on their own clock: with epochs shorter than WRITE_SECONDS,
        # the epochs' writes would otherwise keep every step out of the stored progress.
        now = time.monotonic()
        step_due = not epoch_end and now - self.last_step_write >= WRITE_SECONDS
        if epoch_end or changed or step_due or self._write_pending:
            if not epoch_end:
                self.last_step_write = now
            self.write()
        # The frozen auto candidate trains the head only, several times faster than the
        # epochs estimates are about: folding it in would bias them.
        if epoch_end and (event.get("candidate") or {}).get("freeze_below") != -1:
            self.record_epoch(metrics)

    def _enter(self, event: dict[str, Any]) -> bool:
        """Notice a new training phase (or auto candidate): re-plan what is left; True if new."""
        key = (event["phase"], event.get("candidate_index"))
        if key == self.segment_key:
            return False
        self.segment_key = key
        self.segment += 1
        for field_name in CANDIDATE_FIELDS:  # details of the previous phase
            self.state.pop(field_name, None)
        if self.segment < len(self.plan):
            left = sum(epochs for _, epochs in self.plan[self.segment :])
            self.state["epochs_planned"] = self.epochs_done + left
        return True

    def _timing(self) -> None:
        """Elapsed time, and the ETA at the pace so far (the estimate before any is known)."""
        now = time.monotonic()
        elapsed = now - self.started
        self.state["elapsed_seconds"] = round(elapsed, 1)
        planned = self.state.get("epochs_planned") or 0
        history = self.state["history"]
        step, steps = self.state.get("step"), self.state.get("steps_per_epoch")
        per_epoch: float | None = None
        into_epoch = 0.0
        if history:
            per_epoch = self.epoch_seconds / len(history)
        elif step and steps:
            per_epoch = (now - self.epoch_started) / step * steps
        if step and steps:
            into_epoch = step / steps
        if per_epoch is not None:
            left = max(planned - self.epochs_done - into_epoch, 0.0)
            self.state["eta_seconds"] = round(per_epoch * left, 1)
        elif self.estimate_seconds is not None:
            self.state["eta_seconds"] = round(max(self.estimate_seconds - elapsed, 0.0), 1)

    @property
    def _database_away_now(self) -> bool:
        """The last progress write or stop check found no database (measurements wait)."""
        return self._write_pending or self._db_lost_since is not None

    def write(self) -> None:
        """Store the progress so far (only while this worker holds the job, running).

        A write the database cannot take now (connection lost) is skipped and logged: the
        next one, after a backoff, stores the whole state. Other errors are raised.
        """
        now = time.monotonic()
        if self._write_pending and now < self._write_retry_at:
            return
        try:
            self._write()
        except Exception as exc:
            if not is_transient(exc):
                raise
            try:  # a dropped connection: the pool hands out a fresh one at once
                self._write()
            except Exception as again:
                if not is_transient(again):
                    raise
                self._write_pending = True
                self._write_retry_at = time.monotonic() + self._write_delay
                self._write_delay = min(2 * self._write_delay, DB_RETRY_MAX_SECONDS)
                logger.warning(
                    "job %s: progress not stored, database unavailable (%s); training goes on",
                    self.job_id, again,
                )  # fmt: skip
                return
        self._write_pending = False
        self._write_delay = DB_RETRY_FIRST_SECONDS

    def _write(self) -> None:
        with self.sessions() as session:
            session.execute(
                update(Job)
                .where(
                    Job.id == self.job_id,
                    Job.worker_id == self.lease.worker_id,
                    Job.status == JobStatus.RUNNING,
                )
                .values(progress=dict(self.state))
            )
            session.commit()

    def record_epoch(self, measured: dict[str, Any]) -> None:
        """Fold a finished epoch's speed into the throughput estimates are made from."""
        if self.meter is None or self._database_away_now:
            return
        meter = self.meter
        try:  # its own transaction, after the progress: a measurement never fails a job
            with self.sessions() as session:
                record_epoch(
                    session, meter.worker_id, meter.architecture, meter.input_size,
                    meter.device, meter.train_images, meter.val_images,
                    measured["seconds"], measured["train_seconds"],
                )  # fmt: skip
                session.commit()
        except Exception:
            logger.exception("job %s: could not record an epoch's throughput", self.job_id)

    def record_job(self, images: int) -> None:
        """Record the job's time outside its epochs (loading, evaluating, saving)."""
        if self.meter is None or not self.state["history"] or self._database_away_now:
            return
        overhead = time.monotonic() - self.started - self.epoch_seconds
        meter = self.meter
        try:
            with self.sessions() as session:
                record_job(
                    session, meter.worker_id, meter.architecture, meter.input_size,
                    meter.device, images, overhead,
                )  # fmt: skip
                session.commit()
        except Exception:  # a measurement is not worth failing a finished job for
            logger.exception("job %s: could not record its throughput", self.job_id)

    def should_stop(self) -> bool:
        """True once cancellation was asked or the lease lost (checked before every step; the
        database at most every STOP_CHECK_SECONDS).

        While the database is unreachable, False (training goes on) and the check
        reconnects with backoff; after ``db_retry_seconds`` without it, the error is raised.
        """
        if self.lease.lost.is_set():
            return True
        now = time.monotonic()
        if now - self._last_check < STOP_CHECK_SECONDS or now < self._check_retry_at:
            return False
        self._last_check = now
        try:
            row = self._check()
        except Exception as exc:
            if not is_transient(exc):
                raise
            self._drop_connection()
            try:  # a dropped connection (the server is up): reconnect at once
                row = self._check()
            except Exception as again:
                if not is_transient(again):
                    raise
                self._drop_connection()
                return self._database_away(again)
            logger.info("job %s: database connection lost (%s); reconnected", self.job_id, exc)
        self._db_lost_since = None
        self._check_retry_at = 0.0
        self._check_delay = DB_RETRY_FIRST_SECONDS
        if row is None or row.cancel_requested:
            return True
        # Reaped (and perhaps claimed by another worker), or ended: not ours to train on.
        return bool(row.worker_id != self.lease.worker_id or row.status != JobStatus.RUNNING)

    def _check(self) -> Any:
        """The job's stop fields, read over the stop checks' own connection."""
        if self._connection is None or self._stop_query is None:
            # One autocommit connection for the whole job: a check costs one small query.
            engine = self.sessions.kw["bind"]
            self._connection = engine.connect().execution_options(isolation_level="AUTOCOMMIT")
            self._stop_query = select(Job.cancel_requested, Job.worker_id, Job.status).where(
                Job.id == self.job_id
            )
        return self._connection.execute(self._stop_query).first()

    def _database_away(self, exc: Exception) -> bool:
        """Go on training while the database is away; raise ``exc`` once it has been away
        for db_retry_seconds."""
        now = time.monotonic()
        if self._db_lost_since is None:
            self._db_lost_since = now
        away = now - self._db_lost_since
        if away >= self.db_retry_seconds:
            logger.error("job %s: database unavailable for %.0f s; stopping", self.job_id, away)
            raise exc
        logger.warning(
            "job %s: database unavailable for %.1f s (%s); training goes on",
            self.job_id, away, exc,
        )  # fmt: skip
        self._check_retry_at = now + self._check_delay
        self._check_delay = min(2 * self._check_delay, DB_RETRY_MAX_SECONDS)
        return False

    def _drop_connection(self) -> None:
        """Let go of the stop checks' connection (a dead one: the next check makes another)."""
        connection, self._connection = self._connection, None
        if connection is not None:
            try:
                connection.invalidate()
                connection.close()
            except Exception:  # it is gone already
                logger.debug("job %s: closing a dead connection failed", self.job_id)

    def close(self) -> None:
        """Release the connection of the stop checks."""
        connection, self._connection = self._connection, None
        if connection is not None:
            try:
                connection.close()
            except Exception:  # a dead connection: nothing left to release
                logger.debug("job %s: closing the stop checks' connection failed", self.job_id)
