"""The service's JSON answers as TypedDicts: plain dicts at run time, typed for editors.

They mirror ``app/schemas.py`` of the service; fields a newer or older service may leave out
are ``NotRequired``. Unknown fields are kept (they are dicts), so a newer service's answers
pass through unchanged.
"""

from typing import Any, Literal, NotRequired, TypedDict

JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
TERMINAL: tuple[str, ...] = ("succeeded", "failed", "cancelled")


class Health(TypedDict):
    """GET /healthz."""

    status: str
    database: str
    version: str


class Reference(TypedDict):
    """GET /v1/reference: the active reference network."""

    architecture: str
    input_size: int
    feature_dim: int
    weights_sha256: str
    weights_source: str
    device: str


class Architecture(TypedDict):
    """One entry of GET /v1/architectures: an architecture sources can have."""

    name: str
    family: str
    input_size: int
    fixed_input_size: bool
    mean: list[float]
    std: list[float]
    layer_groups: list[str]
    feature_dim: int


class ClassCount(TypedDict):
    """One class of a dataset and its image count."""

    name: str
    count: int


class SignatureSummary(TypedDict):
    """Shape of a dataset's signature."""

    n: int
    feature_dim: int
    reference_sha256: str


class Dataset(TypedDict):
    """A stored dataset."""

    id: str
    name: str
    created_at: str
    num_images: int
    num_classes: int
    classes: list[ClassCount]
    signature: SignatureSummary


class RejectedFile(TypedDict):
    """An archive member the upload did not keep."""

    path: str
    kind: str
    reason: str


class DatasetCreated(Dataset):
    """Answer to an upload: the dataset plus what was left out."""

    rejected: list[RejectedFile]
    rejected_counts: dict[str, int]
    rejected_total: int


class SignatureClass(TypedDict):
    """Per-class part of a signature."""

    name: str
    count: int
    mean: list[float]


class Signature(TypedDict):
    """GET /v1/datasets/{id}/signature."""

    n: int
    feature_dim: int
    reference_sha256: str
    classes: list[SignatureClass]
    mean: list[float]
    variance: list[float]


class Source(TypedDict):
    """A source model of the zoo."""

    id: str
    name: str
    created_at: str
    architecture: str
    num_classes: int
    input_size: int
    class_names: list[str]
    num_images: int
    class_counts: dict[str, int]
    feature_dim: int
    reference_sha256: str
    weights_sha256: str
    dataset_id: str | None
    origin: str
    project_id: NotRequired[str]
    shared: NotRequired[bool]
    image_counts: NotRequired[dict[str, Any]]


class RankedSource(TypedDict):
    """One source of a ranking and the parts of its score."""

    rank: int
    source_id: str
    name: str
    score: float
    distance: float
    similarity: float
    size_term: float
    num_images: int
    first_stage_rank: NotRequired[int | None]
    refine_score: NotRequired[float | None]
    p2l_rank: NotRequired[int | None]
    gain: NotRequired[dict[str, float] | None]


class RefineStage(TypedDict):
    """A two-stage ranking's second stage and its cost."""

    method: str
    top: int
    forward_passes: int
    images_per_pass: int
    seconds: float
    first_stage_ms: float


class ExcludedSource(TypedDict):
    """A source left out of a ranking, and why."""

    source_id: str
    name: str
    reason: str


class RankingSummary(TypedDict):
    """A past ranking without its results (GET /v1/rankings): counts and the first source."""

    id: str
    created_at: str
    target_dataset_id: str
    method: str
    measure: str
    refine_method: str | None
    calibration_id: str | None
    num_results: int
    num_excluded: int
    top_source_id: str | None
    top_source_name: str | None
    top_score: float | None


class Ranking(TypedDict):
    """A stored ranking."""

    id: str
    created_at: str
    target_dataset_id: str
    method: str
    measure: str
    params: dict[str, float]
    results: list[RankedSource]
    excluded: list[ExcludedSource]
    elapsed_ms: float | None
    refine: NotRequired[RefineStage | None]
    calibration_id: NotRequired[str | None]
    warnings: NotRequired[list[str]]
    learned: NotRequired[dict[str, Any] | None]
    coverage: NotRequired[dict[str, Any] | None]


class EpochMetrics(TypedDict):
    """One training epoch of one phase."""

    phase: str
    epoch: int
    train_loss: float
    train_accuracy: float
    val_accuracy: float | None
    seconds: float
    train_seconds: float


class JobProgress(TypedDict, total=False):
    """Where a job stands."""

    phase: str | None
    label: str | None
    epoch: int | None
    epochs: int | None
    step: int | None
    steps_per_epoch: int | None
    epochs_done: int
    epochs_planned: int | None
    elapsed_seconds: float | None
    eta_seconds: float | None
    history: list[EpochMetrics]


class Estimate(TypedDict):
    """What a fine-tune will cost (POST /v1/finetunes?dry_run=true, or JobOut.estimate)."""

    seconds: float
    epochs_planned: int
    train_images: int
    architecture: str
    input_size: int
    images_per_second: float
    basis: str
    workers_alive: int
    warnings: list[str]


class ClassMetrics(TypedDict):
    """Precision, recall and F1 of one class."""

    precision: float | None
    recall: float | None
    f1: float | None
    support: int


class MisclassifiedImage(TypedDict):
    """An image the model got wrong."""

    image: str
    true_label: str
    predicted_label: str
    confidence: float


class EvaluationReport(TypedDict):
    """Per-class metrics, confusion matrix and misclassified images on one split."""

    split: str
    images: int
    accuracy: float
    macro_f1: float
    per_class: dict[str, ClassMetrics]
    confusion_matrix: list[list[int]]
    class_names: list[str]
    misclassified: list[MisclassifiedImage]
    misclassified_total: int


class FinetuneReport(TypedDict):
    """What a fine-tune produced (the job's result and the model's report)."""

    model_id: str
    schedule: dict[str, Any]
    groups: list[dict[str, Any]]
    history: list[EpochMetrics]
    test_accuracy: float | None
    val_accuracy: float | None
    evaluated_on: str
    per_class_accuracy: dict[str, float | None]
    confusion_matrix: list[list[int]]
    evaluation: NotRequired[EvaluationReport | None]
    train_images: int
    val_images: int
    test_images: int
    seconds: float
    auto_search: NotRequired[dict[str, Any] | None]
    race: NotRequired[dict[str, Any] | None]
    baseline: NotRequired[dict[str, Any] | None]
    warnings: NotRequired[list[str]]


class Job(TypedDict):
    """A background job (fine-tune or evaluation) and its progress."""

    id: str
    kind: str
    status: JobStatus
    created_at: str
    started_at: str | None
    finished_at: str | None
    params: dict[str, Any]
    progress: JobProgress
    result: FinetuneReport | EvaluationReport | None
    error: str | None
    cancel_requested: bool
    model_id: str | None
    attempts: int
    worker_id: str | None
    estimate: NotRequired[Estimate | None]
    warnings: NotRequired[list[str]]


class Model(TypedDict):
    """A fine-tuned model and its report."""

    id: str
    created_at: str
    job_id: str
    source_id: str
    target_dataset_id: str
    architecture: str
    input_size: int
    class_names: list[str]
    report: FinetuneReport
    registered_source_id: str | None


class LabelScore(TypedDict):
    """One candidate label of a prediction."""

    label: str
    probability: float


class Prediction(TypedDict):
    """Top-k labels of one image."""

    filename: str
    top: list[LabelScore]


class Predictions(TypedDict):
    """POST /v1/models/{id}/predict."""

    model_id: str
    predictions: list[Prediction]


class Preprocessing(TypedDict):
    """GET /v1/models/{id}/preprocessing: how to feed the exported network."""

    input_size: int
    mean: list[float]
    std: list[float]
    class_names: list[str]
    layout: str
    color: str
    scale: str
    resize: str
    output: str


class Evidence(TypedDict):
    """What one successful fine-tune showed: a source's accuracy on a target."""

    id: str
    created_at: str
    job_id: str
    target_dataset_id: str
    reference_sha256: str
    source_id: str
    source_name: str
    accuracy: float
    accuracy_split: str
    schedule: dict[str, Any]
    baseline_accuracy: float | None


class Calibration(TypedDict):
    """The ranking parameters in force, the evidence of finished fine-tunes, and regrets."""

    calibration_id: str | None
    created_at: str | None
    trigger: str | None
    params: dict[str, Any]
    bundled_defaults: dict[str, Any]
    evidence: dict[str, int]
    regret: dict[str, Any]
    fitted_on: dict[str, Any] | None
    auto_refit_after_targets: int
    notes: list[str]


RoleName = Literal["viewer", "member", "admin", "operator"]


class WhoAmI(TypedDict):
    """GET /v1/whoami: the project a request acts in and the key's role."""

    project_id: str
    project_name: str
    role: RoleName
    key_id: str | None
    key_name: str | None
    authenticated: bool


class Quotas(TypedDict):
    """A project's quotas in force (None: unlimited)."""

    max_active_jobs: int | None
    max_job_seconds: float | None
    max_storage_bytes: int | None
    max_event_streams_per_key: int | None
    requests_per_minute_per_key: int | None


class Project(TypedDict):
    """A project: a team's datasets, private sources, rankings, jobs and models."""

    id: str
    name: str
    created_at: str
    quotas: Quotas
    share_evidence: bool


class Usage(TypedDict):
    """GET /v1/projects/{id}/usage: what a project holds and runs, against its quotas."""

    project_id: str
    active_jobs: int
    storage_bytes: int
    datasets: int
    sources: int
    models: int
    rankings: int
    jobs: int
    quotas: Quotas


class ApiKey(TypedDict):
    """An API key of a project (never the key itself)."""

    id: str
    project_id: str
    name: str
    role: RoleName
    prefix: str
    created_at: str
    expires_at: str | None
    last_used_at: str | None
    revoked_at: str | None


class KeyCreated(ApiKey):
    """A new API key, with ``key`` itself: shown this once, never again."""

    key: str


class AuditEntry(TypedDict):
    """One state-changing request of the audit log."""

    id: str
    created_at: str
    key_id: str | None
    project_id: str
    action: str
    object_id: str | None
    status: int
    detail: str | None
