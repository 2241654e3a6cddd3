"""Request and response bodies of the HTTP API (separate from the tables)."""

from datetime import datetime
from typing import Annotated, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from app.finetune.options import FinetuneOptions

Item = TypeVar("Item")


class Page(BaseModel, Generic[Item]):
    """One page of a listing; pass ``next_page_token`` back as ``page_token`` for the next."""

    items: list[Item]
    next_page_token: str | None = None


class RejectedFileOut(BaseModel):
    """An archive member that was not kept."""

    path: str = Field(description="Its path in the archive, shortened to 1,024 characters.")
    kind: str = Field(
        description="Why, in one word: unsafe_path, invalid_name, name_too_long, link, "
        "special_file, hidden, wrong_layout, duplicate, too_large, encrypted, "
        "unsupported_compression, unreadable, not_an_image, too_many_pixels, corrupt_image."
    )
    reason: str = Field(description="Why, for a person.")


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
    """Answer to an upload: the dataset plus the files that were left out, and why."""

    rejected: list[RejectedFileOut] = Field(
        description="The first P2L_MAX_REJECTED_LISTED (default 100) rejected files."
    )
    rejected_counts: dict[str, int] = Field(
        description="Every rejected file, counted by kind (listed or not)."
    )
    rejected_total: int = Field(description="How many files were rejected in all.")


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

    model_config = ConfigDict(populate_by_name=True, allow_inf_nan=False)

    target_dataset_id: str = Field(max_length=64)
    method: Literal["p2l", "distance", "largest"] = "p2l"
    measure: Literal["kl", "js", "cosine", "emd"] | None = Field(
        None, description="Distance measure; default P2L_P2L_MEASURE (js)."
    )
    source_ids: list[Annotated[str, Field(max_length=64)]] | None = Field(
        None, max_length=10_000, description="Rank only these sources."
    )
    top_k: int | None = Field(None, ge=1, le=100_000)
    lam: float | None = Field(
        None, alias="lambda", ge=0, le=100, description="Override lambda for this ranking."
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


class FinetuneRequest(FinetuneOptions):
    """Fine-tune a source on a target dataset, with layer-wise learning rates."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"target_dataset_id": "<dataset id>", "source_id": "best"}]}
    )

    target_dataset_id: str = Field(max_length=64)
    source_id: str = Field(
        "best",
        max_length=64,
        description='A source id, or "best": the top of the P2L ranking for the target.',
    )

    def options(self) -> FinetuneOptions:
        """The training options alone, keeping which fields the client set."""
        fields = set(FinetuneOptions.model_fields) & self.model_fields_set
        return FinetuneOptions.model_validate(self.model_dump(include=fields))


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
    attempts: int = Field(description="Runs so far (a job whose worker was lost is re-queued).")
    worker_id: str | None = Field(description="The worker holding (or last holding) the job.")


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
