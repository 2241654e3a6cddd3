"""A fine-tune's cost, told before it runs (no torch: the HTTP schemas show it as is;
``app.jobs.estimates`` computes it)."""

from typing import Literal

from pydantic import BaseModel, Field


class Estimate(BaseModel):
    """What a fine-tune will cost, told before it runs."""

    seconds: float = Field(
        description="Expected run time once a worker starts it (every planned epoch, with "
        "validation, plus loading, evaluating and saving; early stopping may end it sooner)."
    )
    epochs_planned: int = Field(
        description="Epochs of every phase together, at most: auto's search (halving: 24 at "
        "auto_epochs 10; exhaustive: 4 x auto_epochs), "
        "epochs, and epochs again for the baseline."
    )
    train_images: int = Field(description="Images per training epoch.")
    val_images: int = Field(0, description="Images validated after every epoch.")
    test_images: int = Field(0, description="Images of the final evaluation.")
    seconds_per_epoch: float | None = Field(None, description="Training plus validation.")
    architecture: str = Field(description="The architecture that would train (the source's).")
    input_size: int = Field(description="Side of the square input it would train at, in pixels.")
    images_per_second: float = Field(description="Training throughput the estimate assumes.")
    flops_per_image: float | None = Field(
        None, description="Forward FLOPs of one image (what 'scaled' scales by)."
    )
    basis: Literal["measured", "scaled", "prior"] = Field(
        description="measured: from what workers measured on this architecture and input "
        "size; scaled: measured on another architecture, scaled by compute; prior: nothing "
        "measured yet."
    )
    device: str | None = Field(None, description="The device type the measurement is from.")
    workers_alive: int = Field(description="Workers that reported in recently.")
    warnings: list[str] = Field(
        default_factory=list,
        description="What makes the estimate rough, or the job unlikely to run soon (no worker "
        "alive).",
    )
