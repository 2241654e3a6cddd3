"""Request and response bodies of the HTTP API (separate from the tables)."""

from datetime import datetime
from typing import Annotated, Any, Generic, Literal, Self, TypeVar

from pydantic import BaseModel, ConfigDict, Field, model_validator

from app.finetune.options import FinetuneOptions
from app.finetune.race import RaceOptions
from app.jobs.cost import Estimate
from app.measures import MAX_REFINE_TOP, MEASURES, Measure, RankingMethod, RefineMethod

Item = TypeVar("Item")
ImageCounts = Literal["verified", "claimed"]
RoleName = Literal["viewer", "member", "admin", "operator"]


class Page(BaseModel, Generic[Item]):
    """One page of a listing; pass ``next_page_token`` back as ``page_token`` for the next."""

    items: list[Item] = Field(description="This page's items, newest first.")
    next_page_token: str | None = Field(
        None, description="Pass it as page_token for the next page; null on the last page."
    )


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

    name: str = Field(description="The class: its folder's name in the archive.")
    count: int = Field(description="Images of the class that were kept.")


class SignatureSummary(BaseModel):
    """The shape of a dataset's signature (the vectors are at ``/signature``)."""

    n: int = Field(description="Images the signature was computed from.")
    feature_dim: int = Field(
        description="Length of each of its vectors: the reference network's feature width."
    )
    reference_sha256: str = Field(
        description="sha256 of the reference network's weights it was computed with."
    )


class DatasetOut(BaseModel):
    """A stored dataset."""

    model_config = ConfigDict(from_attributes=True)

    id: str = Field(description="The dataset's id (32 lowercase hex digits).")
    name: str = Field(
        description="Its name, unique in the project (a handle wherever a dataset id goes): "
        "as given at upload, else the archive's file name, numbered if taken."
    )
    created_at: datetime = Field(description="When it was uploaded (UTC).")
    num_images: int = Field(description="Images kept (rejected files are not counted).")
    num_classes: int = Field(description="How many classes it holds.")
    classes: list[ClassCount] = Field(description="Each class and how many images it holds.")
    signature: SignatureSummary = Field(
        description="Its signature's shape; the vectors are at /v1/datasets/{dataset_id}/signature."
    )


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

    name: str = Field(description="The class.")
    count: int = Field(description="Images of the class.")
    mean: list[float] = Field(
        description="Mean reference feature of its images (feature_dim numbers)."
    )


class SignatureOut(BaseModel):
    """Every vector of a dataset signature, in reference-feature space."""

    n: int = Field(description="Images in all.")
    feature_dim: int = Field(
        description="Length of each vector: the reference network's feature width."
    )
    reference_sha256: str = Field(
        description="sha256 of the reference network's weights it was computed with."
    )
    classes: list[SignatureClass] = Field(description="Per-class counts and mean features.")
    mean: list[float] = Field(
        description="Mean reference feature over every image (feature_dim non-negative numbers: "
        "the features come after a ReLU)."
    )
    variance: list[float] = Field(
        description="Per-dimension variance of the features (feature_dim numbers)."
    )


class ReferenceOut(BaseModel):
    """The active reference network."""

    architecture: str = Field(description="Its architecture (a name of GET /v1/architectures).")
    input_size: int = Field(description="Side of the square images it embeds, in pixels.")
    feature_dim: int = Field(
        description="Width of its pooled features: the length of every signature vector."
    )
    weights_sha256: str = Field(description="sha256 of the weights file (or of the init).")
    weights_source: str = Field(
        description="file: and the weights file's name (never its path), or "
        "seeded-random-init: and the seed."
    )
    device: str = Field(description="Where it runs in this service: cpu, cuda or cuda:N.")


class ArchitectureOut(BaseModel):
    """An architecture sources can have: how to feed it and how it is fine-tuned."""

    model_config = ConfigDict(from_attributes=True)

    name: str = Field(description="What `architecture` takes wherever one is asked for.")
    family: str = Field(
        description="Its model family: compact, resnet, mobilenet, vit..., timm (timm models)."
    )
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

    items: list[ArchitectureOut] = Field(description="Every architecture the service builds.")
    timm_version: str | None = Field(
        None,
        description="The timm version installed beside the service; null without it "
        "(pip install 'p2l-service[timm]'). With timm, every model timm.list_models() names "
        "is an architecture too, as timm/ and its name (timm/convnext_tiny), not listed in "
        "`items`: GET /v1/architectures/timm/convnext_tiny describes one.",
    )


class HealthOut(BaseModel):
    """Liveness and readiness."""

    status: str = Field(
        description="ok; degraded when the database does not answer (then the status is 503)."
    )
    database: str = Field(description="ok, or unavailable: and the error's type.")
    version: str = Field(description="The p2l-service package's version.")


class Problem(BaseModel):
    """RFC 9457 problem details: every 4xx/5xx body (``application/problem+json``)."""

    type: str = Field(
        "about:blank",
        description="A URI naming the kind of problem; about:blank: the title says it.",
    )
    title: str = Field(description="The HTTP status's phrase, e.g. Not Found.")
    status: int = Field(description="The HTTP status code.")
    detail: str = Field(
        description="What went wrong with this request, and what to do about it, for a person."
    )
    instance: str = Field(description="The request's path.")


class SourceOut(BaseModel):
    """A source model in the zoo."""

    model_config = ConfigDict(from_attributes=True)

    id: str = Field(description="The source's id (32 lowercase hex digits).")
    name: str = Field(
        description="Its name, unique in the project: a handle wherever a source id goes."
    )
    created_at: datetime = Field(description="When it was registered (UTC).")
    architecture: str = Field(description="Its architecture (a name of GET /v1/architectures).")
    num_classes: int = Field(description="Outputs of its classifier head.")
    input_size: int = Field(description="Side of the square input it runs at, in pixels.")
    class_names: list[str] = Field(description="Its head's classes, in output order.")
    num_images: int = Field(description="Size of the dataset the source was trained on (n_s).")
    class_counts: dict[str, int] = Field(
        description="Images per class of the dataset it was trained on."
    )
    feature_dim: int = Field(
        description="Length of its signature's vectors (the reference network's feature width)."
    )
    reference_sha256: str = Field(
        description="The reference network its signature was computed with; a source signed with "
        "another is excluded from rankings."
    )
    weights_sha256: str = Field(description="sha256 of its safetensors weights file.")
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
        "source's own head; knn (Sorkhei et al. 2025): leave-one-out 5-nearest-neighbour "
        "accuracy of the target's labels on the source's features, 0 to 1."
    )
    top: int = Field(
        3, ge=1, le=MAX_REFINE_TOP, description="How many of the first stage's best to re-rank."
    )


class RankingRequest(RequestBody):
    """What to rank, and how."""

    model_config = ConfigDict(populate_by_name=True, allow_inf_nan=False)

    target_dataset_id: str = Field(
        max_length=255, description="The dataset to rank for: its id or its name."
    )
    method: RankingMethod = Field(
        "p2l",
        description="p2l: similarity and source size; distance: similarity only; largest: "
        "source size only (the paper's two baselines); learned: P2L's scores re-scored by a "
        "ranker learned from past fine-tunes (the bundled benchmark's and the service's own, "
        "up to the calibration in force), or P2L's with the reason where there is too little "
        "to learn from (see `learned` in the answer).",
    )
    measure: Measure | None = Field(
        None,
        description="Distance measure; default P2L_P2L_MEASURE (kl). "
        + "; ".join(f"{info.name}: {info.summary}" for info in MEASURES.values())
        + ".",
    )
    source_ids: list[Annotated[str, Field(max_length=255)]] | None = Field(
        None, max_length=10_000, description="Rank only these sources (ids or names)."
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

    method: RefineMethod = Field(description="The second stage's measure: logme, leep, nce or knn.")
    top: int = Field(description="Sources re-ranked (fewer when fewer were ranked).")
    forward_passes: int = Field(description="One per re-ranked source.")
    images_per_pass: int = Field(description="The target's images, through each source.")
    seconds: float = Field(description="The second stage: decoding, forward passes, scores.")
    first_stage_ms: float = Field(description="The first stage's scoring, over the whole zoo.")


class GainOut(BaseModel):
    """An expected accuracy gain over training from scratch, with its interval."""

    expected: float = Field(description="Expected gain (accuracy points as a fraction).")
    low: float = Field(
        description="Low end of its 90% interval (from the residuals of the model that "
        "predicts it, cross-validated on past targets)."
    )
    high: float = Field(description="High end of its 90% interval.")


class RankedSource(BaseModel):
    """One source in a ranking, with the parts of its score."""

    rank: int = Field(description="1-based position in this ranking (1: the pick).")
    source_id: str = Field(description="The source's id.")
    name: str = Field(description="The source's name (empty: deleted since the ranking).")
    score: float = Field(
        description="What the first stage orders by: size_term - distance (p2l), -distance "
        "(distance), log(n_source) (largest), or the learned ranker's score (learned: "
        "standard deviations below the best expected on this target; distance, similarity "
        "and size_term stay P2L's); higher is better."
    )
    distance: float = Field(description="D(target, source) under the measure.")
    similarity: float = Field(description="exp(-distance).")
    size_term: float = Field(
        description="lambda * log(n_source); a claimed count weighs at most as "
        "P2L_CLAIMED_IMAGES_CAP images."
    )
    num_images: int = Field(
        description="Images of the dataset the source was trained on (n_source)."
    )
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
    p2l_rank: int | None = Field(
        None, description="Learned rankings: the source's rank by P2L before re-scoring."
    )
    gain: GainOut | None = Field(
        None,
        description="The top 3 results: the accuracy gain over training from scratch that "
        "fine-tuning this source is expected to bring, learned from past targets (null: "
        "nothing to learn it from).",
    )


class CoverageOut(BaseModel):
    """How well the zoo covers the target, judged against the past targets."""

    covered: bool | None = Field(
        description="false: the target's nearest source is farther than most past targets' "
        "nearest sources were (see recommendation); null: no past target to judge by."
    )
    nearest_source_id: str = Field(
        description="The source nearest to the target among those it was ranked over (with "
        "top_k it may not be among the results)."
    )
    nearest_distance: float = Field(description="Its Jensen-Shannon distance to the target.")
    percentile: float | None = Field(
        description="Share of past targets whose nearest source was at most this far."
    )
    past_targets: int = Field(description="Past targets it is judged against.")
    recommendation: str | None = Field(description="What to do where the zoo covers it poorly.")


class LearnedOut(BaseModel):
    """What a learned ranking learned from, or the fallback it used."""

    used: bool = Field(description="true: learned scores; false: P2L's (see fallback).")
    targets: int = Field(
        description="Past targets it learned from (each with two or more of the service's "
        "sources fine-tuned on it)."
    )
    jobs: int = Field(description="The service's finished fine-tunes among that evidence.")
    bundled_targets: int = Field(description="The bundled benchmark's targets among it.")
    min_targets: int = Field(description="Past targets it needs (P2L_LEARNED_MIN_TARGETS).")
    calibration_id: str | None = Field(
        description="The calibration up to which the service's fine-tunes count (null: none "
        "yet; only the bundled evidence)."
    )
    without_record: int = Field(
        description="Sources no past target tried: scored from their distances and size alone."
    )
    bundled_pending: str | None = Field(
        None,
        description="Why the bundled benchmark's targets are not among the evidence yet (where "
        "their shipped signatures are missing, they are signed in the background from "
        "start-up).",
    )
    fallback: str | None = Field(description="Why P2L's scores were kept, when they were.")


class ExcludedSource(BaseModel):
    """A source left out of a ranking, and why."""

    source_id: str = Field(description="The source's id.")
    name: str = Field(description="The source's name.")
    reason: str = Field(description="Why it could not be ranked, and how to fix that.")


class RankingOut(BaseModel):
    """A stored ranking."""

    id: str = Field(description="The ranking's id (32 lowercase hex digits).")
    created_at: datetime = Field(description="When it was computed (UTC).")
    target_dataset_id: str = Field(description="The dataset the sources were ranked for.")
    method: str = Field(description="p2l, distance, largest or learned (see POST /v1/rankings).")
    measure: str = Field(description="The distance measure: kl, js, cosine or emd.")
    params: dict[str, float] = Field(
        description="The constants the scores were computed with: lambda, eps and emd_gamma."
    )
    results: list[RankedSource] = Field(
        description="The ranked sources, best first (the best top_k when it was asked for)."
    )
    excluded: list[ExcludedSource] = Field(description="Sources left out of the ranking, and why.")
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
    learned: LearnedOut | None = Field(
        None, description="Method learned: what the ranker learned from, or its fallback."
    )
    coverage: CoverageOut | None = Field(
        None,
        description="How well the zoo covers the target (null: nothing was ranked, or a "
        "ranking made before this field existed).",
    )


class RankingSummary(BaseModel):
    """A past ranking without its results: what ``GET /v1/rankings`` lists (the whole
    ranking is at ``GET /v1/rankings/{ranking_id}``)."""

    id: str = Field(description="The ranking's id (32 lowercase hex digits).")
    created_at: datetime = Field(description="When it was computed (UTC).")
    target_dataset_id: str = Field(
        description="The dataset the sources were ranked for (it may have been deleted since)."
    )
    method: str = Field(description="p2l, distance, largest or learned (see POST /v1/rankings).")
    measure: str = Field(description="The distance measure: kl, js, cosine or emd.")
    refine_method: RefineMethod | None = Field(
        description="A two-stage ranking's second stage: logme, leep, nce or knn; null: one stage."
    )
    calibration_id: str | None = Field(
        description="The calibration whose measure or lambda it used; null: the bundled "
        "defaults, or the request's own."
    )
    num_results: int = Field(description="Sources ranked (at most the request's top_k).")
    num_excluded: int = Field(description="Sources left out of it (see `excluded` there).")
    top_source_id: str | None = Field(
        description="The source ranked first, the pick; null when nothing was ranked."
    )
    top_source_name: str | None = Field(
        description="Its name when the ranking was made; null when nothing was ranked."
    )
    top_score: float | None = Field(
        description="Its first-stage score (see RankedSource.score); null when nothing was ranked."
    )
    source_rank: int | None = Field(
        None,
        description="Listed with `source_id`: that source's rank in this ranking (1: the "
        "pick); null otherwise.",
    )


class FinetuneRequest(FinetuneOptions):
    """Fine-tune a source on a target dataset, with layer-wise learning rates."""

    target_dataset_id: str = Field(
        max_length=255, description="The dataset to fine-tune on: its id or its name."
    )
    source_id: str = Field(
        "best",
        max_length=255,
        description='A source\'s id or name; "best": the top of the P2L ranking for the '
        'target; "race": short fine-tunes of P2L\'s top sources under successive halving '
        "pick it (see race).",
    )
    model_name: str | None = Field(
        None,
        min_length=1,
        max_length=200,
        description="The model's name, unique in the project (a name it holds already: 409; "
        "not 32 hex digits); default: `TARGET-from-SOURCE` (the dataset's and the source's "
        "names), numbered (`-2`) where the project holds it.",
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
        description="The new source's name, unique in the project (a name it holds already: "
        "409); default: the model's name, numbered (`-2`) where a source holds it.",
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
    train_loss: float = Field(description="Mean training loss over the epoch.")
    train_accuracy: float = Field(
        description="Share of training images classified right during the epoch (0 to 1)."
    )
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
    step: int | None = Field(None, description="Training step within the current epoch.")
    steps_per_epoch: int | None = Field(
        None, description="Training steps per epoch of the current phase."
    )
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

    group: str = Field(
        description="The layer group's name (GET /v1/architectures lists them, input to head)."
    )
    parameters: int = Field(description="Parameters in the group.")
    lr: float = Field(description="The learning rate it trained at (0: frozen).")
    frozen: bool = Field(
        description="True when it did not train (below freeze_below, or a multiplier of 0)."
    )


class ScheduleOut(BaseModel):
    """The layer-wise learning-rate schedule that trained the final model."""

    base_lr: float = Field(description="The new head's learning rate.")
    decay: float = Field(description="Group k below the head trained at base_lr * decay^k.")
    multipliers: list[float] | None = Field(
        description="Explicit per-group multipliers of base_lr, input to head (null: decay's)."
    )
    freeze_below: int = Field(description="Groups below this index did not train (0: none frozen).")
    chosen_by: Literal["auto", "manual"] = Field(
        description="auto: the search picked it; manual: the request set it."
    )
    reason: str = Field(
        "", description="Why this schedule ran: auto's winning score and search, or manual."
    )


class ClassMetrics(BaseModel):
    """Precision, recall and F1 of one class."""

    precision: float | None = Field(description="null when nothing was predicted as the class.")
    recall: float | None = Field(description="null when the split holds no image of the class.")
    f1: float | None = Field(
        description="Harmonic mean of precision and recall; null when either is."
    )
    support: int = Field(description="Images of the class in the split.")


class MisclassifiedImage(BaseModel):
    """An image the model got wrong."""

    image: str = Field(description="Its name: class/file within the dataset or archive.")
    true_label: str = Field(description="The class it belongs to.")
    predicted_label: str = Field(description="The class the model gave it.")
    confidence: float = Field(description="Probability the model gave its (wrong) label.")


class EvaluationReport(BaseModel):
    """How a model does on a labelled split: per-class metrics and what it got wrong."""

    split: str = Field(description="What the figures are computed on: test, validation, archive.")
    images: int = Field(description="Images evaluated.")
    accuracy: float = Field(description="Share classified right (0 to 1).")
    macro_f1: float = Field(
        description="F1 averaged over the classes where it is defined, each weighing the same."
    )
    per_class: dict[str, ClassMetrics] = Field(
        description="Precision, recall, F1 and support, by class name."
    )
    confusion_matrix: list[list[int]] = Field(
        description="Rows: true class, columns: predicted class, in class_names order."
    )
    class_names: list[str] = Field(description="The classes, in the model's output order.")
    misclassified: list[MisclassifiedImage] = Field(
        description="The misclassified images, most confident first (at most 100)."
    )
    misclassified_total: int = Field(
        description="Images misclassified in all (the list holds at most 100)."
    )


class BaselineOut(BaseModel):
    """The same architecture trained from scratch on the same split (no transfer)."""

    test_accuracy: float | None = Field(None, description="On the test split; null without one.")
    val_accuracy: float | None = Field(
        None, description="On the validation split; null without one."
    )
    epochs_run: int = Field(description="Epochs it trained (early stopping may end it sooner).")
    seconds: float = Field(description="Its training time.")
    transfer_gain: float | None = Field(None, description="Fine-tuned minus from scratch.")
    transfer_gain_split: str | None = Field(
        None, description="The split transfer_gain compares on: test or validation."
    )
    history: list[EpochMetrics] = Field(
        default_factory=list,
        description="Every epoch of the from-scratch training, in order (empty in reports "
        "of earlier releases).",
    )


class FinetuneReport(BaseModel):
    """What a fine-tune produced: the job's result and the model's report.

    Defaults stand for what reports of earlier releases did not record (no test split, no
    evaluation), so every stored report stays readable.
    """

    model_config = ConfigDict(extra="allow")

    model_id: str = Field(description="The model the job saved.")
    schedule: ScheduleOut = Field(
        description="The layer-wise learning-rate schedule the final model trained with."
    )
    groups: list[GroupOut] = Field(
        description="Every layer group, input to head: its size and learning rate."
    )
    history: list[EpochMetrics] = Field(description="Every epoch of every phase, in order.")
    test_accuracy: float | None = Field(None, description="On the test split, which chose nothing.")
    val_accuracy: float | None = Field(
        description="On the validation split, which chose the schedule and the checkpoint."
    )
    evaluated_on: Literal["test", "validation", "none"] = Field(
        "validation", description="The split of per_class_accuracy and confusion_matrix."
    )
    per_class_accuracy: dict[str, float | None] = Field(
        description="Accuracy per class on evaluated_on's split (null: no image of the class "
        "there)."
    )
    confusion_matrix: list[list[int]] = Field(
        description="On evaluated_on's split: rows true class, columns predicted class."
    )
    evaluation: EvaluationReport | None = Field(
        None, description="Per-class precision, recall, F1 and misclassified images."
    )
    train_images: int = Field(description="Images of the training split.")
    val_images: int = Field(description="Images of the validation split.")
    test_images: int = Field(0, description="Images of the test split (0: none held out).")
    seconds: float = Field(description="The whole job's run time.")
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
    baseline: BaselineOut | None = Field(
        None, description="The same architecture from scratch, when baseline was asked for."
    )
    warnings: list[str] = Field(
        default_factory=list,
        description="What the run noticed that a reader should know, e.g. a split too small.",
    )


class JobOut(BaseModel):
    """A background job and its progress."""

    model_config = ConfigDict(from_attributes=True)

    id: str = Field(description="The job's id (32 lowercase hex digits).")
    kind: str = Field(description="finetune or evaluate.")
    status: JobStatus = Field(description="queued, running, succeeded, failed or cancelled.")
    created_at: datetime = Field(description="When it was submitted (UTC).")
    started_at: datetime | None = Field(
        description="When a worker first took it (null while queued)."
    )
    finished_at: datetime | None = Field(description="When it ended (null until then).")
    params: dict[str, Any] = Field(description="What was asked: dataset, source, options.")
    progress: JobProgress = Field(
        description="Where it stands: phase, epochs done of planned, metrics so far, ETA."
    )
    result: FinetuneReport | EvaluationReport | None = Field(
        description="A fine-tune's report, or an evaluation job's; null until it succeeds."
    )
    error: str | None = Field(description="Why it failed (null unless it failed).")
    cancel_requested: bool = Field(
        description="A cancel was asked for: a running job stops before its next step."
    )
    model_id: str | None = Field(
        description="The model a fine-tune saved (null until it succeeds)."
    )
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

    id: str = Field(description="The model's id (32 lowercase hex digits).")
    name: str = Field(
        description="Its name, unique in the project: a handle wherever a model id goes."
    )
    created_at: datetime = Field(description="When its job saved it (UTC).")
    job_id: str = Field(description="The fine-tune job that produced it.")
    source_id: str = Field(description="The source it was fine-tuned from.")
    target_dataset_id: str = Field(description="The dataset it was fine-tuned on.")
    architecture: str = Field(description="Its architecture: the source's.")
    input_size: int = Field(description="Side of the square input, in pixels.")
    class_names: list[str] = Field(description="Its classes (the target's), in output order.")
    report: FinetuneReport = Field(
        description="What the fine-tune produced: schedule, history, accuracy, confusion matrix."
    )
    registered_source_id: str | None = Field(
        description="The source registered from it (null: none)."
    )


class PreprocessingOut(BaseModel):
    """How to feed an exported model: what ``preprocessing.json`` of an export holds."""

    architecture: str = Field(description="The model's architecture.")
    input_size: int = Field(description="Side of the square input, in pixels.")
    mean: list[float] = Field(description="Per channel (R, G, B), on the 0..1 scale.")
    std: list[float] = Field(description="Per channel (R, G, B), on the 0..1 scale.")
    class_names: list[str] = Field(description="Output index i is class_names[i].")
    layout: str = Field(description="Tensor layout of the input: NCHW.")
    color: str = Field(description="Channel order: RGB.")
    scale: str = Field(description="Pixels divided by 255 before normalising.")
    normalize: str = Field(
        description="The normalisation, in words: (pixel / 255 - mean) / std, per channel."
    )
    resize: str = Field(description="The geometric preprocessing, in words.")
    input_name: str = Field(description="The ONNX input's name.")
    output_name: str = Field(description="The ONNX output's name.")
    dtype: str = Field(description="The input's element type: float32.")
    output: str = Field(description="What the model outputs: logits (softmax gives probabilities).")


class ArchiveEvaluation(EvaluationReport):
    """An evaluation of an uploaded archive, with the archive members that were not used."""

    rejected: list[RejectedFileOut] = Field(
        default_factory=list, description="The first P2L_MAX_REJECTED_LISTED rejected files."
    )
    rejected_counts: dict[str, int] = Field(
        default_factory=dict, description="Every rejected file, counted by kind."
    )
    rejected_total: int = Field(0, description="How many files were rejected in all.")


class LabelScore(BaseModel):
    """One candidate label of a prediction."""

    label: str = Field(description="A class name of the model.")
    probability: float = Field(description="The model's probability for it (softmax, 0 to 1).")


class Prediction(BaseModel):
    """Top-k labels for one uploaded image."""

    filename: str = Field(description="The uploaded file's name.")
    top: list[LabelScore] = Field(description="The top_k labels, most probable first.")


class PredictionsOut(BaseModel):
    """Predictions for every uploaded image, in upload order."""

    model_id: str = Field(description="The model that predicted.")
    predictions: list[Prediction] = Field(description="One per uploaded image, in upload order.")


class EvidenceOut(BaseModel):
    """What one successful fine-tune showed: how well a source transferred to a target."""

    model_config = ConfigDict(from_attributes=True)

    id: str = Field(description="The evidence's id (32 lowercase hex digits).")
    created_at: datetime = Field(description="When the fine-tune left it (UTC).")
    job_id: str = Field(description="The fine-tune job that left it.")
    target_dataset_id: str = Field(
        description="The target (its signature is kept with the evidence, so the evidence "
        "outlives the dataset)."
    )
    reference_sha256: str = Field(description="The reference network of that signature.")
    source_id: str = Field(description="The source that was fine-tuned.")
    source_name: str = Field(description="Its name then.")
    accuracy: float = Field(
        description="The fine-tuned model's accuracy on accuracy_split (0 to 1)."
    )
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
    created_at: datetime | None = Field(
        description="When the calibration in force was made (null: the bundled defaults)."
    )
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
    evidence: EvidenceCountsOut = Field(
        description="How much evidence finished fine-tunes have left."
    )
    regret: CalibrationRegretOut = Field(
        description="Mean regret on that evidence of the parameters in force, the defaults and a "
        "refit."
    )
    fitted_on: dict[str, Any] | None = Field(
        description="The evidence the calibration in force was fitted on, and its regrets then."
    )
    auto_refit_after_targets: int = Field(
        description="P2L_CALIBRATION_AUTO_REFIT_TARGETS (0: refits only when asked)."
    )
    notes: list[str] = Field(
        description="Limits of the calibration, in words (e.g. that the second stage is not "
        "refitted)."
    )


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

    max_active_jobs: int | None = Field(
        None, ge=0, description="Jobs the project may have queued or running at once."
    )
    max_job_seconds: float | None = Field(
        None, ge=0, description="Longest estimated run time of a job it may start, in seconds."
    )
    max_storage_bytes: int | None = Field(
        None,
        ge=0,
        description="Bytes it may store: datasets, models, private sources, pixel cache.",
    )
    max_event_streams_per_key: int | None = Field(
        None, ge=0, description="Job event streams one of its keys may hold open at once."
    )
    requests_per_minute_per_key: int | None = Field(
        None, ge=0, description="Requests per key and minute (each API replica counts its own)."
    )


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
        False, description="Whether its finished fine-tunes' evidence feeds the shared calibration."
    )


class ProjectPatch(RequestBody):
    """What an operator changes of a project."""

    quotas: QuotasPatch | None = Field(
        None, description="Quotas to change; those left out (or all, when this is) keep theirs."
    )
    share_evidence: bool | None = Field(
        None,
        description="Whether its finished fine-tunes' evidence feeds the shared calibration; "
        "null or left out: unchanged.",
    )


class ProjectOut(BaseModel):
    """A project."""

    id: str = Field(description="The project's id (32 lowercase hex digits).")
    name: str = Field(description="Its unique name.")
    created_at: datetime = Field(description="When it was created (UTC).")
    quotas: Quotas = Field(
        description="Its quotas in force: its own where set, else the service's defaults."
    )
    share_evidence: bool = Field(
        description="Whether its finished fine-tunes' evidence feeds the shared calibration."
    )


class UsageOut(BaseModel):
    """What a project holds and runs now, and its quotas."""

    project_id: str = Field(description="The project.")
    active_jobs: int = Field(description="Queued and running jobs.")
    storage_bytes: int = Field(description="Datasets, models, private sources, pixel cache.")
    datasets: int = Field(description="Datasets it holds.")
    sources: int = Field(description="Private sources (the shared zoo is not counted).")
    models: int = Field(description="Fine-tuned models it holds.")
    rankings: int = Field(description="Rankings it has stored.")
    jobs: int = Field(description="Jobs of every status.")
    quotas: Quotas = Field(description="Its quotas in force.")


class KeyCreate(RequestBody):
    """A new API key of a project."""

    role: RoleName = Field(
        description="viewer (reads), member (creates and deletes), admin (also keys, usage, "
        "audit), operator (service-wide; operators only)."
    )
    name: str = Field(
        min_length=1,
        max_length=100,
        description="What the key is for, shown in key listings and by /v1/whoami.",
        examples=["ci"],
    )
    expires_in_days: float | None = Field(
        None, gt=0, le=3650, description="Stops working this many days from now (null: never)."
    )


class KeyOut(BaseModel):
    """An API key, without the key."""

    model_config = ConfigDict(from_attributes=True)

    id: str = Field(
        description="The key's id (not the key): what revoking it and the audit log name."
    )
    project_id: str = Field(description="The project it acts in.")
    name: str = Field(description="What it is for.")
    role: RoleName = Field(description="viewer, member, admin or operator.")
    prefix: str = Field(description="The key's first characters, to tell keys apart.")
    created_at: datetime = Field(description="When it was created (UTC).")
    expires_at: datetime | None = Field(description="When it stops working (null: never).")
    last_used_at: datetime | None = Field(description="To the minute.")
    revoked_at: datetime | None = Field(description="When it was revoked (null: it was not).")


class KeyCreated(KeyOut):
    """A new API key: ``key`` is shown this once and never stored."""

    key: str = Field(
        description="The key itself: send it as X-API-Key. Shown this once; only its SHA-256 is "
        "kept."
    )


class WhoAmIOut(BaseModel):
    """Who the request's key acts as."""

    project_id: str = Field(description="The project requests act in.")
    project_name: str = Field(description="Its name.")
    role: RoleName = Field(description="The key's role there (an open service: operator).")
    key_id: str | None = Field(description="Null for an open service or a P2L_API_KEYS key.")
    key_name: str | None = Field(
        description="The key's name; env: and a fingerprint for a P2L_API_KEYS key; null for an "
        "open service."
    )
    authenticated: bool = Field(description="False: an open service (no keys), nobody named.")


class AuditOut(BaseModel):
    """One state-changing request."""

    model_config = ConfigDict(from_attributes=True)

    id: str = Field(description="The entry's id.")
    created_at: datetime = Field(description="When the request was answered (UTC).")
    key_id: str | None = Field(
        description="The key's id (env:FINGERPRINT for a P2L_API_KEYS key); never the key."
    )
    project_id: str = Field(description="The project the request acted in.")
    action: str = Field(description="Method and route, e.g. DELETE /v1/datasets/{dataset_id}.")
    object_id: str | None = Field(
        description="The id the request named or created, when it had one."
    )
    status: int = Field(description="The HTTP status it was answered with.")
    detail: str | None = Field(
        description="More about some actions, e.g. what deleting a project removed."
    )
