"""Request and response bodies of the HTTP API (separate from the tables)."""

from datetime import datetime
from typing import Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

Item = TypeVar("Item")


class Page(BaseModel, Generic[Item]):
    """One page of a listing; pass ``next_page_token`` back as ``page_token`` for the next."""

    items: list[Item]
    next_page_token: str | None = None


class RejectedFileOut(BaseModel):
    """An archive member that was not kept."""

    path: str
    reason: str


class ClassCount(BaseModel):
    """One class of a dataset and how many images it holds."""

    name: str
    count: int


class SignatureSummary(BaseModel):
    """The shape of a dataset's signature (the vectors are at ``/signature``)."""

    n: int
    feature_dim: int
    reference_sha256: str


class DatasetOut(BaseModel):
    """A stored dataset."""

    model_config = ConfigDict(from_attributes=True)

    id: str
    name: str
    created_at: datetime
    num_images: int
    num_classes: int
    classes: list[ClassCount]
    signature: SignatureSummary


class DatasetCreated(DatasetOut):
    """Answer to an upload: the dataset plus every file that was left out, with its reason."""

    rejected: list[RejectedFileOut]


class SignatureClass(BaseModel):
    """Per-class part of a signature."""

    name: str
    count: int
    mean: list[float]


class SignatureOut(BaseModel):
    """Every vector of a dataset signature, in reference-feature space."""

    n: int
    feature_dim: int
    reference_sha256: str
    classes: list[SignatureClass]
    mean: list[float]
    variance: list[float]


class ReferenceOut(BaseModel):
    """The active reference network."""

    architecture: str
    input_size: int
    feature_dim: int
    weights_sha256: str = Field(description="sha256 of the weights file (or of the init).")
    weights_source: str
    device: str


class HealthOut(BaseModel):
    """Liveness and readiness."""

    status: str
    database: str
    version: str


class Problem(BaseModel):
    """RFC 9457 problem details: every 4xx/5xx body (``application/problem+json``)."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str
    instance: str


class SourceOut(BaseModel):
    """A source model in the zoo."""

    model_config = ConfigDict(from_attributes=True)

    id: str
    name: str
    created_at: datetime
    architecture: str
    num_classes: int
    input_size: int
    class_names: list[str]
    num_images: int = Field(description="Size of the dataset the source was trained on (n_s).")
    class_counts: dict[str, int]
    feature_dim: int
    reference_sha256: str
    weights_sha256: str
    dataset_id: str | None
    origin: str = Field(description="bundled, upload or finetune")


class RankingRequest(BaseModel):
    """What to rank, and how."""

    model_config = ConfigDict(populate_by_name=True)

    target_dataset_id: str
    method: Literal["p2l", "distance", "largest"] = "p2l"
    measure: Literal["kl", "js", "cosine", "emd"] | None = Field(
        None, description="Distance measure; default P2L_P2L_MEASURE (js)."
    )
    source_ids: list[str] | None = Field(None, description="Rank only these sources.")
    top_k: int | None = Field(None, ge=1)
    lam: float | None = Field(
        None, alias="lambda", ge=0, description="Override lambda for this ranking."
    )


class RankedSource(BaseModel):
    """One source in a ranking, with the parts of its score."""

    rank: int
    source_id: str
    name: str
    score: float
    distance: float = Field(description="D(target, source) under the measure.")
    similarity: float = Field(description="exp(-distance).")
    size_term: float = Field(description="lambda * log(n_source).")
    num_images: int


class ExcludedSource(BaseModel):
    """A source left out of a ranking, and why."""

    source_id: str
    name: str
    reason: str


class RankingOut(BaseModel):
    """A stored ranking."""

    id: str
    created_at: datetime
    target_dataset_id: str
    method: str
    measure: str
    params: dict[str, float]
    results: list[RankedSource]
    excluded: list[ExcludedSource]
    elapsed_ms: float | None = Field(None, description="Time of the scoring itself.")


class FinetuneRequest(BaseModel):
    """Fine-tune a source on a target dataset, with layer-wise learning rates."""

    target_dataset_id: str
    source_id: str = Field(
        "best", description='A source id, or "best": the top of the P2L ranking for the target.'
    )
    schedule: Literal["auto", "manual"] = Field(
        "auto",
        description="auto: pick decay / frozen depth by a short search on the validation split "
        "(candidates and budget are in the result); manual: use decay / multipliers / "
        "freeze_below as given.",
    )
    base_lr: float = Field(0.05, gt=0, le=10, description="Learning rate of the new head.")
    decay: float = Field(
        0.5, ge=0, le=1, description="Group k below the head trains at base_lr * decay**k."
    )
    multipliers: list[float] | None = Field(
        None, description="Explicit per-group LR multipliers, input -> head (replaces decay)."
    )
    freeze_below: int = Field(0, ge=0, description="Freeze the first k layer groups entirely.")
    epochs: int = Field(40, ge=1, le=1000)
    batch_size: int = Field(32, ge=1, le=4096)
    weight_decay: float = Field(5e-4, ge=0)
    val_fraction: float = Field(
        0.2,
        gt=0,
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
    patience: int | None = Field(10, ge=1, description="Early stopping on validation accuracy.")
    hflip: bool = Field(False, description="Random horizontal flips (not for text or digits).")
    seed: int = 0
    baseline: bool = Field(False, description="Also train from scratch on the same split.")
    auto_epochs: int = Field(10, ge=1, le=200, description="Budget per auto candidate.")


class JobOut(BaseModel):
    """A background job and its progress."""

    model_config = ConfigDict(from_attributes=True)

    id: str
    kind: str
    status: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    params: dict
    progress: dict = Field(description="phase, epoch, step, per-epoch metrics so far, ETA.")
    result: dict | None
    error: str | None
    cancel_requested: bool
    model_id: str | None


class ModelOut(BaseModel):
    """A fine-tuned model and its report."""

    model_config = ConfigDict(from_attributes=True)

    id: str
    created_at: datetime
    job_id: str
    source_id: str
    target_dataset_id: str
    architecture: str
    input_size: int
    class_names: list[str]
    report: dict
    registered_source_id: str | None


class LabelScore(BaseModel):
    """One candidate label of a prediction."""

    label: str
    probability: float


class Prediction(BaseModel):
    """Top-k labels for one uploaded image."""

    filename: str
    top: list[LabelScore]


class PredictionsOut(BaseModel):
    """Predictions for every uploaded image, in upload order."""

    model_id: str
    predictions: list[Prediction]
