"""SQLAlchemy tables (metadata only; files live in the artifact store)."""

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Dialect,
    Enum,
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    PrimaryKeyConstraint,
    String,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    """Declarative base of every table."""


# The project every install has: where single-user mode works, and where the rows of an
# install from before projects landed (revision 0010).
DEFAULT_PROJECT_ID = "0" * 32
DEFAULT_PROJECT_NAME = "default"


def stored_bytes_column() -> Mapped[int | None]:
    """Bytes of a row's files in the store, counted when they were published (what its
    project's storage quota counts; None: stored before revision 0010, counted on demand)."""
    return mapped_column(BigInteger, nullable=True, default=None)


def project_column() -> Mapped[str]:
    """The owning project of a row: what a request of another project never sees (no
    foreign key: SQLite cannot add one to an existing table, and deleting a project deletes
    its rows and files in ``app.services.projects``, not by cascade)."""
    return mapped_column(String(32), index=True)


# Characters of a dataset's, source's or model's name (its handle: app.services.handles).
NAME_CHARS = 200


def unique_name_per_project(table: str) -> UniqueConstraint:
    """A name is a handle (``app.services.handles``): one row of a kind per name and project,
    held by the database too, so two concurrent creates of one name cannot both land."""
    return UniqueConstraint("project_id", "name", name=f"uq_{table}_project_name")


def utcnow() -> datetime:
    """Timezone-aware now, in UTC."""
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite drops the zone on its own)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value


class Dataset(Base):
    """An uploaded, validated image dataset and the summary of its signature."""

    __tablename__ = "datasets"
    __table_args__ = (unique_name_per_project("datasets"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    project_id: Mapped[str] = project_column()
    name: Mapped[str] = mapped_column(String(NAME_CHARS))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    num_images: Mapped[int] = mapped_column(Integer)
    class_counts: Mapped[dict[str, int]] = mapped_column(JSON)
    rejected: Mapped[list[dict[str, Any]]] = mapped_column(JSON)  # the first listed ones
    # Every rejected file, by kind and in all (None: stored before revision 0005).
    rejected_counts: Mapped[dict[str, int] | None] = mapped_column(JSON, nullable=True)
    rejected_total: Mapped[int | None] = mapped_column(Integer, nullable=True)
    feature_dim: Mapped[int] = mapped_column(Integer)
    reference_sha256: Mapped[str] = mapped_column(String(64))
    artifact_key: Mapped[str] = mapped_column(String(200))
    stored_bytes: Mapped[int | None] = stored_bytes_column()


class Source(Base):
    """A pretrained model in the zoo, with the signature of the data it was trained on."""

    __tablename__ = "sources"
    __table_args__ = (unique_name_per_project("sources"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    project_id: Mapped[str] = project_column()
    name: Mapped[str] = mapped_column(String(NAME_CHARS))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    architecture: Mapped[str] = mapped_column(String(64))
    num_classes: Mapped[int] = mapped_column(Integer)
    input_size: Mapped[int] = mapped_column(Integer)
    class_names: Mapped[list[str]] = mapped_column(JSON)
    num_images: Mapped[int] = mapped_column(Integer)
    class_counts: Mapped[dict[str, int]] = mapped_column(JSON)
    feature_dim: Mapped[int] = mapped_column(Integer)
    reference_sha256: Mapped[str] = mapped_column(String(64))
    weights_sha256: Mapped[str] = mapped_column(String(64))
    dataset_id: Mapped[str | None] = mapped_column(
        String(32), ForeignKey("datasets.id", ondelete="SET NULL"), nullable=True
    )
    origin: Mapped[str] = mapped_column(String(16))
    artifact_key: Mapped[str] = mapped_column(String(200))
    stored_bytes: Mapped[int | None] = stored_bytes_column()
    # The fine-tuned model this source was registered from: unique, so a model becomes at
    # most one source even under concurrent requests.
    model_id: Mapped[str | None] = mapped_column(String(32), nullable=True, unique=True)
    # In the shared zoo (every project ranks over it; only operators change it), or private
    # to its project.
    shared: Mapped[bool] = mapped_column(Boolean, default=False)
    # How its image counts were known: 'verified' (the service counted the images: a
    # dataset, a fine-tuned model's target, the bundled zoo) or 'claimed' (an uploaded
    # signature's word; its size term is capped by P2L_CLAIMED_IMAGES_CAP).
    image_counts: Mapped[str] = mapped_column(String(16), default="verified")


class Ranking(Base):
    """One ranking of sources for a target, kept so it can be re-read and plotted."""

    __tablename__ = "rankings"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    project_id: Mapped[str] = project_column()
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    target_dataset_id: Mapped[str] = mapped_column(String(32))
    method: Mapped[str] = mapped_column(String(16))
    measure: Mapped[str] = mapped_column(String(16))
    params: Mapped[dict[str, Any]] = mapped_column(JSON)
    results: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    excluded: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    # A two-stage ranking's second stage: method, shortlist size and what it cost.
    refine: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True, default=None)
    # The calibration whose measure or lambda it used; None: the bundled defaults.
    calibration_id: Mapped[str | None] = mapped_column(String(32), nullable=True, default=None)
    # Method "learned": what the ranker learned from, or the fallback it used.
    learned: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True, default=None)
    # How well the zoo covers the target, against the past targets (app.p2l.learned).
    coverage: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True, default=None)


class JobStatus(StrEnum):
    """Where a job is in its life; the values are what the API and the database hold."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL_STATUSES = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})


class Job(Base):
    """A background job (fine-tuning); its state survives restarts of the service."""

    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    project_id: Mapped[str] = project_column()
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    kind: Mapped[str] = mapped_column(String(32))
    # Stored as the status's plain string (VARCHAR, no database enum): the values are the API's.
    status: Mapped[JobStatus] = mapped_column(
        Enum(
            JobStatus,
            native_enum=False,
            create_constraint=False,
            length=16,
            values_callable=lambda statuses: [status.value for status in statuses],
        ),
        index=True,
    )
    params: Mapped[dict[str, Any]] = mapped_column(JSON)
    progress: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    error: Mapped[str | None] = mapped_column(String(2000), nullable=True)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    # No longer written (a worker's pid is in its heartbeat row, workers.pid). The column
    # stays one release, so a replica of the previous release, which reads and writes it,
    # can run beside this one during a rolling upgrade; a later migration drops it.
    worker_pid: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # Lease: the worker that claimed the job renews lease_expires_at while it runs; an
    # expired lease is reaped (re-queued while attempts < P2L_JOB_MAX_ATTEMPTS, else failed).
    worker_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    model_id: Mapped[str | None] = mapped_column(String(32), nullable=True)

    @property
    def estimate(self) -> dict[str, Any] | None:
        """What the job was expected to cost when it was submitted (a fine-tune's)."""
        estimate: dict[str, Any] | None = (self.params or {}).get("estimate")
        return estimate

    @property
    def warnings(self) -> list[str]:
        """The warnings given when the job was submitted (e.g. a rough estimate)."""
        warnings: list[str] = (self.params or {}).get("warnings", [])
        return warnings


class FinetunedModel(Base):
    """A model produced by a fine-tuning job: weights in the store, report here."""

    __tablename__ = "models"
    __table_args__ = (unique_name_per_project("models"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    project_id: Mapped[str] = project_column()
    name: Mapped[str] = mapped_column(String(NAME_CHARS))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    job_id: Mapped[str] = mapped_column(String(32))
    source_id: Mapped[str] = mapped_column(String(32))
    target_dataset_id: Mapped[str] = mapped_column(String(32))
    architecture: Mapped[str] = mapped_column(String(64))
    input_size: Mapped[int] = mapped_column(Integer)
    class_names: Mapped[list[str]] = mapped_column(JSON)
    report: Mapped[dict[str, Any]] = mapped_column(JSON)
    artifact_key: Mapped[str] = mapped_column(String(200))
    stored_bytes: Mapped[int | None] = stored_bytes_column()
    registered_source_id: Mapped[str | None] = mapped_column(String(32), nullable=True)


class IdempotencyKey(Base):
    """A client's Idempotency-Key and the resource its first request created."""

    __tablename__ = "idempotency_keys"
    __table_args__ = (PrimaryKeyConstraint("scope", "key"),)

    # Which route and project, e.g. "finetunes:<project id>": projects' keys never meet.
    scope: Mapped[str] = mapped_column(String(80))
    key: Mapped[str] = mapped_column(String(200))
    request_sha256: Mapped[str] = mapped_column(String(64))
    resource_id: Mapped[str | None] = mapped_column(String(32), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ZooChange(Base):
    """One change to the zoo; replicas replay the rows past their index's version."""

    __tablename__ = "zoo_changes"

    # Autoincrement, never deleted: SQLite and PostgreSQL never hand out a seq twice.
    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    source_id: Mapped[str] = mapped_column(String(32))
    op: Mapped[str] = mapped_column(String(8))  # 'add' (or re-signed) | 'remove'
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Worker(Base):
    """A job worker (local process, standalone or Ray task) and its heartbeat.

    A worker upserts its row every few seconds, idle or busy; one whose ``last_seen`` is
    recent counts as alive. A worker that exits cleanly deletes its row.
    """

    __tablename__ = "workers"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # the jobs' worker_id
    kind: Mapped[str] = mapped_column(String(16))  # local | standalone | ray
    host: Mapped[str] = mapped_column(String(200))
    pid: Mapped[int] = mapped_column(Integer)
    device: Mapped[str] = mapped_column(String(64))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_seen: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    job_id: Mapped[str | None] = mapped_column(String(32), nullable=True)  # running now
    jobs_run: Mapped[int] = mapped_column(Integer, default=0)


class Throughput(Base):
    """Training and evaluation speed workers measured, per architecture, input size, device.

    Running averages (recent epochs weigh more); estimates of new jobs are computed from them.
    """

    __tablename__ = "worker_throughput"
    __table_args__ = (PrimaryKeyConstraint("architecture", "input_size", "device"),)

    architecture: Mapped[str] = mapped_column(String(64))
    input_size: Mapped[int] = mapped_column(Integer)
    device: Mapped[str] = mapped_column(String(64))  # cpu, cuda, mps (the device type)
    train_images_per_second: Mapped[float] = mapped_column(Float)
    eval_images_per_second: Mapped[float | None] = mapped_column(Float, nullable=True)
    # Time of a job outside its training epochs (loading, final evaluation, saving), per image.
    overhead_seconds_per_image: Mapped[float | None] = mapped_column(Float, nullable=True)
    epochs_measured: Mapped[int] = mapped_column(Integer, default=0)
    jobs_measured: Mapped[int] = mapped_column(Integer, default=0)
    worker_id: Mapped[str] = mapped_column(String(64))  # who measured last
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Evidence(Base):
    """What one successful fine-tune showed: how well a source transferred to a target.

    The target's signature is copied here: the evidence outlives the dataset.
    """

    __tablename__ = "evidence"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    project_id: Mapped[str] = project_column()
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    job_id: Mapped[str] = mapped_column(String(32), unique=True)
    target_dataset_id: Mapped[str] = mapped_column(String(32), index=True)
    target_signature: Mapped[bytes] = mapped_column(LargeBinary)
    reference_sha256: Mapped[str] = mapped_column(String(64))
    source_id: Mapped[str] = mapped_column(String(32))
    source_name: Mapped[str] = mapped_column(String(200))
    accuracy: Mapped[float] = mapped_column(Float)
    accuracy_split: Mapped[str] = mapped_column(String(16))  # test | validation
    schedule: Mapped[dict[str, Any]] = mapped_column(JSON)
    baseline_accuracy: Mapped[float | None] = mapped_column(Float, nullable=True)


class Calibration(Base):
    """Ranking parameters refitted on the evidence; the newest one is in force."""

    __tablename__ = "calibrations"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    # Fitted on signatures of this reference network: in force only while it is active.
    reference_sha256: Mapped[str] = mapped_column(String(64))
    measure: Mapped[str] = mapped_column(String(16))
    lam: Mapped[float] = mapped_column(Float)
    trigger: Mapped[str] = mapped_column(String(16))  # refit (asked for) | auto
    # What it was fitted on, and how it scored (see app.p2l.calibration).
    evidence_count: Mapped[int] = mapped_column(Integer)
    targets: Mapped[int] = mapped_column(Integer)
    report: Mapped[dict[str, Any]] = mapped_column(JSON)


class Role(StrEnum):
    """What an API key may do, each role including the ones before it."""

    VIEWER = "viewer"  # reads its project
    MEMBER = "member"  # creates and deletes in its project
    ADMIN = "admin"  # also the project's keys, usage and audit log
    OPERATOR = "operator"  # service-wide: projects, quotas, the shared zoo, the calibration

    @property
    def level(self) -> int:
        """Order of the roles: a role may do what every lower one may."""
        return list(Role).index(self)


class Project(Base):
    """A team's space: its datasets, private sources, rankings, jobs and models."""

    __tablename__ = "projects"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    # Quotas set for this project (a missing one: the setting's default; None: unlimited).
    quotas: Mapped[dict[str, int | float | None]] = mapped_column(JSON, default=dict)
    # Whether its finished fine-tunes' evidence feeds the shared calibration.
    share_evidence: Mapped[bool] = mapped_column(Boolean, default=False)


class ApiKey(Base):
    """An API key of a project: only its SHA-256 is stored; the key is shown once."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    project_id: Mapped[str] = mapped_column(
        String(32), ForeignKey("projects.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(String(100))
    role: Mapped[str] = mapped_column(String(16))
    # A random 32-byte key: one SHA-256 is enough (nothing to brute-force, unlike a password).
    key_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(
        String(16)
    )  # the key's first characters, to tell keys apart
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class AuditEntry(Base):
    """One state-changing request: who (key id, never the key), where, what, and its status."""

    __tablename__ = "audit_log"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    key_id: Mapped[str | None] = mapped_column(String(32), nullable=True)  # None: open service
    project_id: Mapped[str] = mapped_column(String(32), index=True)  # kept after a delete
    action: Mapped[str] = mapped_column(String(120))  # e.g. "DELETE /v1/datasets/{dataset_id}"
    object_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    status: Mapped[int] = mapped_column(Integer)
    detail: Mapped[str | None] = mapped_column(String(300), nullable=True)
