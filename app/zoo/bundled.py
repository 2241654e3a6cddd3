"""The bundled reference network, demo zoo and benchmark targets that ship with the project.

Built by ``python -m bench.zoo build`` into ``app/zoo/bundled/``; the service only reads it.
"""

import hashlib
import io
import json
import logging
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from app.config import BUNDLED_DIR, Settings
from app.db import BUNDLED_IMPORT_LOCK, advisory_lock
from app.models import DEFAULT_PROJECT_ID, Source
from app.p2l.reference import ReferenceNetwork, load_reference
from app.p2l.scoring import SignatureIndex
from app.p2l.signature import load_signature
from app.services.handles import holder
from app.services.sources import register_source
from app.store import ArtifactStore

logger = logging.getLogger("p2l")

MANIFEST = BUNDLED_DIR / "manifest.json"


def manifest() -> dict[str, Any] | None:
    """The bundled zoo's manifest, or None when the build has not been run."""
    return json.loads(MANIFEST.read_text()) if MANIFEST.exists() else None


def bundled_reference_weights(architecture: str) -> Path | None:
    """The bundled reference weights, if they exist and are for ``architecture``."""
    info = manifest()
    if info is None or info["reference"].get("architecture") != architecture:
        return None
    return BUNDLED_DIR / info["reference"]["weights"]


def load_active_reference(settings: Settings) -> ReferenceNetwork:
    """The reference network the settings ask for (the bundled one by default)."""
    weights = settings.reference_weights or bundled_reference_weights(settings.reference_arch)
    return load_reference(
        settings.reference_arch,
        weights,
        settings.device,
        mixed_precision=settings.mixed_precision,
        channels_last=settings.channels_last,
        pin_memory=settings.pin_memory,
        decode_processes=settings.decode_processes,
    )


def import_bundled_zoo(
    session: Session,
    store: ArtifactStore,
    index: SignatureIndex,
    reference: ReferenceNetwork,
) -> int:
    """Register the bundled sources if the zoo is empty (first start); returns how many.

    Replicas starting together on one PostgreSQL database take turns: the first imports,
    the others then find the zoo filled.
    """
    with advisory_lock(_engine(session), BUNDLED_IMPORT_LOCK):
        # End any read transaction begun before the lock: its snapshot may predate the import.
        session.commit()
        if session.scalar(select(func.count()).select_from(Source)):
            return 0
        return len(_import_missing(session, store, index, reference))


def _engine(session: Session) -> Engine:
    bind = session.get_bind()
    return bind if isinstance(bind, Engine) else bind.engine


def missing_bundled_sources(session: Session, reference: ReferenceNetwork) -> list[dict[str, Any]]:
    """Manifest entries of the bundled sources the zoo does not hold yet (by weights).

    Empty when another reference network is active: the bundled signatures belong to the
    bundled reference.
    """
    info = manifest()
    if info is None:
        return []
    if info["reference"]["weights_sha256"] != reference.weights_sha256:
        logger.warning(
            "bundled zoo not imported: its signatures belong to the bundled reference network, "
            "and another one is active"
        )
        return []
    present = set(session.scalars(select(Source.weights_sha256).where(Source.origin == "bundled")))
    return [
        entry
        for entry in info["sources"]
        if hashlib.sha256((BUNDLED_DIR / entry["weights"]).read_bytes()).hexdigest() not in present
    ]


def import_bundled_sources(
    session: Session,
    store: ArtifactStore,
    index: SignatureIndex,
    reference: ReferenceNetwork,
) -> list[Source]:
    """Register every bundled source the zoo does not hold yet, beside what is there."""
    with advisory_lock(_engine(session), BUNDLED_IMPORT_LOCK):
        session.commit()  # as in import_bundled_zoo: see what the lock's last holder stored
        return _import_missing(session, store, index, reference)


def _import_missing(
    session: Session,
    store: ArtifactStore,
    index: SignatureIndex,
    reference: ReferenceNetwork,
) -> list[Source]:
    entries = []
    for entry in missing_bundled_sources(session, reference):
        if (taken_by := holder(session, Source, entry["name"], DEFAULT_PROJECT_ID)) is not None:
            # A source of the default project took the name (names are unique there): the
            # bundled one stays out rather than stop the import, or the start-up, halfway.
            logger.warning(
                "bundled source %s not imported: source %s of the default project has its name",
                entry["name"],
                taken_by,
            )
            continue
        entries.append(entry)
    imported = [
        register_source(
            session,
            store,
            index,
            reference,
            name=entry["name"],
            architecture=entry["architecture"],
            num_classes=entry["num_classes"],
            class_names=entry["class_names"],
            weights_data=(BUNDLED_DIR / entry["weights"]).read_bytes(),
            signature=load_signature(BUNDLED_DIR / entry["signature"]),
            origin="bundled",
            shared=True,  # the shared zoo every project ranks over
        )
        for entry in entries
    ]
    if imported:
        logger.info("imported %d bundled sources", len(imported))
    return imported


def bundled_target_names() -> list[str]:
    """Names of the bundled benchmark targets."""
    return sorted(path.stem for path in (BUNDLED_DIR / "targets").glob("*.npz"))


def bundled_target(name: str) -> tuple[np.ndarray, np.ndarray, list[str], np.ndarray]:
    """A bundled benchmark target: images, labels, class names and its fixed test mask."""
    if name not in bundled_target_names():
        raise KeyError(f"no bundled target {name!r}; choose one of {bundled_target_names()}")
    data = np.load(BUNDLED_DIR / "targets" / f"{name}.npz")
    return data["images"], data["labels"], [str(c) for c in data["class_names"]], data["is_test"]


def export_target(name: str, out: Path) -> tuple[Path, Path]:
    """Write a bundled target's training part as ``<out>/<name>.zip`` (class folders of PNGs)
    and its test part as ``<out>/<name>-heldout/<class>_<i>.png``, for uploads and
    predictions."""
    images, labels, class_names, is_test = bundled_target(name)
    heldout = out / f"{name}-heldout"
    heldout.mkdir(parents=True, exist_ok=True)
    archive_path = out / f"{name}.zip"
    with zipfile.ZipFile(archive_path, "w") as archive:
        for i, (pixels, label, test) in enumerate(zip(images, labels, is_test, strict=True)):
            buffer = io.BytesIO()
            Image.fromarray(pixels).save(buffer, "PNG")
            class_name = class_names[label]
            if test:
                (heldout / f"{class_name}_{i:03d}.png").write_bytes(buffer.getvalue())
            else:
                archive.writestr(f"{name}/{class_name}/{i:03d}.png", buffer.getvalue())
    return archive_path, heldout
