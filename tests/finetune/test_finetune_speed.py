"""The training loop's speed switches and hooks: CUDA-only switches, the throttled stop check."""

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from app.db import make_engine, migrate, session_factory
from app.families import get_spec, load_model, replace_head
from app.finetune.options import FinetuneOptions
from app.finetune.pipeline import finetune
from app.finetune.train import (
    OFF,
    Accelerator,
    ImageTensors,
    TrainConfig,
    augment_batch,
    train_classifier,
)
from app.jobs.progress import STOP_CHECK_SECONDS, WRITE_SECONDS, ProgressWriter
from app.models import Job
from app.zoo.bundled import BUNDLED_DIR, bundled_target

pytestmark = pytest.mark.unit

ARCH = "compact_cnn"


def source() -> torch.nn.Module:
    return load_model(ARCH, 10, BUNDLED_DIR / "sources" / "fashion_9k.safetensors")


def target() -> tuple[np.ndarray, np.ndarray, list[str]]:
    images, labels, names, is_test = bundled_target("fashion")
    return images[~is_test], labels[~is_test], names


def train_once(accelerator: Accelerator) -> tuple[torch.nn.Module, list[float]]:
    images, labels, _ = target()
    spec = get_spec(ARCH)
    torch.manual_seed(0)
    model = replace_head(source(), 5)
    data = ImageTensors(images[:96], labels[:96], spec.mean, spec.std)
    config = TrainConfig(epochs=2, batch_size=32, accelerator=accelerator)
    result = train_classifier(model, data, config, val=data)
    return model, [e.train_loss for e in result.history]


def test_speed_switches_change_nothing_on_the_cpu() -> None:
    assert Accelerator().on(torch.device("cpu")) == OFF
    on, on_losses = train_once(Accelerator())
    off, off_losses = train_once(OFF)
    assert on_losses == off_losses  # bit for bit: no autocast, no scaler, same memory layout
    for (name, a), b in zip(on.state_dict().items(), off.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_train_loss_is_the_image_weighted_mean_of_the_step_losses(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The epoch's sums now stay tensors until its end; they must mean what they meant.
    images, labels, _ = target()
    spec = get_spec(ARCH)
    torch.manual_seed(0)
    model = replace_head(source(), 5)
    data = ImageTensors(images[:80], labels[:80], spec.mean, spec.std)
    losses: list[tuple[float, int]] = []
    original = torch.nn.functional.cross_entropy

    def recording(logits: torch.Tensor, y: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        loss = original(logits, y, **kwargs)
        losses.append((float(loss.detach()), len(y)))
        return loss

    # Wraps torch's loss (not the project's code) to see every step's value.
    monkeypatch.setattr(torch.nn.functional, "cross_entropy", recording)
    result = train_classifier(model, data, TrainConfig(epochs=1, batch_size=32))
    assert [n for _, n in losses] == [32, 32, 16]
    expected = sum(loss * n for loss, n in losses) / 80
    assert result.history[0].train_loss == expected


def test_augmentation_shifts_and_flips_without_changing_the_pixels_it_keeps() -> None:
    images, _, _ = target()
    batch = torch.from_numpy(images[:16]).permute(0, 3, 1, 2).float()
    torch.manual_seed(1)
    shifted = augment_batch(batch.clone())
    assert shifted.shape == batch.shape and not torch.equal(shifted, batch)
    torch.manual_seed(1)
    assert torch.equal(augment_batch(batch.clone()), shifted)  # seeded: reproducible
    assert set(shifted.unique().tolist()) <= set(batch.unique().tolist())  # a shift, no blur


@dataclass
class HeldLease:
    job_id: str
    worker_id: str
    lost: threading.Event = field(default_factory=threading.Event)


@pytest.fixture
def sessions(tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    """Sessions on a fresh, migrated SQLite database."""
    engine = make_engine(f"sqlite:///{tmp_path / 'p2l.db'}")
    migrate(engine)
    yield session_factory(engine)
    engine.dispose()


def running_job(sessions: sessionmaker[Session], job_id: str) -> str:
    """A fine-tune row that worker ``w`` runs."""
    with sessions() as session:
        session.add(Job(id=job_id, kind="finetune", status="running", params={}, worker_id="w"))
        session.commit()
    return job_id


def test_the_stop_check_asks_the_database_at_most_every_interval(
    sessions: sessionmaker[Session],
) -> None:
    job_id = running_job(sessions, "a" * 32)
    lease = HeldLease(job_id, "w")
    writer = ProgressWriter(sessions, lease)
    try:
        assert not writer.should_stop()  # the first check asks
        with sessions() as session:
            session.execute(update(Job).where(Job.id == job_id).values(cancel_requested=True))
            session.commit()
        asked = time.monotonic()
        early = writer.should_stop()
        time.sleep(STOP_CHECK_SECONDS)
        assert writer.should_stop()  # noticed within one interval
        if time.monotonic() - asked < STOP_CHECK_SECONDS:  # a slow machine may pass it
            assert not early
        lease.lost.set()
        assert writer.should_stop()
    finally:
        writer.close()


def test_a_lost_lease_stops_at_the_next_step_without_asking(
    sessions: sessionmaker[Session],
) -> None:
    lease = HeldLease("b" * 32, "w")  # no such job: asking the database would say stop too
    writer = ProgressWriter(sessions, lease)
    try:
        assert writer.should_stop()
        lease.lost.set()
        assert writer.should_stop()
    finally:
        writer.close()


def test_epochs_shorter_than_the_write_interval_still_show_their_steps(
    sessions: sessionmaker[Session],
) -> None:
    job_id = running_job(sessions, "c" * 32)
    writer = ProgressWriter(sessions, HeldLease(job_id, "w"), [("fine_tune", 1000)])
    phase = {"phase": "fine_tune", "label": "fine-tune"}
    metrics = {"train_loss": 1.0, "seconds": 0.01, "train_seconds": 0.01}
    stored_steps = []
    started = time.monotonic()
    epoch = 0
    while time.monotonic() - started < 3 * WRITE_SECONDS:  # epochs of ~10 ms
        epoch += 1
        writer.update({**phase, "epoch": epoch, "step": 1, "steps_per_epoch": 1})
        if epoch > 1:  # the phase's first step is always written: look past it
            with sessions() as session:
                stored = session.get(Job, job_id)
                assert stored is not None
                stored_steps.append(stored.progress.get("step"))
        time.sleep(0.01)
        writer.update({**phase, "epoch": epoch, "epochs": 1000, "metrics": metrics})
    assert any(stored_steps), "no step reached the stored progress after the first epoch"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_fine_tune_with_every_switch_on_learns_like_without() -> None:
    images, labels, names = target()
    spec = get_spec(ARCH)
    options = FinetuneOptions(schedule="manual", epochs=4, patience=None)
    device = torch.device("cuda")
    fast, report = finetune(
        source(), ARCH, images, labels, names, spec.mean, spec.std, options,
        device=device, accelerator=Accelerator(),
    )  # fmt: skip
    _, plain = finetune(
        source(), ARCH, images, labels, names, spec.mean, spec.std, options,
        device=device, accelerator=OFF,
    )  # fmt: skip
    conv = next(p for p in fast.parameters() if p.ndim == 4)
    assert conv.is_contiguous(memory_format=torch.channels_last)
    assert report.test_accuracy is not None and plain.test_accuracy is not None
    assert report.test_accuracy > 0.6
    assert abs(report.test_accuracy - plain.test_accuracy) < 0.1
