"""What a fine-tune will cost, before it runs: from the throughput workers measure and report.

Workers keep a heartbeat row (``workers``) and, after every epoch and job, fold what they
measured into ``worker_throughput`` (images per second by architecture, input size and
device). An estimate uses, in order of preference: a measurement of the job's own
architecture and input size ("measured"); another architecture's, scaled by forward FLOPs
per image ("scaled"); a rough prior ("prior").
"""

import logging
import math
import os
import socket
from collections.abc import Mapping, Sequence
from datetime import timedelta
from functools import lru_cache
from typing import Any

import torch
from sqlalchemy import delete, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session
from torch.utils.flop_counter import FlopCounterMode

from app.db import rows_matched
from app.families import build_model, known_architectures
from app.finetune.options import FinetuneOptions, split_sizes
from app.finetune.search import trial_epochs
from app.jobs.cost import Estimate
from app.models import Throughput, Worker, utcnow

logger = logging.getLogger("p2l.estimates")

# A worker renews its heartbeat this often, idle or busy ...
HEARTBEAT_SECONDS = 5.0
# ... and counts as alive while its last one is at most this old.
WORKER_FRESH_SECONDS = 20.0
# Rows of workers gone this long (killed, so they could not delete their row) are dropped.
WORKER_FORGET_AFTER = timedelta(days=1)
# Recent measurements weigh more (a worker's machine may get busier or quieter).
SMOOTHING = 0.3

# The prior, when no worker measured anything yet: training FLOPs per second (forward,
# backward and update are about 3x the forward FLOPs), evaluation's speed-up over training
# per image (forward only, but small validation sets keep fixed costs), and the time of a
# job outside its epochs (decoding the images, the final evaluation, saving). Calibrated on
# compact_cnn at 32 px on a 2-core CPU (about 500 training images/s, 30-35 GFLOP/s).
PRIOR_TRAIN_FLOPS_PER_SECOND = 3e10
EVAL_SPEEDUP = 2.0
PRIOR_OVERHEAD_SECONDS_PER_IMAGE = 0.01
# Forward FLOPs per image the prior assumes where they cannot be counted: about a
# ResNet-18 at 160 px (a guess; the estimate then says so).
PRIOR_FLOPS_PER_IMAGE = 1e9


def phase_plan(options: FinetuneOptions, race_trials: Sequence[int] = ()) -> list[tuple[str, int]]:
    """The training phases a fine-tune runs, in order, with the epochs each plans at most
    (``race_trials``: the epochs of a race's trials, which come first)."""
    plan = [("race", epochs) for epochs in race_trials]
    if options.schedule == "auto":
        plan += [("auto_search", e) for e in trial_epochs(options.auto_search, options.auto_epochs)]
    plan.append(("fine_tune", options.epochs))
    if options.baseline:
        plan.append(("baseline", options.epochs))
    return plan


def split_totals(class_counts: Mapping[str, int], options: FinetuneOptions) -> tuple[int, int, int]:
    """(train, val, test) images of the whole dataset (the pipeline splits every class)."""
    sizes = [split_sizes(count, options) for count in class_counts.values()]
    return (
        sum(s[0] for s in sizes),
        sum(s[1] for s in sizes),
        sum(s[2] for s in sizes),
    )


@lru_cache(maxsize=64)
def forward_flops(architecture: str, input_size: int) -> float:
    """Forward FLOPs of one image (counted once on the meta device: no memory, no compute)."""
    with torch.device("meta"):
        # Evaluation mode: batch norm in training mode refuses one image whose feature map
        # has shrunk to 1x1 (resnet18 at 32 px); the FLOPs are the same.
        model = build_model(architecture, 10).eval()
        image = torch.zeros(1, 3, input_size, input_size)
    with FlopCounterMode(display=False) as counter:
        model(image)
    return float(counter.get_total_flops())


def counted_flops(architecture: str, input_size: int) -> float | None:
    """``forward_flops``, or None (logged) where counting fails for the architecture."""
    try:
        return forward_flops(architecture, input_size)
    except Exception:  # an estimate is advice: it must never cost the request
        logger.exception("could not count the FLOPs of %s at %d px", architecture, input_size)
        return None


def device_type(device: torch.device | str) -> str:
    """The device a measurement is filed under: its type (cpu, cuda, mps)."""
    return torch.device(device).type


# Heartbeats.


def heartbeat(
    session: Session,
    worker_id: str,
    kind: str,
    device: str,
    job_id: str | None = None,
    jobs_run: int = 0,
) -> None:
    """Record that the worker is alive now (creating its row the first time); commits."""
    now = utcnow()
    renewed = session.execute(
        update(Worker)
        .where(Worker.id == worker_id)
        .values(last_seen=now, job_id=job_id, jobs_run=jobs_run)
    )
    if rows_matched(renewed) == 0:
        session.execute(delete(Worker).where(Worker.last_seen < now - WORKER_FORGET_AFTER))
        session.add(
            Worker(
                id=worker_id,
                kind=kind,
                host=socket.gethostname()[:200],
                pid=os.getpid(),
                device=device,
                started_at=now,
                last_seen=now,
                job_id=job_id,
                jobs_run=jobs_run,
            )
        )
    session.commit()


def forget_worker(session: Session, worker_id: str) -> None:
    """Remove the row of a worker that exits; commits."""
    session.execute(delete(Worker).where(Worker.id == worker_id))
    session.commit()


def alive_workers(session: Session) -> list[Worker]:
    """Workers whose heartbeat is fresh."""
    cutoff = utcnow() - timedelta(seconds=WORKER_FRESH_SECONDS)
    return list(session.scalars(select(Worker).where(Worker.last_seen >= cutoff)))


# Measurements.


def _smoothed_sql(old: Any, new: Any) -> Any:
    """The running average as SQL (NULL while either side is NULL)."""
    return (1 - SMOOTHING) * old + SMOOTHING * new


def record_epoch(
    session: Session,
    worker_id: str,
    architecture: str,
    input_size: int,
    device: str,
    train_images: int,
    val_images: int,
    seconds: float,
    train_seconds: float,
) -> None:
    """Fold one epoch's measured speed into the running averages (the caller commits).

    One upsert, averaged in SQL: workers measuring the same key at once neither clash on
    the first row nor overwrite each other's measurements.
    """
    if train_seconds <= 0 or train_images <= 0:
        return
    train_rate = train_images / train_seconds
    eval_seconds = seconds - train_seconds
    eval_rate = val_images / eval_seconds if val_images and eval_seconds > 0 else None
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    row = insert(Throughput).values(
        architecture=architecture,
        input_size=input_size,
        device=device,
        train_images_per_second=train_rate,
        eval_images_per_second=eval_rate,
        epochs_measured=1,
        jobs_measured=0,
        worker_id=worker_id,
        updated_at=utcnow(),
    )
    new = row.excluded
    session.execute(
        row.on_conflict_do_update(
            index_elements=[Throughput.architecture, Throughput.input_size, Throughput.device],
            set_={
                "train_images_per_second": _smoothed_sql(
                    Throughput.train_images_per_second, new.train_images_per_second
                ),
                # No validation this epoch (NULL): the old average stays.
                "eval_images_per_second": func.coalesce(
                    _smoothed_sql(Throughput.eval_images_per_second, new.eval_images_per_second),
                    new.eval_images_per_second,
                    Throughput.eval_images_per_second,
                ),
                "epochs_measured": Throughput.epochs_measured + 1,
                "worker_id": new.worker_id,
                "updated_at": new.updated_at,
            },
        )
    )


def record_job(
    session: Session,
    worker_id: str,
    architecture: str,
    input_size: int,
    device: str,
    images: int,
    overhead_seconds: float,
) -> None:
    """Fold a job's time outside its epochs (loading, evaluating, saving) in; caller commits.

    Nothing without a row: no epoch was measured to attach it to.
    """
    if images <= 0:
        return
    per_image = max(overhead_seconds, 0.0) / images
    session.execute(
        update(Throughput)
        .where(
            Throughput.architecture == architecture,
            Throughput.input_size == input_size,
            Throughput.device == device,
        )
        .values(
            overhead_seconds_per_image=func.coalesce(
                _smoothed_sql(Throughput.overhead_seconds_per_image, per_image), per_image
            ),
            jobs_measured=Throughput.jobs_measured + 1,
            worker_id=worker_id,
            updated_at=utcnow(),
        )
    )


# Estimates.


def no_worker_warning(runner: str | None) -> str:
    """What a client is told when nothing would run its job: ``runner`` is the kind of the
    service's own runner (P2L_RUNNER), down now, or None when the service starts none."""
    if runner is None:
        reason = "the service starts none (P2L_START_WORKER=false)"
        remedy = "or restart the service with P2L_START_WORKER=true"
    else:
        reason = f"the service's {runner} runner is down (see the service's log)"
        remedy = "or restart the service"
    return (
        f"no worker is alive to run this job: {reason} and no worker has reported in for "
        f"{WORKER_FRESH_SECONDS:g} s; it stays queued until one runs. Start one with "
        f"`python -m app.worker` (same P2L_ settings, same database and data dir), "
        f"{remedy}."
    )


def _pick(rows: list[Throughput], devices: set[str]) -> Throughput | None:
    """The most recent row, preferring the devices of the workers alive now."""
    preferred = [r for r in rows if r.device in devices] or rows
    return max(preferred, key=lambda r: r.updated_at) if preferred else None


def estimate_finetune(
    session: Session,
    architecture: str,
    input_size: int,
    class_counts: Mapping[str, int],
    options: FinetuneOptions,
    race_trials: Sequence[int] = (),
) -> Estimate:
    """The expected run time of a fine-tune once a worker starts it (see module docstring);
    for a race, the whole job (trials and the survivor's fine-tune) is costed at the speed
    of ``architecture`` and ``input_size`` (its first contestant's)."""
    workers = alive_workers(session)
    devices = {w.device for w in workers}
    train, val, test = split_totals(class_counts, options)
    images = train + val + test
    epochs = sum(epochs for _, epochs in phase_plan(options, race_trials))
    rows = list(session.scalars(select(Throughput)))
    own = _pick(
        [r for r in rows if (r.architecture, r.input_size) == (architecture, input_size)],
        devices,
    )
    warnings: list[str] = []
    flops = counted_flops(architecture, input_size)
    device: str | None
    if own is not None:
        basis, device = "measured", own.device
        train_rate = own.train_images_per_second
        eval_rate = own.eval_images_per_second or train_rate * EVAL_SPEEDUP
        overhead = own.overhead_seconds_per_image
    elif flops is not None and (other := _nearest_in_compute(rows, devices, flops)) is not None:
        basis, device = "scaled", other.device
        ratio = forward_flops(other.architecture, other.input_size) / flops
        train_rate = other.train_images_per_second * ratio
        eval_rate = other.eval_images_per_second or other.train_images_per_second * EVAL_SPEEDUP
        eval_rate *= ratio
        overhead = other.overhead_seconds_per_image
        warnings.append(
            f"no worker has measured {architecture} at {input_size} px yet: the estimate "
            f"scales {other.architecture} at {other.input_size} px by compute per image"
        )
    else:
        basis, device = "prior", None
        train_rate = PRIOR_TRAIN_FLOPS_PER_SECOND / (3 * (flops or PRIOR_FLOPS_PER_IMAGE))
        eval_rate = train_rate * EVAL_SPEEDUP
        overhead = None
        if flops is None:
            warnings.append(
                f"the compute per image of {architecture} could not be counted: the estimate "
                "is a guess (it may be off many times); it improves once a job has run"
            )
        else:
            warnings.append(
                "no worker has measured any training speed yet: the estimate is a rough "
                "prior (it may be off several times); it improves once a job has run"
            )
    per_epoch = train / train_rate + val / eval_rate
    extra = images * (overhead if overhead is not None else PRIOR_OVERHEAD_SECONDS_PER_IMAGE)
    return Estimate(
        seconds=round(epochs * per_epoch + extra, 1),
        epochs_planned=epochs,
        train_images=train,
        val_images=val,
        test_images=test,
        seconds_per_epoch=round(per_epoch, 3),
        architecture=architecture,
        input_size=input_size,
        images_per_second=round(train_rate, 1),
        flops_per_image=flops,
        basis=basis,
        device=device,
        workers_alive=len(workers),
        warnings=warnings,
    )


def _nearest_in_compute(
    rows: list[Throughput], devices: set[str], flops: float
) -> Throughput | None:
    """The measurement of the architecture closest in compute per image (log scale)."""
    known = [
        r
        for r in rows
        if r.architecture in known_architectures()
        and counted_flops(r.architecture, r.input_size) is not None
    ]
    on_devices = [r for r in known if r.device in devices] or known
    if not on_devices:
        return None
    return min(
        on_devices,
        key=lambda r: abs(math.log(forward_flops(r.architecture, r.input_size) / flops)),
    )
