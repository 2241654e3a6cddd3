"""Learned-ranking use cases: the evidence a project may learn from, the ranker fitted on it,
and what every ranking says about coverage and expected gain (app.p2l.learned).

The evidence is the bundled benchmark's ground truth (``app/zoo/bundled/evidence.json``:
every bundled source fine-tuned on every bundled target, against training from scratch),
plus the finished fine-tunes of the projects that share their evidence and of the asking
project, recorded up to the calibration in force: a refit (``POST /v1/calibration/refit`` or
the automatic one) is what brings new fine-tunes in, for the learned ranker as for measure
and lambda. Each dataset is its own group; a bundled target's group is its family.

A fitted ranker is kept per (reference network, calibration, project, zoo version): fitting
takes milliseconds, but the bundled targets' signatures take one forward pass each. Those
are shipped for the bundled reference network (the only one they serve: the bundled
sources' records belong to it); where that file is missing or stale they are signed in a
background thread the service starts at start-up, and kept in the store
(``evidence-cache/``) for the next process; rankings wait for them only in the first
``P2L_LEARNED_EVIDENCE_WAIT_SECONDS`` after signing began, and otherwise go on without
them, saying so.
"""

import hashlib
import json
import logging
import threading
import time
from collections import OrderedDict, defaultdict
from dataclasses import dataclass, field, replace
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.numpy import load as load_arrays
from safetensors.numpy import save as save_arrays
from sqlalchemy import ColumnElement, and_, func, or_, select
from sqlalchemy.orm import Session

from app.config import BUNDLED_DIR
from app.models import Evidence, Source
from app.p2l.learned import EvidenceTarget, LearnedConfig, LearnedRanker
from app.p2l.reference import ReferenceNetwork
from app.p2l.signature import DatasetSignature, signature_of_array
from app.services.access import ALL_PROJECTS
from app.services.calibration import current_calibration, shared_evidence
from app.services.context import Context
from app.store import ArtifactStore

logger = logging.getLogger("p2l.learning")

BUNDLED_EVIDENCE = BUNDLED_DIR / "evidence.json"
# Their signatures under the bundled reference, shipped (python -m bench.selection writes
# them): a fresh install reads them instead of signing at start-up.
BUNDLED_SIGNATURES = BUNDLED_DIR / "evidence_signatures.safetensors"
CACHE_PREFIX = "evidence-cache"
GAIN_TOP = 3  # results whose expected gain a ranking gives
_KEPT_RANKERS = 16

SignedTarget = tuple[dict[str, Any], DatasetSignature]  # an evidence.json entry, its signature

_lock = threading.Lock()
_signings: "dict[str, _Signing]" = {}  # by reference network digest
_rankers: "OrderedDict[tuple[Any, ...], LearnedState]" = OrderedDict()


@dataclass(frozen=True)
class LearnedState:
    """A fitted (or, short of evidence, inactive) ranker and where its evidence came from."""

    ranker: LearnedRanker
    bundled_targets: int
    calibration_id: str | None
    min_targets: int
    bundled_pending: str | None = None

    def summary(self, used: bool, without_record: int = 0) -> dict[str, Any]:
        """What a ranking's ``learned`` object says."""
        targets = len(self.ranker.evidence)
        return {
            "used": used,
            "targets": targets,
            "jobs": self.ranker.jobs,
            "bundled_targets": self.bundled_targets,
            "min_targets": self.min_targets,
            "calibration_id": self.calibration_id,
            "without_record": without_record,
            "bundled_pending": self.bundled_pending,
            "fallback": None
            if used
            else (
                f"p2l: {targets} past target(s) with two or more of this zoo's sources "
                f"fine-tuned on them, fewer than the {self.min_targets} it learns from"
                + (f" ({self.bundled_pending})" if self.bundled_pending else "")
            ),
        }


def _at_size(images: np.ndarray, size: int) -> np.ndarray:
    """uint8 NHWC images resized to ``size`` (as they are when already that size)."""
    if images.shape[1] == size:
        return images
    tensor = torch.from_numpy(images).permute(0, 3, 1, 2).float()
    resized = torch.nn.functional.interpolate(
        tensor, size=(size, size), mode="bilinear", antialias=True
    )
    return resized.round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()


def _bundled_entries() -> list[dict[str, Any]]:
    if not BUNDLED_EVIDENCE.exists():
        return []
    targets: list[dict[str, Any]] = json.loads(BUNDLED_EVIDENCE.read_text())["targets"]
    return targets


def _cache_key(reference: ReferenceNetwork) -> str:
    """Where the store keeps the bundled targets' signatures under ``reference`` (the format
    and the evidence file's digest in the name: a new benchmark signs afresh)."""
    evidence = hashlib.sha256(BUNDLED_EVIDENCE.read_bytes()).hexdigest()[:16]
    return f"{CACHE_PREFIX}/bundled-v1-{reference.weights_sha256[:16]}-{evidence}.safetensors"


@cache  # shipped with the code: read once, not on every ranking
def _bundled_reference_sha256() -> str | None:
    """The reference network the bundled sources were signed under (None: no bundled zoo)."""
    manifest = BUNDLED_DIR / "manifest.json"
    if not manifest.exists():
        return None
    digest: str = json.loads(manifest.read_text())["reference"]["weights_sha256"]
    return digest


def _sign_bundled(reference: ReferenceNetwork) -> list[SignedTarget]:
    """One forward pass of each bundled target's training images."""
    signed = []
    for entry in _bundled_entries():
        with np.load(BUNDLED_DIR / "targets" / f"{entry['name']}.npz") as data:
            is_test, labels = data["is_test"], data["labels"]
            train = _at_size(data["images"][~is_test], reference.input_size)
            class_names = [str(c) for c in data["class_names"]]
        signed.append((entry, signature_of_array(reference, train, labels[~is_test], class_names)))
    return signed


def _read_signatures(path: Path, reference: ReferenceNetwork) -> list[SignedTarget] | None:
    """The bundled targets' signatures kept in ``path`` (shipped, or stored by a process
    before), or None: then they are signed afresh (a torn, foreign or stale file included)."""
    try:
        if not path.is_file():
            return None
        data = load_arrays(path.read_bytes())
        signed = [
            (entry, DatasetSignature.from_bytes(data[entry["name"]].tobytes()))
            for entry in _bundled_entries()
        ]
    except Exception as exc:  # whatever it holds, signing afresh is always right
        logger.warning("ignoring the bundled signatures in %s: %s", path, exc)
        return None
    if any(sig.reference_sha256 != reference.weights_sha256 for _, sig in signed):
        return None
    return signed


def _read_stored(
    store: ArtifactStore, key: str, reference: ReferenceNetwork
) -> list[SignedTarget] | None:
    """The signatures a process kept in the store, or None (an object store away included)."""
    try:
        path = store.path(key)
    except Exception as exc:
        logger.warning("could not read the stored bundled signatures: %s", exc)
        return None
    return _read_signatures(path, reference)


def _signatures_bytes(signed: list[SignedTarget]) -> bytes:
    return save_arrays(
        {entry["name"]: np.frombuffer(sig.to_bytes(), np.uint8) for entry, sig in signed}
    )


def ship_bundled_signatures(reference: ReferenceNetwork) -> None:
    """Sign the bundled targets under the bundled reference and write them beside the
    evidence (``BUNDLED_SIGNATURES``), for a fresh install to read."""
    BUNDLED_SIGNATURES.write_bytes(_signatures_bytes(_sign_bundled(reference)))


@dataclass
class _Signing:
    """The bundled targets being signed (or signed) under one reference network."""

    started: float = field(default_factory=time.monotonic)
    done: threading.Event = field(default_factory=threading.Event)
    signed: list[SignedTarget] | None = None
    error: str | None = None


def _run_signing(signing: _Signing, reference: ReferenceNetwork, store: ArtifactStore) -> None:
    try:
        key = _cache_key(reference)
        stored = _read_stored(store, key, reference)
        if stored is None:
            started = time.perf_counter()
            signing.signed = _sign_bundled(reference)
            logger.info(
                "signed the %d bundled evidence targets under %s in %.1f s",
                len(signing.signed), reference.architecture, time.perf_counter() - started,
            )  # fmt: skip
            _write_cached(store, key, signing.signed)  # usable already, kept or not
        else:
            signing.signed = stored
    except Exception as exc:  # rankings say so and go on without them; a restart retries
        logger.exception("signing the bundled evidence targets failed")
        signing.error = f"{type(exc).__name__}: {exc}"
    finally:
        signing.done.set()


def _write_cached(store: ArtifactStore, key: str, signed: list[SignedTarget]) -> None:
    """Keep the signatures for the next process (one that cannot is only slower to start)."""
    try:
        store.write_file(key, _signatures_bytes(signed))
    except Exception as exc:  # a full disk, an object store away: the signatures still serve
        logger.warning("could not keep the bundled signatures in the store: %s", exc)


def _finished(signed: list[SignedTarget]) -> _Signing:
    signing = _Signing(signed=signed)
    signing.done.set()
    return signing


def start_signing(reference: ReferenceNetwork, store: ArtifactStore) -> _Signing:
    """The bundled evidence targets' signatures under ``reference``: the shipped ones, or
    else signed in a background thread, once per process (read from the store where a
    process kept them); the service starts this at start-up. Under any reference network but
    the bundled one there is nothing to sign: the bundled sources' signatures, hence their
    records, belong to the bundled one."""
    if not BUNDLED_EVIDENCE.exists() or reference.weights_sha256 != _bundled_reference_sha256():
        return _finished([])
    with _lock:
        signing = _signings.get(reference.weights_sha256)
        if signing is None and (shipped := _read_signatures(BUNDLED_SIGNATURES, reference)):
            signing = _signings[reference.weights_sha256] = _finished(shipped)
        if signing is None:
            signing = _signings[reference.weights_sha256] = _Signing()
            threading.Thread(
                target=_run_signing,
                args=(signing, reference, store),
                name="sign-bundled-evidence",
                daemon=True,
            ).start()
    return signing


def signed_bundled(
    reference: ReferenceNetwork, store: ArtifactStore, wait_seconds: float
) -> tuple[list[SignedTarget], str | None]:
    """The bundled targets with their signatures under ``reference``; while they are still
    being signed (waiting for them up to ``wait_seconds`` after signing started, once), or
    when signing failed, none, and why."""
    signing = start_signing(reference, store)
    signing.done.wait(max(0.0, signing.started + wait_seconds - time.monotonic()))
    if signing.signed is not None:
        return signing.signed, None
    if signing.error is not None:
        return [], (
            "signing the bundled benchmark's targets under this reference network failed "
            f"({signing.error}); the next start of the service tries again"
        )
    elapsed = time.monotonic() - signing.started
    return [], (
        "the bundled benchmark's targets are still being signed under this reference network "
        f"({elapsed:.0f} s so far: one forward pass of their training images, once per "
        "install); rankings use them once that is done"
    )


def bundled_evidence(session: Session, signed: list[SignedTarget]) -> list[EvidenceTarget]:
    """The bundled benchmark's targets, their accuracies keyed by the shared zoo's source ids
    (a bundled source renamed or deleted drops out)."""
    if not signed:
        return []
    names = {name for entry, _ in signed for name in entry["accuracy"]}
    ids = dict(
        session.execute(
            select(Source.name, Source.id).where(Source.shared.is_(True), Source.name.in_(names))
        ).all()
    )
    return [
        EvidenceTarget(
            key=f"bundled:{entry['name']}",
            group=f"bundled:{entry['family']}",
            signature=signature,
            accuracy={ids[name]: acc for name, acc in entry["accuracy"].items() if name in ids},
            scratch=entry.get("scratch"),
        )
        for entry, signature in signed
    ]


def _visible_evidence(
    reference_sha256: str, project_id: str, until: datetime
) -> ColumnElement[bool]:
    """The evidence rows a project learns from: its own and the sharing projects', made
    under this reference network up to ``until``."""
    return and_(
        Evidence.reference_sha256 == reference_sha256,
        Evidence.created_at <= until,
        or_(shared_evidence(), Evidence.project_id == project_id),
    )


def _evidence_fingerprint(
    session: Session, reference_sha256: str, project_id: str, until: datetime | None
) -> tuple[int, Any]:
    """How many evidence rows a project learns from, and the newest: a fitted ranker is
    reused only while they stay (a project that stops sharing, or deleted evidence, refits)."""
    if until is None:
        return (0, None)
    count, newest = session.execute(
        select(func.count(Evidence.id), func.max(Evidence.created_at))
        .where(_visible_evidence(reference_sha256, project_id, until))
        .execution_options(**{ALL_PROJECTS: True})
    ).one()
    return int(count), newest


def job_evidence(
    session: Session, reference_sha256: str, project_id: str, until: datetime
) -> list[EvidenceTarget]:
    """Finished fine-tunes recorded up to ``until``, of the projects that share their evidence
    and of ``project_id``, per target dataset (test accuracy where any job measured it)."""
    rows = session.scalars(
        select(Evidence)
        .where(_visible_evidence(reference_sha256, project_id, until))
        .execution_options(**{ALL_PROJECTS: True})
    ).all()
    by_target: dict[str, list[Evidence]] = defaultdict(list)
    for row in rows:
        by_target[row.target_dataset_id].append(row)
    evidence = []
    for dataset_id, items in by_target.items():
        if any(item.accuracy_split == "test" for item in items):
            items = [item for item in items if item.accuracy_split == "test"]
        accuracy: dict[str, list[float]] = defaultdict(list)
        for item in items:
            accuracy[item.source_id].append(item.accuracy)
        scratch = [item.baseline_accuracy for item in items if item.baseline_accuracy is not None]
        newest = max(items, key=lambda e: e.created_at)
        evidence.append(
            EvidenceTarget(
                key=dataset_id,
                group=dataset_id,
                signature=DatasetSignature.from_bytes(newest.target_signature),
                accuracy={s: float(np.mean(v)) for s, v in accuracy.items()},
                scratch=float(np.mean(scratch)) if scratch else None,
                jobs=len(items),
            )
        )
    return evidence


def learned_state(ctx: Context) -> LearnedState:
    """The learned ranker this project ranks with now (fitted once per calibration, zoo
    version and project)."""
    session, reference = ctx.session, ctx.reference
    calibration = current_calibration(session, reference.weights_sha256)
    project_id = ctx.principal.project_id
    until = calibration.created_at if calibration is not None else None
    bundled, pending = signed_bundled(
        reference, ctx.store, ctx.settings.learned_evidence_wait_seconds
    )
    key = (
        len(bundled),  # a state fitted while they were being signed is replaced once they are
        _evidence_fingerprint(session, reference.weights_sha256, project_id, until),
        id(ctx.index),  # a process may serve several services (tests do); the ranker holds it
        reference.weights_sha256,
        calibration.id if calibration is not None else None,
        project_id,
        ctx.index.version,
        len(ctx.index),
        ctx.settings.learned_min_targets,
    )
    with _lock:
        if key in _rankers:
            _rankers.move_to_end(key)
            return replace(_rankers[key], bundled_pending=pending)  # as it stands now
    jobs = job_evidence(session, reference.weights_sha256, project_id, until) if until else []
    config = LearnedConfig(min_targets=ctx.settings.learned_min_targets)
    ranker = LearnedRanker(ctx.index, [*bundled_evidence(session, bundled), *jobs], config)
    state = LearnedState(
        ranker=ranker,
        bundled_targets=sum(1 for e in ranker.evidence if e.key.startswith("bundled:")),
        calibration_id=calibration.id if calibration is not None else None,
        min_targets=config.min_targets,
        bundled_pending=pending,
    )
    with _lock:
        _rankers[key] = state
        while len(_rankers) > _KEPT_RANKERS:
            _rankers.popitem(last=False)
    return state


def coverage_summary(
    session: Session, state: LearnedState, target: DatasetSignature, zoo: list[str]
) -> dict[str, Any] | None:
    """What a ranking's ``coverage`` object says (None: an empty zoo)."""
    coverage = state.ranker.coverage(target, zoo)
    if coverage is None:
        return None
    # Judged against as many past targets as the learned ranker needs, not fewer.
    judged = coverage.past_targets >= state.min_targets
    recommendation = None
    if judged and not coverage.covered:
        best = state.ranker.best_record(zoo)
        generalist = session.scalar(select(Source.name).where(Source.id == best)) if best else None
        recommendation = (
            "the zoo does not cover this target well: its nearest source is farther than "
            f"{state.ranker.config.coverage_quantile:.0%} of past targets' nearest sources "
            "were. Fine-tune with a from-scratch baseline beside it (baseline: true; "
            'source_id "best" turns it on by itself here)'
            + (
                f", and consider {generalist}, the source with the best record"
                if generalist
                else ""
            )
            + "."
        )
    return {
        "covered": coverage.covered if judged else None,
        "nearest_source_id": coverage.nearest_source_id,
        "nearest_distance": coverage.nearest_distance,
        "percentile": coverage.percentile if judged else None,
        "past_targets": coverage.past_targets,
        "recommendation": recommendation,
    }


def with_gains(
    state: LearnedState, target: DatasetSignature, nearest: float, results: list[dict[str, Any]]
) -> None:
    """Add each of the top ``GAIN_TOP`` results' expected gain over scratch, for a target
    ``nearest`` away from its nearest source (when the ranker is active and has scratch
    evidence to learn it from)."""
    if not state.ranker.active or not results:
        return
    gains = state.ranker.gains(target, [r["source_id"] for r in results[:GAIN_TOP]], nearest)
    for result in results[:GAIN_TOP]:
        gain = gains.get(result["source_id"])
        if gain is not None:
            result["gain"] = {"expected": gain.expected, "low": gain.low, "high": gain.high}
