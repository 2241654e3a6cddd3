"""Source use cases: register, read, list, delete, keeping DB, files and the index in step."""

import hashlib
import logging
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.config import Settings
from app.db import lock_zoo_changes
from app.errors import Conflict, InvalidInput
from app.families import expected_state, get_spec
from app.imaging.archive import stream_size
from app.models import DEFAULT_PROJECT_ID, Dataset, Role, Source, ZooChange
from app.p2l.reference import ReferenceNetwork, check_state_dict
from app.p2l.scoring import SignatureIndex
from app.p2l.signature import DatasetSignature, compute_signature
from app.pagination import get_by_id, paginate
from app.services.access import ALL_PROJECTS, Principal, session_project
from app.services.context import Context
from app.services.datasets import (
    SIGNATURE_FILE,
    dataset_files,
    dataset_signature,
    get_dataset,
    stored_signature,
)
from app.services.handles import (
    check_new_name,
    find_id,
    is_name_clash,
    name_taken_meanwhile,
)
from app.services.quotas import check_storage
from app.store import ArtifactStore
from app.unit_of_work import unit_of_work

logger = logging.getLogger("p2l")

WEIGHTS_FILE = "weights.safetensors"
DEFAULT_MAX_CLASSES: int = Settings.model_fields["max_source_classes"].default
DEFAULT_MAX_NAME_BYTES: int = Settings.model_fields["max_name_bytes"].default
# Finite-check this many elements at a time: a bounded scratch mask, whatever the tensor size.
_FINITE_CHUNK = 1 << 22


def parse_weights(data: bytes) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file; InvalidInput if it is not one."""
    try:
        return load_safetensors(data)
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise InvalidInput(f"weights are not a readable safetensors file: {exc}") from None


def parse_signature(data: bytes) -> DatasetSignature:
    """A signature uploaded as safetensors; InvalidInput if it is not one."""
    try:
        return DatasetSignature.from_bytes(data)
    except (SafetensorError, ValueError) as exc:
        raise InvalidInput(f"signature file is not usable: {exc}") from None


def check_architecture(
    architecture: str,
    num_classes: int,
    max_classes: int = DEFAULT_MAX_CLASSES,
    input_size: int | None = None,
) -> None:
    """InvalidInput unless the architecture is known, runs at ``input_size`` (None: its
    default) and num_classes is within the limit."""
    try:  # its message names the choices (or, for timm/<name>, why that one cannot be built)
        spec = get_spec(architecture)
    except ValueError as exc:
        raise InvalidInput(str(exc)) from None
    if spec.fixed_input_size and input_size not in (None, spec.default_input_size):
        raise InvalidInput(
            f"{architecture} runs at {spec.default_input_size} px only; "
            f"input_size={input_size} does not fit it"
        )
    if not 1 <= num_classes <= max_classes:
        raise InvalidInput(
            f"num_classes={num_classes:,} is outside 1..{max_classes:,} (P2L_MAX_SOURCE_CLASSES)"
        )


def check_class_names(
    what: str,
    names: list[str],
    max_classes: int = DEFAULT_MAX_CLASSES,
    max_name_bytes: int = DEFAULT_MAX_NAME_BYTES,
) -> None:
    """InvalidInput if ``what`` names more classes than max_classes or a name is too long."""
    # Each name is stored with the source and sent in every page of GET /v1/sources.
    if len(names) > max_classes:
        raise InvalidInput(
            f"{what} names {len(names):,} classes; a source may have at most {max_classes:,} "
            "(P2L_MAX_SOURCE_CLASSES)"
        )
    for i, name in enumerate(names):
        # surrogatepass: a lone surrogate from JSON is counted, not a 500.
        if (size := len(name.encode("utf-8", "surrogatepass"))) > max_name_bytes:
            raise InvalidInput(
                f"{what}: class name {i} ({name[:20]!r}…) is {size:,} UTF-8 bytes; the limit "
                f"is {max_name_bytes:,} (P2L_MAX_NAME_BYTES)"
            )


def check_weights(
    architecture: str,
    num_classes: int,
    weights: dict[str, torch.Tensor],
    max_classes: int = DEFAULT_MAX_CLASSES,
) -> None:
    """InvalidInput naming the first missing/extra/mis-shaped/non-finite tensor, if any."""
    check_architecture(architecture, num_classes, max_classes)
    expected = expected_state(architecture, num_classes)
    try:
        check_state_dict(expected, weights)
    except ValueError as exc:
        raise InvalidInput(
            f"weights do not fit {architecture} with {num_classes} classes: {exc}"
        ) from None
    for key, tensor in weights.items():
        if tensor.is_floating_point() != expected[key].is_floating_point():
            raise InvalidInput(
                f"weights {key!r} have dtype {tensor.dtype}; the architecture expects "
                f"{expected[key].dtype}"
            )
        if tensor.is_floating_point() and not _all_finite(tensor):
            raise InvalidInput(f"weights {key!r} hold NaN or infinite values")


def _all_finite(tensor: torch.Tensor) -> bool:
    flat = tensor.reshape(-1)
    return all(
        bool(torch.isfinite(flat[start : start + _FINITE_CHUNK]).all())
        for start in range(0, flat.numel(), _FINITE_CHUNK)
    )


def signature_for_dataset(
    session: Session, store: ArtifactStore, reference: ReferenceNetwork, dataset_id: str
) -> DatasetSignature:
    """A dataset's signature under the active reference (recomputed if it was made by another)."""
    dataset = get_dataset(session, dataset_id)
    if dataset.reference_sha256 == reference.weights_sha256:
        return dataset_signature(store, dataset)
    return compute_signature(reference, dataset_files(store, dataset))


def register_source(
    session: Session,
    store: ArtifactStore,
    index: SignatureIndex,
    reference: ReferenceNetwork,
    *,
    name: str,
    architecture: str,
    num_classes: int,
    weights_data: bytes,
    signature: DatasetSignature,
    class_names: list[str] | None = None,
    input_size: int | None = None,
    dataset_id: str | None = None,
    origin: str = "upload",
    model_id: str | None = None,
    max_classes: int = DEFAULT_MAX_CLASSES,
    max_name_bytes: int = DEFAULT_MAX_NAME_BYTES,
    shared: bool = False,
    image_counts: str = "verified",
) -> Source:
    """Validate and store a source; nothing is kept if any check fails.

    It belongs to the session's project (``app.services.access``; an unscoped session: the
    default project), private to it unless ``shared`` (the shared zoo). ``image_counts``:
    'verified' when the service counted the signature's images, 'claimed' when it was
    uploaded.

    ``model_id`` links a fine-tuned model's source; it is unique in the database, so a
    second source of the same model raises Conflict naming the first (nothing is kept).
    """
    # The cheap checks first: the weights are parsed only for a model that may exist.
    check_new_name(session, Source, name, "source")
    check_architecture(architecture, num_classes, max_classes, input_size)
    check_class_names("the signature", signature.class_names, max_classes, max_name_bytes)
    if class_names is not None:
        check_class_names("class_names", class_names, max_classes, max_name_bytes)
    check_weights(architecture, num_classes, parse_weights(weights_data), max_classes)
    if signature.feature_dim != reference.feature_dim:
        raise InvalidInput(
            f"signature has {signature.feature_dim} dimensions; the active reference network "
            f"produces {reference.feature_dim}"
        )
    if signature.reference_sha256 != reference.weights_sha256:
        raise InvalidInput(
            "signature was computed with another reference network "
            f"({signature.reference_sha256[:12]}…, active {reference.weights_sha256[:12]}…); "
            "register with dataset_id instead, or recompute it"
        )
    if class_names is None:
        class_names = (
            signature.class_names
            if len(signature.class_names) == num_classes
            else [f"class_{i}" for i in range(num_classes)]
        )
    if len(class_names) != num_classes:
        raise InvalidInput(f"{len(class_names)} class names given for {num_classes} classes")

    source_id = uuid.uuid4().hex
    key = f"sources/{source_id}"
    source = Source(
        id=source_id,
        name=name,
        architecture=architecture,
        num_classes=num_classes,
        input_size=input_size or get_spec(architecture).default_input_size,
        class_names=class_names,
        num_images=signature.n,
        class_counts=dict(zip(signature.class_names, signature.class_counts.tolist(), strict=True)),
        feature_dim=signature.feature_dim,
        reference_sha256=signature.reference_sha256,
        weights_sha256=hashlib.sha256(weights_data).hexdigest(),
        dataset_id=dataset_id,
        origin=origin,
        artifact_key=key,
        model_id=model_id,
        project_id=session_project(session) or DEFAULT_PROJECT_ID,
        shared=shared,
        image_counts=image_counts,
    )
    try:
        with unit_of_work(session, store) as work:
            staging = work.stage()
            (staging / WEIGHTS_FILE).write_bytes(weights_data)
            (staging / SIGNATURE_FILE).write_bytes(signature.to_bytes())
            source.stored_bytes = work.publish(staging, key)
            session.add(source)
            # Flushed before the zoo lock: a unique model_id wait never happens while holding it.
            session.flush()
            record_change(session, source_id, "add")
    except IntegrityError as exc:
        # Lost a race for the unique model_id or the name: name the source that won it.
        winner = model_id and session.scalar(select(Source.id).where(Source.model_id == model_id))
        if winner:
            raise Conflict(
                f"model {model_id} is already the source {winner}", source_id=winner
            ) from None
        if is_name_clash(exc):
            raise name_taken_meanwhile(name, "source") from None
        raise
    index.add(source.id, signature, claimed=image_counts == "claimed")
    return source


def check_upload(
    settings: Settings,
    architecture: str,
    num_classes: int,
    input_size: int | None,
    class_names: list[str] | None,
    dataset_id: str | None,
    has_signature: bool,
) -> None:
    """The checks of a source upload that need none of its files (InvalidInput)."""
    if (dataset_id is None) == (not has_signature):
        raise InvalidInput("give exactly one of dataset_id or signature")
    max_classes = settings.max_source_classes
    check_architecture(architecture, num_classes, max_classes, input_size)
    if class_names is not None:
        check_class_names("class_names", class_names, max_classes, settings.max_name_bytes)


def register_upload(
    ctx: Context,
    *,
    name: str,
    architecture: str,
    num_classes: int,
    weights: IO[bytes],
    signature: IO[bytes] | None,
    dataset_id: str | None,
    class_names: list[str] | None,
    input_size: int | None,
) -> Source:
    """Register an uploaded model with the signature of a stored dataset (``dataset_id``)
    or an uploaded one (exactly one of the two: see ``check_upload``); nothing is kept if
    any check fails."""
    weights_bytes = stream_size(weights)
    check_storage(ctx.session, ctx.store, ctx.settings, ctx.principal.project_id, weights_bytes)
    if dataset_id is not None:  # named by id or name: the source keeps its id
        dataset_id = find_id(ctx.session, Dataset, dataset_id, "dataset")
        dataset_signature = signature_for_dataset(ctx.session, ctx.store, ctx.reference, dataset_id)
    else:
        assert signature is not None  # exactly one of the two (check_upload)
        dataset_signature = parse_signature(signature.read())
    return register_source(
        ctx.session,
        ctx.store,
        ctx.index,
        ctx.reference,
        name=name,
        architecture=architecture,
        num_classes=num_classes,
        weights_data=weights.read(),
        signature=dataset_signature,
        class_names=class_names,
        input_size=input_size,
        dataset_id=dataset_id,
        max_classes=ctx.settings.max_source_classes,
        max_name_bytes=ctx.settings.max_name_bytes,
        image_counts="verified" if dataset_id is not None else "claimed",
    )


def get_source(session: Session, source_id: str) -> Source:
    """The source with this id, or NotFound."""
    return get_by_id(session, Source, source_id, "source")


def list_sources(
    session: Session, page_size: int, page_token: str | None
) -> tuple[list[Source], str | None]:
    """Newest first, one page at a time."""
    return paginate(session, Source, page_size, page_token)


def all_sources(session: Session) -> list[Source]:
    """Every source, oldest first."""
    return list(session.scalars(select(Source).order_by(Source.created_at, Source.id)))


def check_may_delete(session: Session, source_id: str, principal: Principal) -> Source:
    """The source, if ``principal`` may delete it (one of the shared zoo: operators only)."""
    source = get_source(session, source_id)
    if source.shared:
        principal.require(Role.OPERATOR, "delete a source of the shared zoo")
    return source


def delete_source(
    session: Session,
    store: ArtifactStore,
    index: SignatureIndex,
    source_id: str,
    principal: Principal,
) -> None:
    """Remove a source from the index, the database and the store (one of the shared zoo:
    operators only)."""
    source = check_may_delete(session, source_id, principal)
    key = source.artifact_key
    session.delete(source)
    session.flush()
    record_change(session, source_id, "remove")
    session.commit()
    index.remove(source_id)
    store.delete(key)


def publish_source(session: Session, source_id: str, principal: Principal) -> Source:
    """Move a project's source into the shared zoo, where every project ranks over it
    (operators only); a shared one stays as it is."""
    principal.require(Role.OPERATOR, "publish a source into the shared zoo")
    source = get_source(session, source_id)
    if not source.shared:
        source.shared = True
        session.flush()
        record_change(session, source.id, "add")  # other replicas re-read it
    return source


def record_change(session: Session, source_id: str, op: str) -> None:
    """Log a zoo change in the caller's transaction ('add' also means re-signed)."""
    lock_zoo_changes(session)
    session.add(ZooChange(source_id=source_id, op=op))


def rankable_signature(
    store: ArtifactStore, source_id: str, artifact_key: str, reference_sha256: str
) -> DatasetSignature | None:
    """A source's stored signature, or None (logged) if it cannot be read."""
    try:
        return stored_signature(store, artifact_key, reference_sha256)
    except (OSError, ValueError) as exc:
        # Stored before signatures were validated, or deleted meanwhile: one bad row must
        # not stop the service.
        logger.warning("source %s is not ranked: its signature is refused (%s)", source_id, exc)
        return None


def catch_up(
    session: Session, store: ArtifactStore, index: SignatureIndex, reference: ReferenceNetwork
) -> int:
    """Apply the zoo changes committed since ``index.version``; returns the sources touched.

    Changes are replayed by state, not by op: each touched source is re-read, added if its
    row exists under the active reference, dropped otherwise, so replaying twice is harmless.
    Writers draw seqs under a lock held until they commit (``lock_zoo_changes``), so no seq
    below the newest one seen can still appear; gaps are rolled-back transactions.
    """
    with index.catch_up_lock:
        changes = session.execute(
            select(ZooChange.seq, ZooChange.source_id)
            .where(ZooChange.seq > index.version)
            .order_by(ZooChange.seq)
        ).all()
        if not changes:
            return 0
        touched = {source_id for _, source_id in changes}
        rows = {
            row.id: row
            for row in session.execute(
                select(Source.id, Source.reference_sha256, Source.artifact_key, Source.image_counts)
                .where(Source.id.in_(touched))
                .execution_options(**{ALL_PROJECTS: True})  # the index serves every project
            )
        }
        for source_id in touched:
            row = rows.get(source_id)
            signature = None
            if row is not None and row.reference_sha256 == reference.weights_sha256:
                signature = rankable_signature(
                    store, source_id, row.artifact_key, row.reference_sha256
                )
            if signature is None:
                index.remove(source_id)
            else:
                assert row is not None  # a signature is only read for a row
                index.add(source_id, signature, claimed=row.image_counts == "claimed")
        index.version = changes[-1].seq
        return len(touched)


def weights_path(store: ArtifactStore, source: Source) -> Path:
    """Where a source's safetensors weights are."""
    return store.path(source.artifact_key) / WEIGHTS_FILE


def load_index(
    session: Session,
    store: ArtifactStore,
    reference: ReferenceNetwork,
    eps: float,
    claimed_images_cap: int | None = None,
) -> SignatureIndex:
    """The in-memory index of every source (of every project) whose signature fits the
    active reference; claimed image counts weigh at most ``claimed_images_cap``."""
    index = SignatureIndex(eps=eps, claimed_images_cap=claimed_images_cap)
    # Read before the sources: a change committed in between is replayed by catch_up.
    index.version = session.scalar(select(func.coalesce(func.max(ZooChange.seq), 0))) or 0
    stale = 0
    for source in session.scalars(select(Source)):
        if source.reference_sha256 != reference.weights_sha256:
            stale += 1
            continue
        signature = rankable_signature(
            store, source.id, source.artifact_key, source.reference_sha256
        )
        if signature is not None:
            index.add(source.id, signature, claimed=source.image_counts == "claimed")
    if stale:
        logger.warning(
            "%d sources have signatures from another reference network; they are not ranked",
            stale,
        )
    return index


@dataclass(frozen=True)
class ZooPoints:
    """What the zoo map draws: each rankable source's name, mean feature and size, and
    optionally a target's (label, mean feature)."""

    names: list[str]
    means: np.ndarray
    sizes: list[int]
    eps: float
    target: tuple[str, np.ndarray] | None


def zoo_points(ctx: Context, target_dataset_id: str | None = None) -> ZooPoints:
    """The zoo's signatures (and a target's) for a map; InvalidInput when none is rankable."""
    session, index = ctx.session, ctx.index
    catch_up(session, ctx.store, index, ctx.reference)
    rows = [s for s in all_sources(session) if s.id in index]
    if not rows:
        raise InvalidInput("the zoo holds no rankable source to draw")
    target = None
    if target_dataset_id is not None:
        target_dataset_id = find_id(session, Dataset, target_dataset_id, "dataset")
        signature = signature_for_dataset(session, ctx.store, ctx.reference, target_dataset_id)
        name = get_by_id(session, Dataset, target_dataset_id, "dataset").name
        target = (f"target: {name}", signature.mean)
    return ZooPoints(
        names=[s.name for s in rows],
        means=np.stack([index.signature(s.id).mean for s in rows]),
        sizes=[s.num_images for s in rows],
        eps=ctx.settings.p2l_eps,
        target=target,
    )
