"""The bundled reference network and demo zoo that ship with the project (app/zoo/bundled)."""

import json
import logging
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from app.models import Source
from app.p2l.reference import ReferenceNetwork
from app.p2l.scoring import SignatureIndex
from app.p2l.signature import load_signature
from app.store import LocalArtifactStore
from app.zoo.sources import register_source

logger = logging.getLogger("p2l")

BUNDLED_DIR = Path(__file__).parent / "bundled"
MANIFEST = BUNDLED_DIR / "manifest.json"


def manifest() -> dict[str, Any] | None:
    """The bundled zoo's manifest, or None when the build has not been run."""
    return json.loads(MANIFEST.read_text()) if MANIFEST.exists() else None


def bundled_reference_weights(architecture: str) -> Path | None:
    """The bundled reference weights, if they exist and are for ``architecture``."""
    info = manifest()
    if info is None or info["reference"]["architecture"] != architecture:
        return None
    return BUNDLED_DIR / info["reference"]["weights"]


def import_bundled_zoo(
    session: Session,
    store: LocalArtifactStore,
    index: SignatureIndex,
    reference: ReferenceNetwork,
) -> int:
    """Register the bundled sources if the zoo is empty; returns how many were imported."""
    info = manifest()
    if info is None or session.scalar(select(func.count()).select_from(Source)):
        return 0
    if info["reference"]["weights_sha256"] != reference.weights_sha256:
        logger.warning(
            "bundled zoo not imported: its signatures belong to the bundled reference network, "
            "and another one is active"
        )
        return 0
    for entry in info["sources"]:
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
        )
    logger.info("imported %d bundled sources", len(info["sources"]))
    return len(info["sources"])
