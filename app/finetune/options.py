"""The fine-tuning options, defined once: the API's request body, the job's record and the
pipeline's input are all this model (the fine-tuning guide's defaults table is checked
against it)."""

from collections.abc import Mapping
from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from app.finetune.search import AutoScore, AutoSearch

# Fields that only mean something when the schedule is given by hand.
MANUAL_ONLY = ("decay", "multipliers", "freeze_below")
# What auto did before auto_search and auto_score existed (jobs stored then lack them).
PRE_SEARCH_CHOICE = {"auto_search": "exhaustive", "auto_score": "accuracy"}


class FinetuneOptions(BaseModel):
    """How to fine-tune: schedule, optimiser, splits and budget. Every number is finite."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    schedule: Literal["auto", "manual"] = Field(
        "auto",
        description="auto: a short search on the validation split picks the degree of "
        "fine-tuning (decay 1, 0.5, 0.1 or a frozen feature extractor); manual: use decay, "
        "multipliers and freeze_below as given (auto refuses them).",
    )
    base_lr: float = Field(0.05, gt=0, le=10, description="Learning rate of the new head.")
    decay: float = Field(
        0.5, ge=0, le=1, description="Group k below the head trains at base_lr * decay**k."
    )
    multipliers: list[float] | None = Field(
        None,
        min_length=1,
        max_length=256,
        description="Explicit per-group LR multipliers, input -> head (replaces decay); "
        "each in [0, 100], the head's > 0.",
    )
    freeze_below: int = Field(
        0, ge=0, le=256, description="Freeze the first k layer groups entirely."
    )
    epochs: int = Field(
        40, ge=1, le=1000, description="Epochs of the final training (one-cycle schedule)."
    )
    batch_size: int = Field(32, ge=1, le=4096, description="Images per SGD step.")
    weight_decay: float = Field(
        5e-4,
        ge=0,
        le=1,
        description="SGD weight decay (not on biases and norm parameters, nor on a ViT's "
        "class token and position embedding).",
    )
    val_fraction: float = Field(
        0.2,
        ge=0,
        lt=1,
        description="Share of every class (after the test split) that chooses the auto "
        "schedule, the stopping epoch and the checkpoint; its accuracy is optimistic.",
    )
    test_fraction: float = Field(
        0.2,
        ge=0,
        lt=1,
        description="Share of every class held out from training and from every choice; "
        "test_accuracy (the figure to quote) is measured on it. 0: no test split.",
    )
    patience: int | None = Field(
        10, ge=1, le=1000, description="Early stopping on validation accuracy."
    )
    hflip: bool = Field(False, description="Random horizontal flips (not for text or digits).")
    seed: int = Field(
        0, ge=0, le=2**32 - 1, description="Seed of the splits, the new head and the batches."
    )
    baseline: bool | None = Field(
        None,
        description="Also train from scratch on the same split. Left out (null): on for "
        'source_id "best" where its ranking says the zoo does not cover the target '
        "(coverage.covered false), off otherwise.",
    )
    auto_epochs: int = Field(
        10,
        ge=1,
        le=200,
        description="Budget per auto candidate: exhaustive trains each this long; halving "
        "starts each at a quarter of it and doubles the epochs of the better half each round.",
    )
    auto_search: AutoSearch = Field(
        "halving",
        description="How auto searches: halving (successive halving, 24 epochs at the "
        "default auto_epochs) or exhaustive (every candidate for auto_epochs, 40).",
    )
    auto_score: AutoScore = Field(
        "loss",
        description="What auto compares candidates by, on the validation split: loss "
        "(cross-entropy) or accuracy.",
    )

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.schedule == "auto":
            if given := [name for name in MANUAL_ONLY if name in self.model_fields_set]:
                raise ValueError(
                    f"schedule 'auto' chooses {', '.join(given)} itself; "
                    "send schedule 'manual' to set them"
                )
            if self.val_fraction == 0:
                raise ValueError("schedule 'auto' needs a validation split (val_fraction > 0)")
        if self.multipliers is not None:
            if any(not 0 <= m <= 100 for m in self.multipliers):
                raise ValueError("every multiplier must lie in [0, 100]")
            if self.multipliers[-1] == 0:
                raise ValueError("the last multiplier (the new head) must be > 0")
        return self

    @classmethod
    def from_record(cls, record: Mapping[str, object]) -> "FinetuneOptions":
        """Options as a job stored them (every field written out, manual-only ones included)."""
        if record.get("schedule", "auto") == "auto":
            record = {k: v for k, v in record.items() if k not in MANUAL_ONLY}
        # Jobs stored before auto could choose its search ran the exhaustive one by accuracy.
        record = {**PRE_SEARCH_CHOICE, **record}
        return cls.model_validate(record)


def held_out_count(images: int, fraction: float) -> int:
    """Images of one class a split of ``fraction`` takes (at least 1, never all of them)."""
    if fraction <= 0:
        return 0
    return min(images - 1, max(1, round(images * fraction)))


def split_sizes(images: int, options: FinetuneOptions) -> tuple[int, int, int]:
    """(train, val, test) images one class of ``images`` gets (see pipeline.three_way_split)."""
    test = held_out_count(images, options.test_fraction)
    val = held_out_count(images - test, options.val_fraction)
    return images - test - val, val, test


def minimum_images_per_class(options: FinetuneOptions) -> int:
    """Smallest class that still gives every requested split at least one image."""
    images = 1
    while not _every_split_filled(images, options):
        images += 1
    return images


def check_class_sizes(class_counts: Mapping[str, int], options: FinetuneOptions) -> None:
    """ValueError naming the classes too small for the requested splits."""
    needed = minimum_images_per_class(options)
    if small := {name: n for name, n in class_counts.items() if n < needed}:
        listed = ", ".join(f"{name!r} ({n})" for name, n in list(small.items())[:10])
        raise ValueError(
            f"with val_fraction {options.val_fraction:g} and test_fraction "
            f"{options.test_fraction:g} every class needs at least {needed} images (one for "
            f"training and one for each held-out split); too small: {listed}"
        )


def _every_split_filled(images: int, options: FinetuneOptions) -> bool:
    train, val, test = split_sizes(images, options)
    return (
        train >= 1
        and (val >= 1 or options.val_fraction == 0)
        and (test >= 1 or options.test_fraction == 0)
    )
