"""Service settings: one class, read from the environment (prefix ``P2L_``) or a ``.env`` file."""

import json
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from app.measures import Measure

# The bundled zoo's files (written by bench/zoo, read by app.zoo.bundled and, for the
# learned ranker's starting evidence, by app.services.learning).
BUNDLED_DIR = Path(__file__).parent / "zoo" / "bundled"


class Settings(BaseSettings):
    """Every knob of the service; the docs' configuration page is generated from this class."""

    model_config = SettingsConfigDict(env_prefix="P2L_", env_file=".env", extra="ignore")

    # Storage
    data_dir: Path = Field(
        Path("models_store"), description="Root of the artifact store and default SQLite file."
    )
    database_url: str | None = Field(
        None,
        description="SQLAlchemy URL, e.g. postgresql+psycopg://user:password@host:5432/db; "
        "default: the file p2l.db in the data dir, SQLite in WAL mode.",
    )
    store_url: str | None = Field(
        None,
        description="Where artifacts live: file:///path or s3://bucket/prefix; default the "
        "data dir. With s3, the data dir keeps only a local cache, scratch and SQLite.",
    )
    s3_endpoint_url: str | None = Field(
        None, description="Endpoint of an S3-compatible service (MinIO, ...); default AWS."
    )
    store_reserve_bytes: int = Field(
        100 * 1024**2,
        ge=0,
        description="Free space the store's local disk must keep beyond what a fine-tune will "
        "write (its model's weights, twice): a fine-tune that would leave less is refused "
        "(507) when submitted, and fails before training when its job starts.",
    )

    # Server
    host: str = Field(
        "127.0.0.1",
        description="Bind address of `python -m app` / `p2l-server` (the Docker image sets "
        "0.0.0.0).",
    )
    port: int = Field(8000, description="Port of `python -m app` / `p2l-server`.")
    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated operator keys (service-wide; they act in the default "
        "project unless a request names another with ?project=). With these set, or with "
        "any key made by `python -m app keys create` or POST /v1/projects/{id}/keys, every "
        "/v1 route needs X-API-Key; with none, the service is open (a trusted machine).",
    )

    # Teams: what one project or key may take (defaults of every project's quotas; an
    # operator changes them per project with PATCH /v1/projects/{id}; empty or 'none':
    # unlimited)
    quota_max_active_jobs: int | None = Field(
        4, ge=0, description="Jobs a project may have queued or running at once (429)."
    )
    quota_max_job_seconds: float | None = Field(
        2 * 3600.0,
        ge=0,
        description="Longest estimated run time of a job a project may submit (422 naming "
        "the estimate and the limit).",
    )
    quota_max_storage_bytes: int | None = Field(
        20 * 1024**3,
        ge=0,
        description="Bytes a project may store: its datasets, models, private sources and "
        "their decoded-pixel cache (507 once reached).",
    )
    quota_max_event_streams_per_key: int | None = Field(
        8, ge=0, description="Job event streams one key may hold open at once (429)."
    )
    quota_requests_per_minute_per_key: int | None = Field(
        1200,
        ge=0,
        description="Requests one key may make per minute, counted by each API replica "
        "(429 with Retry-After); not counted on an open service (no keys).",
    )
    claimed_images_cap: int = Field(
        10_000,
        ge=1,
        description="Image count a source registered with an uploaded signature (its counts "
        "claimed, not counted by the service) weighs at most in the size term.",
    )
    ranking_retention_days: float = Field(
        30.0,
        ge=0,
        description="Stored rankings older than this are deleted (jobs keep their own "
        "record of the pick); 0 keeps them for ever.",
    )
    audit_retention_days: float = Field(
        365.0, ge=0, description="Audit log entries older than this are deleted; 0: kept."
    )

    # Compute
    device: str = Field("auto", description="'auto' (CUDA when present), 'cpu', 'cuda', 'cuda:1'…")
    reference_arch: str = Field(
        "compact_cnn",
        description="Reference network: a compact CNN, a torchvision name (resnet50) or, with "
        "the timm extra, timm/ and a timm model name. Changing it makes every stored signature "
        "stale: `python -m app.zoo upgrade` re-signs them.",
    )
    reference_weights: Path | None = Field(
        None,
        description="Safetensors file for the reference network (its head is ignored); "
        "default: the bundled one (compact_cnn), or a seeded random init if it is missing. "
        "`p2l weights convert` turns a PyTorch state dict into one.",
    )
    import_bundled_zoo: bool = Field(
        True, description="On first start with an empty zoo, import the bundled demo sources."
    )

    start_worker: bool = Field(
        True, description="Run a job worker process beside the API (off: run one yourself)."
    )
    runner: Literal["local", "ray"] = Field(
        "local",
        description="Where fine-tunes run: 'local' (a worker process beside the API) or "
        "'ray' (tasks on the Ray cluster at P2L_RAY_ADDRESS; pip install -e '.[ray]').",
    )
    ray_address: str | None = Field(
        None, description="Ray cluster address for P2L_RUNNER=ray (e.g. ray://head:10001)."
    )
    ray_resources: Annotated[dict[str, float], NoDecode] = Field(
        default_factory=dict,
        description='Custom Ray resources each job asks for, JSON (e.g. {"p2l_gpu_pool": 1}).',
    )

    # Jobs (a worker owns a job through a lease it renews; see docs/guide/fine-tuning.md)
    job_lease_seconds: float = Field(
        30.0, gt=0, description="A job whose worker stops renewing for this long is reaped."
    )
    job_max_attempts: int = Field(
        2, ge=1, description="Runs a job gets before a lost lease fails it instead of re-queueing."
    )
    db_retry_seconds: float = Field(
        60.0,
        ge=0,
        description="How long a worker keeps retrying a lost database connection (with "
        "backoff) while its job trains on; past it, the job is handed back (re-queued, the "
        "run not counted) once the database answers again.",
    )
    job_time_limit_seconds: float = Field(
        6 * 3600.0, gt=0, description="A job running longer than this is stopped and failed."
    )
    max_event_streams: int = Field(
        64, ge=1, description="Open job event streams; beyond it: 503 with Retry-After."
    )
    event_stream_idle_seconds: float = Field(
        300.0, gt=0, description="An event stream with no change for this long is closed."
    )

    # P2L score (defaults: see docs/guide/ranking.md, "Calibration")
    p2l_measure: Measure = Field(
        "kl", description="Default distance measure of a ranking: kl, js, cosine or emd."
    )
    p2l_lambda: float = Field(0.005, ge=0, description="Weight of log(source size) in the score.")
    p2l_eps: float = Field(1e-3, gt=0, description="Added to mean features before normalising.")
    emd_gamma: float = Field(0.01, gt=0, description="gamma of exp(-gamma * EMD).")
    learned_min_targets: int = Field(
        5,
        ge=1,
        description="Rankings with method learned fall back to P2L (and say so) until this "
        "many past targets, each with two or more sources of the zoo fine-tuned on it, are "
        "there to learn from (the bundled benchmark's targets count).",
    )
    learned_evidence_wait_seconds: float = Field(
        15.0,
        ge=0,
        description="Where the bundled benchmark's targets' shipped signatures are missing, "
        "they are signed in the background from start-up: rankings in this many seconds after "
        "that began wait for them; later ones go on without them until they are, and say so "
        "in learned.bundled_pending.",
    )
    calibration_auto_refit_targets: int = Field(
        10,
        ge=0,
        description="Refit measure and lambda on the evidence of finished fine-tunes once this "
        "many targets have evidence from two or more sources (and again with each new one); "
        "0: only on POST /v1/calibration/refit.",
    )
    embed_batch_size: int = Field(
        128, ge=1, description="Images per forward pass when computing signatures."
    )
    loader_threads: int = Field(
        0,
        ge=0,
        description="Image-decoding threads for embedding sets too small for the process "
        "pool; 0: half the CPUs (below 128 px, torch gets the rest in the API process).",
    )

    # Upload limits
    max_upload_bytes: int = Field(
        512 * 1024**2, ge=1, description="Request body cap of the upload routes (multipart bodies)."
    )
    max_json_bytes: int = Field(
        1024**2, ge=1, description="Request body cap of every other route (JSON bodies)."
    )
    body_timeout_seconds: float = Field(
        300.0,
        gt=0,
        description="Time a client has to send a request's whole body; slower ones end 408.",
    )
    decode_memory_bytes: int = Field(
        256 * 1024**2,
        ge=1,
        description="Full-size image buffers decoding may hold at once, in the API process "
        "and its decode pool together (a 6,300 x 6,300 image takes 159 MB); beyond it "
        "decodes wait. A job worker has a budget of this size of its own.",
    )
    decode_wait_seconds: float = Field(
        30.0,
        ge=0,
        description="How long a request waits for decode memory before it is answered 503 "
        "with Retry-After (jobs wait as long as it takes).",
    )
    max_archive_members: int = Field(
        50_000, ge=1, description="Members an uploaded archive may hold (422 above)."
    )
    max_uncompressed_bytes: int = Field(
        2 * 1024**3, ge=1, description="Total expanded size of an uploaded archive (422 above)."
    )
    max_compression_ratio: float = Field(
        200.0, gt=1, description="Expanded size / archive size above which an archive is a bomb."
    )
    max_image_bytes: int = Field(
        32 * 1024**2,
        ge=1,
        description="Size of one image file: a larger one is rejected (listed) in an upload, "
        "and refused (413) by predict.",
    )
    max_image_pixels: int = Field(
        40_000_000, ge=1, description="Decompression-bomb guard: larger images are rejected."
    )
    min_images_per_class: int = Field(
        1,
        ge=1,
        description="A class with fewer usable images makes an upload a 422 (fine-tuning "
        "needs 3 per class with the default splits).",
    )
    max_name_bytes: int = Field(
        200, ge=1, le=255, description="Longest class, file or dataset name (UTF-8 bytes)."
    )
    max_rejected_listed: int = Field(
        100, ge=0, description="Rejected files listed with their reason; the rest are counted."
    )
    max_predict_files: int = Field(256, ge=1, description="Images per predict request.")
    evaluate_sync_max_images: int = Field(
        500,
        ge=0,
        description="POST /v1/models/{id}/evaluate answers at once up to this many images; "
        "a larger archive becomes an evaluation job (202).",
    )
    max_source_classes: int = Field(
        10_000, ge=2, description="Largest num_classes a registered source may have."
    )

    # Speed and memory (see docs/benchmarks.md, "Performance"). The CUDA-only switches are
    # ignored on CPU.
    mixed_precision: bool = Field(
        True, description="On CUDA: float16 autocast for embedding and training (off: float32)."
    )
    channels_last: bool = Field(
        True, description="On CUDA: channels-last memory format for convolutions."
    )
    pin_memory: bool = Field(
        True, description="On CUDA: page-locked host batches and non-blocking copies."
    )
    pixel_cache_max_bytes: int = Field(
        2 * 1024**3,
        ge=0,
        description="Decoded-pixel cache in the artifact store (one array per dataset and "
        "input size, so fine-tunes never decode a dataset's files again); least recently "
        "used entries are evicted beyond this many bytes; 0 turns it off.",
    )
    # --- performance settings (#12): helpers add theirs below this line ---
    # (decode)
    decode_processes: bool = Field(
        True,
        description="Decode large uploads (512+ images) for the signature in a pool of "
        "processes, one per CPU (Pillow decoding does not scale on threads); off: threads.",
    )
    # (memory)
    memory_trim_seconds: float = Field(
        1.0,
        ge=0,
        description="How often the API process checks whether to give freed memory back "
        "to the OS (glibc malloc_trim, when RSS is 32 MB above its lowest); 0 turns it off.",
    )
    malloc_arena_max: int = Field(
        2,
        ge=0,
        description="glibc malloc arenas of the API process and the processes it starts "
        "(fewer arenas, less memory kept after a burst); 0: glibc's default, 8 per CPU.",
    )

    @field_validator("ray_resources", mode="before")
    @classmethod
    def _parse_resources(cls, value: object) -> object:
        if isinstance(value, str):
            value = json.loads(value) if value.strip() else {}
        if isinstance(value, dict) and (reserved := {"CPU", "GPU", "memory"} & set(value)):
            # Ray takes these as num_cpus / num_gpus, which the runner sets itself.
            raise ValueError(f"P2L_RAY_RESOURCES may not name {sorted(reserved)}")
        return value

    @field_validator(
        "quota_max_active_jobs",
        "quota_max_job_seconds",
        "quota_max_storage_bytes",
        "quota_max_event_streams_per_key",
        "quota_requests_per_minute_per_key",
        mode="before",
    )
    @classmethod
    def _unlimited(cls, value: object) -> object:
        if isinstance(value, str) and value.strip().lower() in ("", "none", "null"):
            return None
        return value

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        if isinstance(value, str):
            keys = [key.strip() for key in value.split(",") if key.strip()]
            if value and not keys:
                # " , " is a typo, not a wish for an open service.
                raise ValueError(f"P2L_API_KEYS={value!r} holds no key; unset it to run open")
            return keys
        return value

    @property
    def sqlalchemy_url(self) -> str:
        """The database URL in force (SQLite inside the data dir unless overridden)."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'p2l.db').resolve()}"
