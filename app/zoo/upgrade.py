"""Bring an existing install up to the active reference network.

A new reference network makes every stored signature stale: stale sources are left out of
rankings until they are re-signed. ``upgrade`` re-signs every dataset and every source whose
training dataset is stored, lists the sources that cannot be re-signed (registered with a
signature only, or whose dataset was deleted), and imports the bundled zoo beside what is
there. It is idempotent: a second run finds nothing to do.
"""

from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.imaging.images import ImageRejected
from app.models import Dataset, Source
from app.p2l.reference import ReferenceNetwork
from app.p2l.scoring import SignatureIndex
from app.p2l.signature import DatasetSignature, compute_signature
from app.services.datasets import SIGNATURE_FILE, dataset_files, dataset_signature
from app.services.sources import record_change
from app.store import ArtifactStore
from app.zoo.bundled import import_bundled_sources, missing_bundled_sources


@dataclass
class UpgradeReport:
    """What ``upgrade`` did (or, with ``dry_run``, would do)."""

    reference_sha256: str
    resigned_datasets: list[dict[str, str]] = field(default_factory=list)
    resigned_sources: list[dict[str, str]] = field(default_factory=list)
    cannot_resign: list[dict[str, str]] = field(default_factory=list)
    cannot_resign_datasets: list[dict[str, str]] = field(default_factory=list)
    imported_bundled: list[dict[str, str]] = field(default_factory=list)
    dry_run: bool = False


def upgrade(
    session: Session,
    store: ArtifactStore,
    reference: ReferenceNetwork,
    index: SignatureIndex,
    batch_size: int = 128,
    dry_run: bool = False,
) -> UpgradeReport:
    """Re-sign stale datasets and sources under ``reference``; import missing bundled sources.

    Each dataset and source is committed on its own: an interruption leaves every row either
    fully re-signed or untouched (the signature file is replaced atomically before its row
    says so, and a row still naming the old reference is simply re-signed next time).
    """
    active = reference.weights_sha256
    report = UpgradeReport(reference_sha256=active, dry_run=dry_run)
    fresh: dict[str, DatasetSignature] = {}
    unreadable: dict[str, str] = {}
    for dataset in session.scalars(select(Dataset).order_by(Dataset.created_at)):
        if dataset.reference_sha256 == active:
            continue
        entry = {"id": dataset.id, "name": dataset.name}
        try:
            files = dataset_files(store, dataset)
            signature = None if dry_run else compute_signature(reference, files, batch_size)
        except (OSError, ImageRejected, ValueError) as exc:
            unreadable[dataset.id] = f"its stored dataset cannot be read ({exc})"
            report.cannot_resign_datasets.append({**entry, "reason": unreadable[dataset.id]})
            continue
        report.resigned_datasets.append(entry)
        if signature is None:  # dry run
            continue
        store.write_file(f"{dataset.artifact_key}/{SIGNATURE_FILE}", signature.to_bytes())
        dataset.reference_sha256, dataset.feature_dim = active, signature.feature_dim
        session.commit()
        fresh[dataset.id] = signature

    for source in session.scalars(select(Source).order_by(Source.created_at)):
        if source.reference_sha256 == active:
            continue
        entry = {"id": source.id, "name": source.name, "origin": source.origin}
        trained_on = session.get(Dataset, source.dataset_id) if source.dataset_id else None
        if trained_on is not None and trained_on.id in unreadable:
            report.cannot_resign.append({**entry, "reason": unreadable[trained_on.id]})
            continue
        if trained_on is None:
            if source.dataset_id:
                reason = "its training dataset was deleted"
            elif source.origin == "bundled":
                reason = "bundled with the project: its signature came with it, its data did not"
            else:
                reason = "registered with a signature only (no stored dataset to re-sign)"
            report.cannot_resign.append({**entry, "reason": reason})
            continue
        report.resigned_sources.append(entry)
        if dry_run:
            continue
        # Every readable dataset is signed by the active network by now.
        signature = fresh.get(trained_on.id) or dataset_signature(store, trained_on)
        store.write_file(f"{source.artifact_key}/{SIGNATURE_FILE}", signature.to_bytes())
        source.reference_sha256, source.feature_dim = active, signature.feature_dim
        session.flush()
        # Running API replicas re-read the new signature when they catch up.
        record_change(session, source.id, "add")
        session.commit()
        index.add(source.id, signature)

    if dry_run:
        missing = missing_bundled_sources(session, reference)
        report.imported_bundled = [{"name": entry["name"]} for entry in missing]
    else:
        imported = import_bundled_sources(session, store, index, reference)
        report.imported_bundled = [{"id": s.id, "name": s.name} for s in imported]
    return report
