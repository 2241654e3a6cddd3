"""Training and evaluation of classifiers on in-memory uint8 images (no web imports)."""

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from app.finetune.layers import ParamGroup


@dataclass(frozen=True)
class Accelerator:
    """Speed switches that only act on CUDA (no-ops on the CPU, where results stay exact).

    ``mixed_precision``: float16 autocast (and a gradient scaler when training);
    ``channels_last``: channels-last model and inputs; ``pin_memory``: batches are copied
    from pinned host memory without blocking.
    """

    mixed_precision: bool = True
    channels_last: bool = True
    pin_memory: bool = True

    def on(self, device: torch.device) -> "Accelerator":
        """The switches in force on ``device``: all off unless it is a CUDA device."""
        return self if device.type == "cuda" else OFF


# Nothing switched on: full precision, default memory format, plain copies.
OFF = Accelerator(mixed_precision=False, channels_last=False, pin_memory=False)


@dataclass
class TrainConfig:
    """Optimiser and schedule of one training run."""

    epochs: int = 10
    batch_size: int = 128
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    label_smoothing: float = 0.1
    augment: bool = True
    hflip: bool = False
    seed: int = 0
    patience: int | None = None  # epochs without a better validation accuracy before stopping
    accelerator: Accelerator = field(default_factory=Accelerator)  # CUDA only


class Cancelled(Exception):
    """Training was asked to stop (by ``should_stop``)."""


@dataclass
class EpochResult:
    """Metrics after one epoch."""

    epoch: int
    train_loss: float
    train_accuracy: float
    val_accuracy: float | None
    seconds: float  # the whole epoch, validation included
    train_seconds: float  # the training steps alone


@dataclass
class TrainResult:
    """Per-epoch history and the best validation accuracy reached."""

    history: list[EpochResult] = field(default_factory=list)
    best_val_accuracy: float | None = None


class ImageTensors:
    """Images as one NCHW uint8 tensor with their labels, normalised batch by batch."""

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        mean: Iterable[float],
        std: Iterable[float],
    ) -> None:
        self.images = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)
        self.labels = torch.from_numpy(np.asarray(labels, dtype=np.int64))
        self.mean = torch.tensor(list(mean)).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(list(std)).view(1, 3, 1, 1) * 255
        self._stats: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def __len__(self) -> int:
        return len(self.labels)

    def batch(
        self,
        index: torch.Tensor,
        device: torch.device,
        augment: bool = False,
        hflip: bool = False,
        accelerator: Accelerator = OFF,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised float images and labels for ``index``, optionally augmented.

        On a GPU the uint8 batch is copied (4x fewer bytes than floats) and converted,
        augmented and normalised there.
        """
        images, labels = self.images[index], self.labels[index]
        accelerator = accelerator.on(device)
        if device.type != "cpu":
            if accelerator.pin_memory:
                images, labels = images.pin_memory(), labels.pin_memory()
            images = images.to(device, non_blocking=accelerator.pin_memory)
            labels = labels.to(device, non_blocking=accelerator.pin_memory)
        images = images.float()
        if augment:
            images = augment_batch(images, hflip)
        mean, std = self._on(device)
        images = (images - mean) / std
        if accelerator.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return images, labels

    def _on(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and std (x255) on ``device``, copied there once."""
        if device.type == "cpu":
            return self.mean, self.std
        if device not in self._stats:
            self._stats[device] = (self.mean.to(device), self.std.to(device))
        return self._stats[device]


def augment_batch(images: torch.Tensor, hflip: bool = False) -> torch.Tensor:
    """The training augmentation: a random shift of up to 3 pixels, optional random flips."""
    images = _random_shift(images, pad=3)
    if hflip:
        # Drawn on the CPU generator wherever the images are: the same draws on any device.
        flip = (torch.rand(len(images)) < 0.5).to(images.device)
        images[flip] = images[flip].flip(-1)
    return images


def _random_shift(images: torch.Tensor, pad: int, chunks: int = 8) -> torch.Tensor:
    """Random translation by up to ``pad`` pixels (edge-replicated), one shift per chunk.

    Per-chunk rather than per-image shifts keep this a cheap slice on the CPU.
    """
    h, w = images.shape[-2:]
    padded = F.pad(images, (pad, pad, pad, pad), mode="replicate")
    parts = []
    for part in padded.chunk(chunks):
        dy, dx = torch.randint(0, 2 * pad + 1, (2,)).tolist()
        parts.append(part[..., dy : dy + h, dx : dx + w])
    return torch.cat(parts)


def train_classifier(
    model: nn.Module,
    train: ImageTensors,
    config: TrainConfig,
    val: ImageTensors | None = None,
    param_groups: list[ParamGroup] | None = None,
    device: torch.device | None = None,
    on_epoch: Callable[[EpochResult], None] | None = None,
    on_step: Callable[[int, int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> TrainResult:
    """SGD (Nesterov) with a one-cycle schedule; keeps the best-validation weights.

    ``param_groups`` carries per-group learning rates (layer-wise fine-tuning); frozen
    BatchNorm layers stay in eval mode. ``should_stop`` is checked before every step and
    raises Cancelled. On CUDA, ``config.accelerator`` switches mixed precision,
    channels-last and pinned copies.
    """
    device = device or torch.device("cpu")
    fast = config.accelerator.on(device)
    torch.manual_seed(config.seed)
    model.to(device)
    if fast.channels_last:
        model.to(memory_format=torch.channels_last)
    groups = param_groups or [{"params": [p for p in model.parameters() if p.requires_grad]}]
    optimizer = torch.optim.SGD(
        groups,
        lr=config.lr,
        momentum=config.momentum,
        nesterov=True,
        weight_decay=config.weight_decay,
    )
    steps_per_epoch = math.ceil(len(train) / config.batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer,
        max_lr=[g["lr"] for g in optimizer.param_groups],
        total_steps=max(1, config.epochs * steps_per_epoch),
        pct_start=0.15,
    )
    scaler = torch.amp.GradScaler(device.type, enabled=fast.mixed_precision)
    # Apple's MPS has no float64.
    sum_dtype = torch.float32 if device.type == "mps" else torch.float64
    result = TrainResult()
    best_state: dict[str, torch.Tensor] | None = None
    stale_epochs = 0
    for epoch in range(1, config.epochs + 1):
        start = time.perf_counter()
        _train_mode(model)
        order = torch.randperm(len(train))
        # Summed where the model runs, read once per epoch: no per-step wait on a GPU.
        total_loss = torch.zeros((), dtype=sum_dtype, device=device)
        correct = torch.zeros((), dtype=torch.int64, device=device)
        for step, first in enumerate(range(0, len(train), config.batch_size), start=1):
            if should_stop is not None and should_stop():
                raise Cancelled(f"stopped in epoch {epoch}, before step {step}")
            images, labels = train.batch(
                order[first : first + config.batch_size],
                device,
                config.augment,
                config.hflip,
                fast,
            )
            with torch.autocast(device.type, dtype=torch.float16, enabled=fast.mixed_precision):
                logits = model(images)
                loss = F.cross_entropy(logits, labels, label_smoothing=config.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            if fast.mixed_precision:
                # torch leaves Tensor.backward unannotated (torch.autograd.backward is typed).
                scaler.scale(loss).backward()  # type: ignore[no-untyped-call]
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()  # type: ignore[no-untyped-call]
                optimizer.step()
            scheduler.step()
            total_loss += loss.detach().to(sum_dtype) * len(labels)
            correct += (logits.argmax(1) == labels).sum()
            if on_step:
                on_step(epoch, step, steps_per_epoch)
        if device.type == "cuda":  # the epoch's steps are done, not just queued
            torch.cuda.synchronize(device)
        train_seconds = time.perf_counter() - start
        val_accuracy = None
        if val is not None:
            val_accuracy = evaluate(model, val, device, accelerator=fast).accuracy
        epoch_result = EpochResult(
            epoch,
            float(total_loss) / len(train),
            int(correct) / len(train),
            val_accuracy,
            time.perf_counter() - start,
            train_seconds,
        )
        result.history.append(epoch_result)
        if val_accuracy is not None:
            if result.best_val_accuracy is None or val_accuracy > result.best_val_accuracy:
                result.best_val_accuracy = val_accuracy
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                stale_epochs = 0
            else:
                stale_epochs += 1
        if on_epoch:
            on_epoch(epoch_result)
        if config.patience is not None and stale_epochs >= config.patience:
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return result


def _train_mode(model: nn.Module) -> None:
    """Training mode, except BatchNorm layers whose parameters are frozen keep their stats."""
    model.train()
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and not any(
            p.requires_grad for p in module.parameters()
        ):
            module.eval()


@dataclass
class Evaluation:
    """Accuracy and predictions on a labelled set (softmax probabilities when asked for)."""

    accuracy: float
    predictions: np.ndarray
    labels: np.ndarray
    probabilities: np.ndarray | None = None  # (N, classes) float32
    loss: float = 0.0  # mean cross-entropy (nats): graded where accuracy only counts hits


def evaluate(
    model: nn.Module,
    data: ImageTensors,
    device: torch.device | None = None,
    batch_size: int = 256,
    probabilities: bool = False,
    accelerator: Accelerator = OFF,
) -> Evaluation:
    """Top-1 accuracy and mean cross-entropy of ``model`` on ``data``; with
    ``probabilities``, the softmax too.

    ``accelerator`` (CUDA only; off unless given) as in training.
    """
    device = device or torch.device("cpu")
    fast = accelerator.on(device)
    model.eval()
    predictions, softmax = [], []
    loss_sum = 0.0
    with (
        torch.inference_mode(),
        torch.autocast(device.type, dtype=torch.float16, enabled=fast.mixed_precision),
    ):
        for first in range(0, len(data), batch_size):
            index = torch.arange(first, min(first + batch_size, len(data)))
            images, batch_labels = data.batch(index, device, accelerator=fast)
            logits = model(images).float()
            loss_sum += float(F.cross_entropy(logits, batch_labels, reduction="sum"))
            predictions.append(logits.argmax(1).cpu())
            if probabilities:
                softmax.append(logits.softmax(1).cpu())
    predicted = torch.cat(predictions).numpy()
    labels = data.labels.numpy()
    return Evaluation(
        float((predicted == labels).mean()),
        predicted,
        labels,
        torch.cat(softmax).numpy() if probabilities else None,
        loss_sum / max(len(data), 1),
    )
