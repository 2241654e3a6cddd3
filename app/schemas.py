"""Request and response bodies of the HTTP API (separate from the tables)."""

from datetime import datetime
from typing import Annotated, Any, Generic, Literal, Self, TypeVar

from pydantic import BaseModel, ConfigDict, Field, model_validator

from app.finetune.options import FinetuneOptions
from app.finetune.race import RaceOptions
from app.jobs.cost import Estimate
from app.measures import MAX_REFINE_TOP, MEASURES, Measure, Method, RefineMethod

Item = TypeVar("Item")
ImageCounts = Literal["verified", "claimed"]
RoleName = Literal["viewer", "member", "admin", "operator"]


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
    weights_source: str = Field(
        description="file: and the weights file's name (never its path), or "
        "seeded-random-init: and the seed."
    )
    device: str


class ArchitectureOut(BaseModel):
    """An architecture sources can have: how to feed it and how it is fine-tuned."""

    model_config = ConfigDict(from_attributes=True)

    name: str = Field(description="What `architecture` takes wherever one is asked for.")
    family: str = Field(description="Its model family: compact, resnet, mobilenet, vit...")
    input_size: int = Field(description="Default side of the square input, in pixels.")
    fixed_input_size: bool = Field(
        description="True when no other input size runs (a ViT's position embedding)."
    )
    mean: list[float] = Field(description="Per-channel mean subtracted from pixel / 255.")
    std: list[float] = Field(description="Per-channel divisor after the mean.")
    layer_groups: list[str] = Field(
        description="Its layer groups, input -> head: what `multipliers` and `freeze_below` "
        "of a fine-tune count."
    )
    feature_dim: int = Field(description="Width of its pooled features (the head's input).")


class ArchitectureList(BaseModel):
    """Every architecture the service builds (one page: the list is short and fixed)."""

    items: list[ArchitectureOut]


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
    dataset_id: str | None = Field(
        description="The stored dataset it was signed from (null: a signature upload, a "
        "deleted dataset, or a shared source of another project)."
    )
    origin: str = Field(description="bundled, upload or finetune")
    project_id: str | None = Field(
        description="The project that registered it (null: a shared source of another project)."
    )
    shared: bool = Field(
        description="In the shared zoo (every project ranks over it; only operators change "
        "it); false: private to its project."
    )
    image_counts: ImageCounts = Field(
        description="verified: the service counted its images (a stored dataset, a "
        "fine-tuned model's target, the bundled zoo); claimed: an uploaded signature's word, "
        "weighed at most as P2L_CLAIMED_IMAGES_CAP images in the size term."
    )


class RequestBody(BaseModel):
    """A JSON request body: a field it does not know is refused (422), never ignored.

    (FinetuneOptions and RaceOptions, in app.finetune below this layer, say the same.)
    """

    model_config = ConfigDict(extra="forbid")


class RefineRequest(RequestBody):
    """The second stage of a two-stage ranking."""

    method: RefineMethod = Field(
        description="logme (You et al. 2021: evidence of a linear model on the source's "
        "features), leep (Nguyen et al. 2020) or nce (Tran et al. 2019): both from the "
        "source's own head."
    )
    top: int = Field(
        3, ge=1, le=MAX_REFINE_TOP, description="How many of the first stage's best to re-rank."
    )


class RankingRequest(RequestBody):
    """What to rank, and how."""

    model_config = ConfigDict(populate_by_name=True, allow_inf_nan=False)

    target_dataset_id: str = Field(max_length=64, description="The dataset to rank for.")
    method: Method = Field(
        "p2l",
        description="p2l: similarity and source size; distance: similarity only; largest: "
        "source size only (the paper's two baselines).",
    )
    measure: Measure | None = Field(
        None,
        description="Distance measure; default P2L_P2L_MEASURE (js). "
        + "; ".join(f"{info.name}: {info.summary}" for info in MEASURES.values())
        + ".",
    )
    source_ids: list[Annotated[str, Field(max_length=64)]] | None = Field(
        None, max_length=10_000, description="Rank only these sources."
    )
    top_k: int | None = Field(
        None, ge=1, le=100_000, description="Return only the best k (all when left out)."
    )
    lam: float | None = Field(
        None, alias="lambda", ge=0, le=100, description="Override lambda for this ranking."
    )
    refine: RefineRequest | None = Field(
        None,
        description="Two-stage ranking: re-rank the first stage's top sources by a "
        "per-candidate measure (one forward pass of the target through each).",
    )


class RefineOut(BaseModel):
    """What a two-stage ranking's second stage did, and what it cost."""

    method: RefineMethod
    top: int = Field(description="Sources re-ranked (fewer when fewer were ranked).")
    forward_passes: int = Field(description="One per re-ranked source.")
    images_per_pass: int = Field(description="The target's images, through each source.")
    seconds: float = Field(description="The second stage: decoding, forward passes, scores.")
    first_stage_ms: float = Field(description="The first stage's scoring, over the whole zoo.")


class RankedSource(BaseModel):
    """One source in a ranking, with the parts of its score."""

    rank: int
    source_id: str
    name: str
    score: float
    distance: float = Field(description="D(target, source) under the measure.")
    similarity: float = Field(description="exp(-distance).")
    size_term: float = Field(
        description="lambda * log(n_source); a claimed count weighs at most as "
        "P2L_CLAIMED_IMAGES_CAP images."
    )
    num_images: int
    image_counts: ImageCounts = Field(
        "verified",
        description="Whether the source's image count was counted by the service (verified) "
        "or only claimed by an uploaded signature (claimed; its size term is capped).",
    )
    shared: bool = Field(True, description="From the shared zoo (false: the project's own).")
    first_stage_rank: int | None = Field(
        None, description="Two-stage rankings: the source's rank after the first stage."
    )
    refine_score: float | None = Field(
        None,
        description="Two-stage rankings: the second stage's score (null below the shortlist, "
        "or when the measure could not score the source).",
    )


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
    refine: RefineOut | None = Field(None, description="A two-stage ranking's second stage.")
    calibration_id: str | None = Field(
        None,
        description="The calibration (GET /v1/calibration) whose measure or lambda this ranking "
        "used; null: the bundled defaults, or the request's own measure and lambda.",
    )
    warnings: list[str] = Field(
        default_factory=list, description="Why nothing was ranked, when nothing was."
    )


class FinetuneRequest(FinetuneOptions):
    """Fine-tune a source on a target dataset, with layer-wise learning rates."""

    target_dataset_id: str = Field(max_length=64, description="The dataset to fine-tune on.")
    source_id: str = Field(
        "best",
        max_length=64,
        description='A source id; "best": the top of the P2L ranking for the target; "race": '
        "short fine-tunes of P2L's top sources under successive halving pick it (see race).",
    )
    race: RaceOptions | None = Field(
        None, description='With source_id "race": the shortlist, the budget and the score.'
    )

    @model_validator(mode="after")
    def _race_only_when_racing(self) -> Self:
        if self.race is not None and self.source_id != "race":
            raise ValueError('race options are for source_id "race"')
        if self.source_id == "race" and self.val_fraction == 0:
            raise ValueError(
                'source_id "race" scores trials on a validation split (val_fraction > 0)'
            )
        return self

    def options(self) -> FinetuneOptions:
        """The training options alone, keeping which fields the client set."""
        fields = set(FinetuneOptions.model_fields) & self.model_fields_set
        return FinetuneOptions.model_validate(self.model_dump(include=fields))


class RegisterRequest(RequestBody):
    """Add a fine-tuned model to the zoo as a new source."""

    name: str | None = Field(
        None,
        max_length=200,
        description="The new source's name; default: `finetuned-` and the first 8 characters "
        "of the model id.",
    )


# JobStatus's values (app.models), spelled out so the OpenAPI document shows them inline;
# tests/api/test_openapi.py keeps the two equal.
JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]


class EpochMetrics(BaseModel):
    """One training epoch of one phase.

    Defaults stand for what reports of earlier releases did not record, so every stored
    report stays readable.
    """

    phase: str = Field(
        "fine_tune", description="The phase the epoch belongs to (see JobProgress.phase)."
    )
    epoch: int = Field(description="1-based epoch within the phase.")
    train_loss: float
    train_accuracy: float
    val_accuracy: float | None = Field(description="On the validation split; null without one.")
    seconds: float = Field(description="The whole epoch, validation included.")
    train_seconds: float | None = Field(None, description="The training steps alone.")
    label: str | None = Field(None, description="Its phase in words.")
    candidate_index: int | None = Field(
        None, description="auto_search or race: which trial (1-based) the epoch belongs to."
    )
    candidate: dict[str, float] | None = Field(
        None, description="auto_search: the schedule that trial tried."
    )
    candidates: int | None = Field(None, description="auto_search or race: trials planned.")


class JobProgress(BaseModel):
    """Where a job stands: written by its worker while it runs, final once it has ended."""

    phase: str | None = Field(
        None,
        description="queued, loading, race, auto_search, fine_tune, baseline, evaluating, saving, "
        "done, failed or cancelled.",
    )
    label: str | None = Field(None, description="The phase in words, for people.")
    epoch: int | None = Field(None, description="Epoch within the current phase.")
    epochs: int | None = Field(None, description="Epochs the current phase plans.")
    step: int | None = None
    steps_per_epoch: int | None = None
    epochs_done: int = Field(0, description="Epochs finished, all phases together.")
    epochs_planned: int | None = Field(
        None,
        description="Epochs the whole job runs at most (early stopping may end a phase "
        "sooner; the figure then drops to what is left). The overall bar is "
        "epochs_done / epochs_planned.",
    )
    candidate: dict[str, float] | None = Field(
        None, description='auto_search: the schedule being tried (e.g. {"decay": 0.5}).'
    )
    candidate_index: int | None = Field(
        None,
        description="auto_search or race: the trial's number, 1-based (halving tries the "
        "better candidates again, for longer).",
    )
    candidates: int | None = Field(None, description="auto_search or race: trials planned.")
    elapsed_seconds: float | None = Field(None, description="Since the worker took the job.")
    eta_seconds: float | None = Field(
        None, description="Time left at the pace so far; 0 once the job has ended."
    )
    history: list[EpochMetrics] = Field(default_factory=list, description="Every epoch so far.")


class GroupOut(BaseModel):
    """One layer group of a fine-tuned model and the learning rate it trained at."""

    group: str
    parameters: int
    lr: float
    frozen: bool


class ScheduleOut(BaseModel):
    """The layer-wise learning-rate schedule that trained the final model."""

    base_lr: float
    decay: float
    multipliers: list[float] | None
    freeze_below: int
    chosen_by: Literal["auto", "manual"]
    reason: str = Field(
        "", description="Why this schedule ran: auto's winning score and search, or manual."
    )


class ClassMetrics(BaseModel):
    """Precision, recall and F1 of one class."""

    precision: float | None = Field(description="null when nothing was predicted as the class.")
    recall: float | None = Field(description="null when the split holds no image of the class.")
    f1: float | None
    support: int = Field(description="Images of the class in the split.")


class MisclassifiedImage(BaseModel):
    """An image the model got wrong."""

    image: str = Field(description="Its name: class/file within the dataset or archive.")
    true_label: str
    predicted_label: str
    confidence: float = Field(description="Probability the model gave its (wrong) label.")


class EvaluationReport(BaseModel):
    """How a model does on a labelled split: per-class metrics and what it got wrong."""

    split: str = Field(description="What the figures are computed on: test, validation, archive.")
    images: int
    accuracy: float
    macro_f1: float
    per_class: dict[str, ClassMetrics]
    confusion_matrix: list[list[int]] = Field(
        description="Rows: true class, columns: predicted class, in class_names order."
    )
    class_names: list[str]
    misclassified: list[MisclassifiedImage] = Field(
        description="The misclassified images, most confident first (at most 100)."
    )
    misclassified_total: int


class BaselineOut(BaseModel):
    """The same architecture trained from scratch on the same split (no transfer)."""

    test_accuracy: float | None = None
    val_accuracy: float | None = None
    epochs_run: int
    seconds: float
    transfer_gain: float | None = Field(None, description="Fine-tuned minus from scratch.")
    transfer_gain_split: str | None = None


class FinetuneReport(BaseModel):
    """What a fine-tune produced: the job's result and the model's report.

    Defaults stand for what reports of earlier releases did not record (no test split, no
    evaluation), so every stored report stays readable.
    """

    model_config = ConfigDict(extra="allow")

    model_id: str
    schedule: ScheduleOut
    groups: list[GroupOut]
    history: list[EpochMetrics]
    test_accuracy: float | None = Field(None, description="On the test split, which chose nothing.")
    val_accuracy: float | None = Field(
        description="On the validation split, which chose the schedule and the checkpoint."
    )
    evaluated_on: Literal["test", "validation", "none"] = Field(
        "validation", description="The split of per_class_accuracy and confusion_matrix."
    )
    per_class_accuracy: dict[str, float | None]
    confusion_matrix: list[list[int]]
    evaluation: EvaluationReport | None = Field(
        None, description="Per-class precision, recall, F1 and misclassified images."
    )
    train_images: int
    val_images: int
    test_images: int = 0
    seconds: float
    auto_search: dict[str, Any] | None = Field(
        None,
        description="With schedule auto: the search (halving or exhaustive) and its score "
        "(loss or accuracy), every round's candidates with their epochs, validation accuracy "
        "and validation loss, what each round kept, the choice, the reason, and the search's "
        "epochs.",
    )
    race: dict[str, Any] | None = Field(
        None,
        description="With source_id \"race\": the contestants (P2L's top k), every round's "
        "trials (source, epochs, validation accuracy and loss), what each round kept, the "
        "winner and why, and the cost against fine-tuning every contestant.",
    )
    baseline: BaselineOut | None = None
    warnings: list[str] = Field(default_factory=list)


class JobOut(BaseModel):
    """A background job and its progress."""

    model_config = ConfigDict(from_attributes=True)

    id: str
    kind: str
    status: JobStatus
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    params: dict[str, Any] = Field(description="What was asked: dataset, source, options.")
    progress: JobProgress
    result: FinetuneReport | EvaluationReport | None = Field(
        description="A fine-tune's report, or an evaluation job's; null until it succeeds."
    )
    error: str | None
    cancel_requested: bool
    model_id: str | None
    attempts: int = Field(description="Runs so far (a job whose worker was lost is re-queued).")
    worker_id: str | None = Field(description="The worker holding (or last holding) the job.")
    estimate: Estimate | None = Field(
        None, description="A fine-tune's expected run time, computed when it was submitted."
    )
    warnings: list[str] = Field(
        default_factory=list,
        description="E.g. a rough estimate, or (while it holds) that no worker is alive to "
        "run the queued job.",
    )


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
    report: FinetuneReport
    registered_source_id: str | None


class PreprocessingOut(BaseModel):
    """How to feed an exported model: what ``preprocessing.json`` of an export holds."""

    architecture: str
    input_size: int = Field(description="Side of the square input, in pixels.")
    mean: list[float] = Field(description="Per channel (R, G, B), on the 0..1 scale.")
    std: list[float] = Field(description="Per channel (R, G, B), on the 0..1 scale.")
    class_names: list[str] = Field(description="Output index i is class_names[i].")
    layout: str = Field(description="Tensor layout of the input: NCHW.")
    color: str = Field(description="Channel order: RGB.")
    scale: str = Field(description="Pixels divided by 255 before normalising.")
    normalize: str
    resize: str = Field(description="The geometric preprocessing, in words.")
    input_name: str = Field(description="The ONNX input's name.")
    output_name: str = Field(description="The ONNX output's name.")
    dtype: str
    output: str


class ArchiveEvaluation(EvaluationReport):
    """An evaluation of an uploaded archive, with the archive members that were not used."""

    rejected: list[RejectedFileOut] = Field(
        default_factory=list, description="The first P2L_MAX_REJECTED_LISTED rejected files."
    )
    rejected_counts: dict[str, int] = Field(
        default_factory=dict, description="Every rejected file, counted by kind."
    )
    rejected_total: int = 0


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


class EvidenceOut(BaseModel):
    """What one successful fine-tune showed: how well a source transferred to a target."""

    model_config = ConfigDict(from_attributes=True)

    id: str
    created_at: datetime
    job_id: str = Field(description="The fine-tune job that left it.")
    target_dataset_id: str = Field(
        description="The target (its signature is kept with the evidence, so the evidence "
        "outlives the dataset)."
    )
    reference_sha256: str = Field(description="The reference network of that signature.")
    source_id: str
    source_name: str
    accuracy: float
    accuracy_split: Literal["test", "validation"] = Field(
        description="test when the job held out a test split, else validation; a target's "
        "sources are compared within one split."
    )
    schedule: dict[str, Any] = Field(description="The schedule the fine-tune trained with.")
    baseline_accuracy: float | None = Field(
        description="The from-scratch baseline's accuracy on the same split, when it ran."
    )


class EvidenceCountsOut(BaseModel):
    """How much evidence finished fine-tunes have left (under the active reference network)."""

    fine_tunes: int = Field(description="Successful fine-tunes recorded.")
    targets: int = Field(description="Distinct target datasets among them.")
    usable_targets: int = Field(
        description="Targets fine-tuned from two or more sources still in the zoo: the only "
        "ones that say anything about a ranking."
    )


class CalibrationRegretOut(BaseModel):
    """Mean regret on the usable targets (best accuracy seen minus the pick's); null without
    a usable target."""

    current: float | None = Field(description="The parameters in force.")
    bundled_defaults: float | None = Field(description="The bundled defaults.")
    refit_in_sample: float | None = Field(
        description="The parameters that fit the evidence best (in-sample: optimistic)."
    )
    refit_leave_one_target_out: float | None = Field(
        description="Each target under parameters refitted on the other targets: what a refit "
        "is worth on a target it did not see."
    )
    candidates: int = Field(description="Parameter sets a refit chooses among.")
    decision: str = Field(
        description="What a refit would do now: it switches only when refitting beats the "
        "parameters in force leave-one-target-out (never on a single usable target)."
    )


class CalibrationOut(BaseModel):
    """The ranking parameters in force, the evidence they can be refitted on, and regrets."""

    calibration_id: str | None = Field(description="null: the bundled defaults apply.")
    created_at: datetime | None
    trigger: Literal["refit", "auto", "reset"] | None = Field(
        description="refit: POST /v1/calibration/refit; auto: after a fine-tune, once "
        "auto_refit_after_targets targets were usable; reset: POST /v1/calibration/reset "
        "(the bundled defaults again)."
    )
    params: dict[str, Any] = Field(
        description="measure and lambda in force (a ranking request may override either); "
        "refine: the second stage rankings run by default (null: none)."
    )
    bundled_defaults: dict[str, Any] = Field(description="measure and lambda of the settings.")
    evidence: EvidenceCountsOut
    regret: CalibrationRegretOut
    fitted_on: dict[str, Any] | None = Field(
        description="The evidence the calibration in force was fitted on, and its regrets then."
    )
    auto_refit_after_targets: int = Field(
        description="P2L_CALIBRATION_AUTO_REFIT_TARGETS (0: refits only when asked)."
    )
    notes: list[str]


class Quotas(BaseModel):
    """A project's quotas in force (null: unlimited)."""

    max_active_jobs: int | None = Field(description="Jobs queued or running at once.")
    max_job_seconds: float | None = Field(description="Longest job estimate accepted.")
    max_storage_bytes: int | None = Field(
        description="Datasets, models, private sources and their pixel cache."
    )
    max_event_streams_per_key: int | None = Field(description="Open event streams per key.")
    requests_per_minute_per_key: int | None = Field(
        description="Requests per key and minute (each API replica counts its own)."
    )


class QuotasPatch(RequestBody):
    """Quotas to set; a quota left out keeps its value, null makes it unlimited."""

    max_active_jobs: int | None = Field(None, ge=0)
    max_job_seconds: float | None = Field(None, ge=0)
    max_storage_bytes: int | None = Field(None, ge=0)
    max_event_streams_per_key: int | None = Field(None, ge=0)
    requests_per_minute_per_key: int | None = Field(None, ge=0)


PROJECT_NAME = Field(
    min_length=1,
    max_length=100,
    pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
    description="Unique; letters, digits, '.', '_' and '-'.",
    examples=["vision-team"],
)


class ProjectCreate(RequestBody):
    """A new project."""

    name: Annotated[str, PROJECT_NAME]
    quotas: QuotasPatch | None = Field(None, description="Quotas other than the defaults.")
    share_evidence: bool = Field(
        False,
        description="Whether its finished fine-tunes' evidence feeds the shared calibration.",
    )


class ProjectPatch(RequestBody):
    """What an operator changes of a project."""

    quotas: QuotasPatch | None = None
    share_evidence: bool | None = None


class ProjectOut(BaseModel):
    """A project."""

    id: str
    name: str
    created_at: datetime
    quotas: Quotas
    share_evidence: bool


class UsageOut(BaseModel):
    """What a project holds and runs now, and its quotas."""

    project_id: str
    active_jobs: int = Field(description="Queued and running jobs.")
    storage_bytes: int = Field(description="Datasets, models, private sources, pixel cache.")
    datasets: int
    sources: int = Field(description="Private sources (the shared zoo is not counted).")
    models: int
    rankings: int
    jobs: int
    quotas: Quotas


class KeyCreate(RequestBody):
    """A new API key of a project."""

    role: RoleName = Field(
        description="viewer (reads), member (creates and deletes), admin (also keys, usage, "
        "audit), operator (service-wide; operators only)."
    )
    name: str = Field(min_length=1, max_length=100, examples=["ci"])
    expires_in_days: float | None = Field(
        None, gt=0, le=3650, description="Stops working this many days from now (null: never)."
    )


class KeyOut(BaseModel):
    """An API key, without the key."""

    model_config = ConfigDict(from_attributes=True)

    id: str
    project_id: str
    name: str
    role: RoleName
    prefix: str = Field(description="The key's first characters, to tell keys apart.")
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None = Field(description="To the minute.")
    revoked_at: datetime | None


class KeyCreated(KeyOut):
    """A new API key: ``key`` is shown this once and never stored."""

    key: str


class WhoAmIOut(BaseModel):
    """Who the request's key acts as."""

    project_id: str
    project_name: str
    role: RoleName
    key_id: str | None = Field(description="Null for an open service or a P2L_API_KEYS key.")
    key_name: str | None
    authenticated: bool = Field(description="False: an open service (no keys), nobody named.")


class AuditOut(BaseModel):
    """One state-changing request."""

    model_config = ConfigDict(from_attributes=True)

    id: str
    created_at: datetime
    key_id: str | None = Field(
        description="The key's id (env:FINGERPRINT for a P2L_API_KEYS key); never the key."
    )
    project_id: str
    action: str = Field(description="Method and route, e.g. DELETE /v1/datasets/{dataset_id}.")
    object_id: str | None
    status: int
    detail: str | None
