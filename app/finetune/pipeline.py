"""Fine-tune a source model on a small target: split, pick the schedule, train, evaluate.

No web imports: usable as a library. ``finetune`` is the one entry point.
"""

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from app.families import build_model, head_outputs, layer_groups, replace_head
from app.finetune.evaluation import confusion_matrix, evaluation_report
from app.finetune.layers import LayerwiseLR, describe_groups
from app.finetune.options import FinetuneOptions, held_out_count
from app.finetune.search import describe_candidate, run_search
from app.finetune.train import (
    Accelerator,
    EpochResult,
    Evaluation,
    ImageTensors,
    TrainConfig,
    TrainResult,
    evaluate,
    train_classifier,
)


@dataclass
class FinetuneResult:
    """Everything a fine-tuning run produced, apart from the weights.

    ``test_accuracy`` comes from the test split, which chose nothing; ``val_accuracy`` from
    the validation split, which chose the schedule, the epoch and the checkpoint (so it is
    optimistic). Per-class accuracy and the confusion matrix are on ``evaluated_on``.
    """

    schedule: dict[str, Any]
    groups: list[dict[str, Any]]
    history: list[dict[str, Any]]
    test_accuracy: float | None
    val_accuracy: float | None
    evaluated_on: Literal["test", "validation", "none"]
    per_class_accuracy: dict[str, float | None]
    confusion_matrix: list[list[int]]
    train_images: int
    val_images: int
    test_images: int
    seconds: float
    auto_search: dict[str, Any] | None = None
    baseline: dict[str, Any] | None = None
    warnings: list[str] = field(default_factory=list)
    # The EvaluationReport (app.finetune.evaluation) of ``evaluated_on``; None without one.
    evaluation: dict[str, Any] | None = None


Progress = Callable[[dict[str, Any]], None]


def stratified_split(
    labels: np.ndarray, val_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) indices with ``val_fraction`` of every class (at least 1, unless the
    fraction is 0 or the class has a single image) in val."""
    rng = np.random.default_rng(seed)
    train: list[np.intp] = []
    val: list[np.intp] = []
    for label in np.unique(labels):
        index = rng.permutation(np.flatnonzero(labels == label))
        count = held_out_count(len(index), val_fraction)
        val.extend(index[:count])
        train.extend(index[count:])
    return np.sort(np.array(train, dtype=np.int64)), np.sort(np.array(val, dtype=np.int64))


def three_way_split(
    labels: np.ndarray, val_fraction: float, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(train, val, test) indices, stratified: test first, then val from the rest."""
    rest, test = stratified_split(labels, test_fraction, seed)
    train, val = stratified_split(labels[rest], val_fraction, seed)
    return rest[train], rest[val], test


def schedule_for(options: FinetuneOptions, overrides: dict[str, Any], groups: int) -> LayerwiseLR:
    """The LayerwiseLR of the options, with a candidate's overrides applied."""
    freeze_below = overrides.get("freeze_below", options.freeze_below)
    return LayerwiseLR(
        base_lr=options.base_lr,
        decay=overrides.get("decay", options.decay),
        multipliers=None if overrides else _tuple(options.multipliers),
        freeze_below=groups - 1 if freeze_below == -1 else freeze_below,
    )


def finetune(
    source: nn.Module,
    architecture: str,
    images: np.ndarray,
    labels: np.ndarray,
    class_names: list[str],
    mean: tuple[float, float, float],
    std: tuple[float, float, float],
    options: FinetuneOptions,
    device: torch.device | None = None,
    progress: Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
    image_names: list[str] | None = None,
    accelerator: Accelerator | None = None,
) -> tuple[nn.Module, FinetuneResult]:
    """Fine-tune ``source`` (a loaded source model) on the target; returns model and report.

    ``image_names`` (one per image, e.g. ``class/file.png``) name the misclassified images
    in the report. ``accelerator``: the CUDA speed switches (mixed precision, channels-last,
    pinned copies; all on by default, no-ops on the CPU).
    """
    started = time.perf_counter()
    device = device or torch.device("cpu")
    accelerator = accelerator or Accelerator()
    train_idx, val_idx, test_idx = three_way_split(
        labels, options.val_fraction, options.test_fraction, options.seed
    )
    train = ImageTensors(images[train_idx], labels[train_idx], mean, std)
    val = ImageTensors(images[val_idx], labels[val_idx], mean, std) if len(val_idx) else None
    test = ImageTensors(images[test_idx], labels[test_idx], mean, std) if len(test_idx) else None
    if options.schedule == "auto" and val is None:
        raise ValueError("schedule 'auto' needs a validation split (val_fraction > 0)")
    source_state = {k: v.clone() for k, v in source.state_dict().items()}

    def run(
        overrides: dict[str, Any], epochs: int, phase: dict[str, Any], patience: int | None
    ) -> tuple[nn.Module, TrainResult, LayerwiseLR]:
        return _train_copy(
            source_state, architecture, head_outputs(source), len(class_names), train, val,
            options, overrides, epochs, phase, patience, device, progress, should_stop,
            accelerator,
        )  # fmt: skip

    auto_search = None
    overrides: dict[str, Any] = {}
    if options.schedule == "auto":

        def trial(
            candidate: dict[str, Any], epochs: int, index: int, trials: int
        ) -> dict[str, float]:
            label = f"auto search {index}/{trials}: {describe_candidate(candidate)}"
            details = {"candidate": candidate, "candidate_index": index, "candidates": trials}
            model, _, _ = run(candidate, epochs, _phase("auto_search", label, **details), None)
            assert val is not None  # auto refuses to run without a validation split
            scores = evaluate(model, val, device, accelerator=accelerator)
            return {"val_accuracy": scores.accuracy, "val_loss": scores.loss}

        auto_search = run_search(
            options.auto_search, options.auto_score, options.auto_epochs, trial
        )
        overrides = auto_search["chosen"]

    fine_tune = _phase("fine_tune", f"fine-tune: {_describe_schedule(options, overrides)}")
    model, final, schedule = run(overrides, options.epochs, fine_tune, options.patience)
    _announce(progress, "evaluating", "evaluating the fine-tuned model")
    on_test = (
        evaluate(model, test, device, probabilities=True, accelerator=accelerator)
        if test is not None
        else None
    )
    on_val = (
        evaluate(model, val, device, probabilities=on_test is None, accelerator=accelerator)
        if val is not None
        else None
    )
    evaluation = on_test or on_val
    report = FinetuneResult(
        schedule={
            "base_lr": schedule.base_lr,
            "decay": schedule.decay,
            "multipliers": list(schedule.multipliers) if schedule.multipliers else None,
            "freeze_below": schedule.freeze_below,
            "chosen_by": options.schedule,
            "reason": auto_search["reason"] if auto_search else "manual: as requested",
        },
        groups=describe_groups(model, schedule),
        history=[{"phase": "fine_tune", **asdict(e)} for e in final.history],
        test_accuracy=on_test.accuracy if on_test else None,
        val_accuracy=on_val.accuracy if on_val else None,
        evaluated_on="test" if on_test else "validation" if on_val else "none",
        per_class_accuracy=(
            _per_class(evaluation.predictions, evaluation.labels, class_names)
            if evaluation is not None
            else {}
        ),
        confusion_matrix=(
            confusion_matrix(evaluation.predictions, evaluation.labels, len(class_names)).tolist()
            if evaluation is not None
            else []
        ),
        train_images=len(train),
        val_images=len(val) if val is not None else 0,
        test_images=len(test) if test is not None else 0,
        seconds=0.0,
        auto_search=auto_search,
    )
    if on_test is not None or on_val is not None:
        split, rows = ("test", test_idx) if on_test is not None else ("validation", val_idx)
        names = [image_names[i] for i in rows] if image_names is not None else None
        report.evaluation = split_report(on_test or on_val, split, class_names, names, rows)
    if options.baseline:
        _, report.baseline = train_from_scratch(
            architecture, len(class_names), train, val, options, device, progress, should_stop,
            test=test, accelerator=accelerator,
        )  # fmt: skip
        split = "test" if test is not None else "validation"
        key = "test_accuracy" if test is not None else "val_accuracy"
        ours, theirs = getattr(report, key), report.baseline[key]
        if ours is not None and theirs is not None:
            report.baseline["transfer_gain"] = ours - theirs
            report.baseline["transfer_gain_split"] = split
            if ours < theirs:
                report.warnings.append(
                    f"negative transfer: on the {split} split, training from scratch reached "
                    f"{theirs:.3f}, fine-tuning {ours:.3f}"
                )
    report.seconds = time.perf_counter() - started
    return model, report


def race_trial(
    source: nn.Module,
    architecture: str,
    images: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    mean: tuple[float, float, float],
    std: tuple[float, float, float],
    options: FinetuneOptions,
    epochs: int,
    phase: dict[str, Any],
    device: torch.device | None = None,
    progress: Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
    accelerator: Accelerator | None = None,
) -> dict[str, Any]:
    """A race's trial: fine-tune ``source`` for ``epochs`` on the job's training split (the
    manual schedule of ``options``; decay 0.5 under auto) and score it on the validation
    split, as the full fine-tune will split the target: mean accuracy and loss, and each
    image's loss and correctness."""
    device = device or torch.device("cpu")
    accelerator = accelerator or Accelerator()
    train_idx, val_idx, _ = three_way_split(
        labels, options.val_fraction, options.test_fraction, options.seed
    )
    if not len(val_idx):
        raise ValueError("a race needs a validation split (val_fraction > 0)")
    train = ImageTensors(images[train_idx], labels[train_idx], mean, std)
    val = ImageTensors(images[val_idx], labels[val_idx], mean, std)
    state = source.state_dict()
    model, _, _ = _train_copy(
        state, architecture, head_outputs(source), num_classes, train, val, options, {},
        epochs, phase, None, device, progress, should_stop, accelerator,
    )  # fmt: skip
    scores = evaluate(model, val, device, probabilities=True, accelerator=accelerator)
    assert scores.probabilities is not None
    chance = scores.probabilities[np.arange(len(scores.labels)), scores.labels]
    return {
        "val_accuracy": scores.accuracy,
        "val_loss": scores.loss,
        "val_losses": -np.log(np.clip(chance, 1e-12, None)),
        "val_correct": scores.predictions == scores.labels,
    }


def _train_copy(
    source_state: dict[str, torch.Tensor],
    architecture: str,
    source_classes: int,
    num_classes: int,
    train: ImageTensors,
    val: ImageTensors | None,
    options: FinetuneOptions,
    overrides: dict[str, Any],
    epochs: int,
    phase: dict[str, Any],
    patience: int | None,
    device: torch.device,
    progress: Progress | None,
    should_stop: Callable[[], bool] | None,
    accelerator: Accelerator,
) -> tuple[nn.Module, TrainResult, LayerwiseLR]:
    """Fine-tune a fresh copy of the source (its state, a new head) under a schedule."""
    model = build_model(architecture, source_classes)
    model.load_state_dict(source_state)
    torch.manual_seed(options.seed)
    model = replace_head(model, num_classes)
    schedule = schedule_for(options, overrides, len(layer_groups(model)))
    result = train_classifier(
        model,
        train,
        _config(options, epochs, patience, accelerator),
        val=val,
        param_groups=schedule.param_groups(model, options.weight_decay),
        device=device,
        on_epoch=_epoch_reporter(progress, phase, epochs),
        on_step=_step_reporter(progress, phase),
        should_stop=should_stop,
    )
    return model, result, schedule


def train_from_scratch(
    architecture: str,
    num_classes: int,
    train: ImageTensors,
    val: ImageTensors | None,
    options: FinetuneOptions,
    device: torch.device | None = None,
    progress: Progress | None = None,
    should_stop: Callable[[], bool] | None = None,
    test: ImageTensors | None = None,
    accelerator: Accelerator | None = None,
) -> tuple[nn.Module, dict[str, Any]]:
    """The no-transfer baseline: the same architecture trained from scratch on the same split
    (validation for early stopping, accuracy on the test split as well when given)."""
    device = device or torch.device("cpu")
    accelerator = accelerator or Accelerator()
    torch.manual_seed(options.seed)
    model = build_model(architecture, num_classes)
    started = time.perf_counter()
    result = train_classifier(
        model,
        train,
        _config(options, options.epochs, options.patience, accelerator),
        val=val,
        device=device,
        on_epoch=_epoch_reporter(progress, BASELINE_PHASE, options.epochs),
        on_step=_step_reporter(progress, BASELINE_PHASE),
        should_stop=should_stop,
    )
    return model, {
        "test_accuracy": _accuracy(model, test, device, accelerator),
        "val_accuracy": _accuracy(model, val, device, accelerator),
        "epochs_run": len(result.history),
        "seconds": time.perf_counter() - started,
        # Per epoch, so its curve can be drawn beside the fine-tune's (the report's own
        # history holds the fine-tune's epochs only).
        "history": [{"phase": BASELINE_PHASE["phase"], **asdict(e)} for e in result.history],
    }


def _accuracy(
    model: nn.Module, data: ImageTensors | None, device: torch.device, accelerator: Accelerator
) -> float | None:
    if data is None:
        return None
    return evaluate(model, data, device, accelerator=accelerator).accuracy


def _config(
    options: FinetuneOptions, epochs: int, patience: int | None, accelerator: Accelerator
) -> TrainConfig:
    return TrainConfig(
        epochs=epochs,
        batch_size=options.batch_size,
        lr=options.base_lr,
        weight_decay=options.weight_decay,
        hflip=options.hflip,
        seed=options.seed,
        patience=patience,
        accelerator=accelerator,
    )


def _phase(phase: str, label: str, **details: Any) -> dict[str, Any]:
    """A training phase as progress events name it: its id, its label, and details."""
    return {"phase": phase, "label": label, **details}


# The no-transfer baseline's phase (see train_from_scratch).
BASELINE_PHASE = _phase("baseline", "baseline: the same architecture trained from scratch")


def _describe_schedule(options: FinetuneOptions, overrides: dict[str, Any]) -> str:
    if options.schedule == "auto":
        return f"auto's choice, {describe_candidate(overrides)}"
    if options.multipliers is not None:
        return "manual, explicit multipliers"
    frozen = f", first {options.freeze_below} groups frozen" if options.freeze_below else ""
    return f"manual, decay {options.decay:g}{frozen}"


def _announce(progress: Progress | None, phase: str, label: str) -> None:
    """Report a phase without epochs (e.g. evaluating)."""
    if progress is not None:
        progress({"phase": phase, "label": label})


def _epoch_reporter(
    progress: Progress | None, phase: dict[str, Any], epochs: int
) -> Callable[[EpochResult], None] | None:
    if progress is None:
        return None

    def report(epoch: EpochResult) -> None:
        progress({**phase, "epoch": epoch.epoch, "epochs": epochs, "metrics": asdict(epoch)})

    return report


def _step_reporter(
    progress: Progress | None, phase: dict[str, Any]
) -> Callable[[int, int, int], None] | None:
    if progress is None:
        return None

    def report(epoch: int, step: int, steps: int) -> None:
        progress({**phase, "epoch": epoch, "step": step, "steps_per_epoch": steps})

    return report


def _tuple(values: list[float] | None) -> tuple[float, ...] | None:
    return tuple(values) if values is not None else None


def _per_class(
    predicted: np.ndarray, labels: np.ndarray, names: list[str]
) -> dict[str, float | None]:
    """Accuracy per class; None for a class the split holds no image of."""
    return {
        name: float((predicted[labels == i] == i).mean()) if (labels == i).any() else None
        for i, name in enumerate(names)
    }


def split_report(
    evaluation: Evaluation | None,
    split: str,
    class_names: list[str],
    image_names: list[str] | None,
    index: np.ndarray,
) -> dict[str, Any]:
    """The EvaluationReport of one split; unnamed images are called by their index."""
    if evaluation is None or evaluation.probabilities is None:
        raise ValueError("the evaluation has no probabilities (evaluate(probabilities=True))")
    names = image_names if image_names is not None else [f"image {i}" for i in index]
    return evaluation_report(
        evaluation.predictions, evaluation.labels, evaluation.probabilities,
        class_names, names, split,
    )  # fmt: skip
