"""Calibration use cases: record what finished fine-tunes showed, refit the ranking's
measure and lambda on it (app.p2l.calibration), and say which parameters are in force."""

import logging
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sqlalchemy import ColumnElement, func, select
from sqlalchemy.orm import Session

from app.config import Settings
from app.errors import Conflict
from app.measures import Measure, RankingMethod
from app.models import Calibration, Dataset, Evidence, Job, Project, Role, Source
from app.p2l.calibration import (
    RankingParams,
    TargetEvidence,
    fit,
    grid,
    guarded_fit,
    informative,
    leave_one_target_out,
    regret_table,
)
from app.p2l.scoring import ScoringParams
from app.p2l.signature import DatasetSignature
from app.pagination import paginate
from app.services.access import ALL_PROJECTS
from app.services.context import Context
from app.services.datasets import dataset_signature
from app.services.sources import rankable_signature
from app.store import ArtifactStore

logger = logging.getLogger("p2l.calibration")

NOT_REFITTED = (
    "refine (the two-stage ranking) is not refitted: the evidence holds no per-candidate "
    "measure of the sources on its targets; a ranking refines only when asked"
)


@dataclass(frozen=True)
class Constants:
    """The bundled defaults and the score's fixed constants (the service's settings)."""

    defaults: RankingParams
    eps: float
    emd_gamma: float
    claimed_images_cap: int | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> "Constants":
        """The constants a service or worker runs with."""
        return cls(
            RankingParams(settings.p2l_measure, settings.p2l_lambda),
            settings.p2l_eps,
            settings.emd_gamma,
            settings.claimed_images_cap,
        )


def evidence_of(
    store: ArtifactStore, job: Job, dataset: Dataset, source: Source, report: dict[str, Any]
) -> Evidence | None:
    """What a successful fine-tune showed, as a row to add; None when it measured no
    accuracy (no test and no validation split). Reads the target's signature from the store."""
    split = "test" if report.get("test_accuracy") is not None else "val"
    accuracy = report.get(f"{split}_accuracy")
    if accuracy is None:
        return None
    baseline = report.get("baseline") or {}
    return Evidence(
        id=uuid.uuid4().hex,
        project_id=job.project_id,  # whether it reaches the shared calibration: the project's
        job_id=job.id,
        target_dataset_id=dataset.id,
        target_signature=dataset_signature(store, dataset).to_bytes(),
        reference_sha256=dataset.reference_sha256,
        source_id=source.id,
        source_name=source.name,
        accuracy=float(accuracy),
        accuracy_split="test" if split == "test" else "validation",
        schedule=report.get("schedule") or {},
        baseline_accuracy=baseline.get(f"{split}_accuracy"),
    )


def list_evidence(
    session: Session, page_size: int, page_token: str | None
) -> tuple[list[Evidence], str | None]:
    """Newest first, one page at a time, without the signatures (they can be large)."""
    return paginate(session, Evidence, page_size, page_token, (Evidence.target_signature,))


def current_calibration(session: Session, reference_sha256: str) -> Calibration | None:
    """The newest calibration fitted under this reference network (in force while it is
    active), or None: the bundled defaults apply."""
    return session.scalars(
        select(Calibration)
        .where(Calibration.reference_sha256 == reference_sha256)
        .order_by(Calibration.created_at.desc(), Calibration.id)
        .limit(1)
    ).first()


def params_in_force(
    session: Session, defaults: RankingParams, reference_sha256: str
) -> tuple[RankingParams, str | None]:
    """The ranking parameters in force and the id of the calibration that set them."""
    calibration = current_calibration(session, reference_sha256)
    return _params_of(calibration, defaults), calibration.id if calibration else None


def _params_of(calibration: Calibration | None, defaults: RankingParams) -> RankingParams:
    if calibration is None:
        return defaults
    return RankingParams(calibration.measure, calibration.lam)  # type: ignore[arg-type]


def ranking_params(
    ctx: Context,
    method: RankingMethod = "p2l",
    measure: Measure | None = None,
    lam: float | None = None,
) -> tuple[ScoringParams, Measure, str | None]:
    """Score constants and measure for a ranking: the request's own where given, else,
    for ``p2l`` (what calibrations are fitted for; ``learned`` starts from it), the
    calibration's in force under the active reference network, else the bundled defaults;
    and that calibration's id when it supplied either."""
    constants = Constants.from_settings(ctx.settings)
    in_force, calibration_id = constants.defaults, None
    if method in ("p2l", "learned") and (measure is None or lam is None):
        in_force, calibration_id = params_in_force(
            ctx.session, constants.defaults, ctx.reference.weights_sha256
        )
    scoring = ScoringParams(
        lam=in_force.lam if lam is None else lam, eps=constants.eps, emd_gamma=constants.emd_gamma
    )
    return scoring, measure or in_force.measure, calibration_id


@dataclass
class EvidenceSummary:
    """The evidence usable under one reference network, as the refit sees it."""

    rows: int
    targets: int
    usable: list[TargetEvidence]  # targets with two or more rankable sources tried
    sources: dict[str, DatasetSignature]
    claimed: set[str] = field(default_factory=set)  # sources whose image counts are claimed


def shared_evidence() -> ColumnElement[bool]:
    """The evidence rows of the projects that share theirs with the calibration."""
    return Evidence.project_id.in_(select(Project.id).where(Project.share_evidence.is_(True)))


def gather_evidence(
    session: Session, store: ArtifactStore, reference_sha256: str
) -> EvidenceSummary:
    """The shared calibration's evidence made under ``reference_sha256`` (of the projects
    that share theirs), per target (mean accuracy per source), with the signatures of the
    sources still in the zoo. Only aggregates of it are ever shown (regrets, counts): no
    project learns another's targets through it."""
    rows = list(
        session.scalars(
            select(Evidence)
            .where(Evidence.reference_sha256 == reference_sha256, shared_evidence())
            .execution_options(**{ALL_PROJECTS: True})
        )
    )
    by_target: dict[str, list[Evidence]] = defaultdict(list)
    for row in rows:
        by_target[row.target_dataset_id].append(row)
    source_ids = {row.source_id for row in rows}
    rows_of_sources = session.scalars(
        select(Source)
        .where(Source.id.in_(source_ids), Source.reference_sha256 == reference_sha256)
        .execution_options(**{ALL_PROJECTS: True})
    ).all()
    sources = {
        s.id: signature
        for s in rows_of_sources
        if (signature := rankable_signature(store, s.id, s.artifact_key, s.reference_sha256))
    }
    claimed = {s.id for s in rows_of_sources if s.image_counts == "claimed"}
    evidence = []
    for items in by_target.values():
        # Test and validation accuracies are not comparable (validation chose the
        # checkpoint): a target's sources are compared on test accuracy where any job had it.
        if any(item.accuracy_split == "test" for item in items):
            items = [item for item in items if item.accuracy_split == "test"]
        accuracy: dict[str, list[float]] = defaultdict(list)
        for item in items:
            accuracy[item.source_id].append(item.accuracy)
        newest = max(items, key=lambda e: e.created_at)
        evidence.append(
            TargetEvidence(
                DatasetSignature.from_bytes(newest.target_signature),
                {s: float(np.mean(values)) for s, values in accuracy.items()},
            )
        )
    return EvidenceSummary(
        len(rows), len(by_target), informative(evidence, set(sources)), sources, claimed
    )


def assess(
    summary: EvidenceSummary, current: RankingParams, constants: Constants
) -> dict[str, Any]:
    """Regret on the evidence of the parameters in force, of the bundled defaults, and of
    refitting (leave one target out); None each where no target is usable."""
    candidates = grid(current)
    if constants.defaults not in candidates:
        candidates.append(constants.defaults)
    table = regret_table(
        summary.usable, summary.sources, candidates, constants.eps, constants.emd_gamma,
        summary.claimed, constants.claimed_images_cap,
    )  # fmt: skip
    usable = bool(len(table))
    loto = leave_one_target_out(table)
    chosen = guarded_fit(table)
    best = fit(table)
    if not usable:
        decision = "no usable target: the parameters in force stay"
    elif chosen != 0:
        decision = (
            f"refitting beats the parameters in force leave-one-target-out ({loto:.4f} < "
            f"{table[:, 0].mean():.4f}): a refit switches to {_words(candidates[chosen])}"
        )
    elif best == 0:
        decision = "the parameters in force have the lowest regret: a refit keeps them"
    else:
        decision = (
            f"{_words(candidates[best])} fits the evidence better in-sample, but refitting "
            f"does not beat the parameters in force leave-one-target-out ({loto:.4f} >= "
            f"{table[:, 0].mean():.4f}): a refit keeps them"
        )
    return {
        "current": float(table[:, 0].mean()) if usable else None,
        "bundled_defaults": (
            float(table[:, candidates.index(constants.defaults)].mean()) if usable else None
        ),
        "refit_in_sample": float(table[:, best].mean()) if usable else None,
        "refit_leave_one_target_out": loto,
        "candidates": len(candidates),
        "decision": decision,
        "chosen": candidates[chosen],
    }


def _words(params: RankingParams) -> str:
    return f"{params.measure}, lambda {params.lam:g}"


def refit(ctx: Context) -> Calibration:
    """Refit measure and lambda on the evidence under the active reference network and put
    the result in force, committed (see ``_refit``); Conflict while no target has evidence
    from two or more sources. Operators only: every project ranks with it."""
    ctx.principal.require(Role.OPERATOR, "refit the shared calibration")
    session, reference_sha256 = ctx.session, ctx.reference.weights_sha256
    summary = gather_evidence(session, ctx.store, reference_sha256)
    calibration = _refit(
        session, reference_sha256, Constants.from_settings(ctx.settings), "refit", summary
    )
    session.commit()
    return calibration


def _refit(
    session: Session,
    reference_sha256: str,
    constants: Constants,
    trigger: str,
    summary: EvidenceSummary,
) -> Calibration:
    """Refit measure and lambda on ``summary`` (guarded: a switch must win leave one
    target out; see app.p2l.calibration) and record the result as the calibration in force
    (committed by the caller); Conflict while no target has usable evidence."""
    if not summary.usable:
        raise Conflict(
            f"nothing to refit on: {summary.rows} fine-tune(s) on {summary.targets} target(s), "
            "but no target has evidence from two or more sources still in the zoo; fine-tune "
            "a target from another source first"
        )
    previous = current_calibration(session, reference_sha256)
    scores = assess(summary, _params_of(previous, constants.defaults), constants)
    chosen: RankingParams = scores.pop("chosen")
    calibration = _put_in_force(
        session, previous, reference_sha256, chosen, trigger, summary, scores
    )
    logger.info(
        "calibration %s (%s): %s, lambda %g on %d targets", calibration.id, trigger,
        chosen.measure, chosen.lam, len(summary.usable),
    )  # fmt: skip
    return calibration


def reset(ctx: Context) -> Calibration:
    """Put the bundled defaults back in force, committed, as a calibration of their own:
    later rankings record it, and an automatic refit waits for a new target. Operators only."""
    ctx.principal.require(Role.OPERATOR, "reset the shared calibration")
    session, reference_sha256 = ctx.session, ctx.reference.weights_sha256
    summary = gather_evidence(session, ctx.store, reference_sha256)
    previous = current_calibration(session, reference_sha256)
    defaults = Constants.from_settings(ctx.settings).defaults
    calibration = _put_in_force(
        session, previous, reference_sha256, defaults, "reset", summary, None
    )
    session.commit()
    return calibration


def _put_in_force(
    session: Session,
    previous: Calibration | None,
    reference_sha256: str,
    params: RankingParams,
    trigger: str,
    summary: EvidenceSummary,
    regret: dict[str, Any] | None,
) -> Calibration:
    """Add (and flush) the calibration that is in force from now on, naming ``previous``,
    the one in force until now."""
    calibration = Calibration(
        id=uuid.uuid4().hex,
        reference_sha256=reference_sha256,
        measure=params.measure,
        lam=params.lam,
        trigger=trigger,
        evidence_count=summary.rows,
        targets=len(summary.usable),
        report={
            "regret": regret,
            "previous": {
                "calibration_id": previous.id if previous is not None else None,
                "measure": previous.measure if previous is not None else None,
                "lambda": previous.lam if previous is not None else None,
            },
        },
    )
    session.add(calibration)
    session.flush()
    return calibration


def refit_if_due(
    session: Session, store: ArtifactStore, settings: Settings, reference_sha256: str
) -> None:
    """After a fine-tune: refit (trigger "auto") and commit once
    ``calibration_auto_refit_targets`` (> 0) targets have usable evidence and the
    calibration in force was fitted on fewer of them."""
    after = settings.calibration_auto_refit_targets
    if after <= 0:
        return
    calibration = current_calibration(session, reference_sha256)
    fitted_on = calibration.targets if calibration is not None else 0
    # Cheap first: distinct targets with two or more sources tried, before any signature.
    pairs = (
        select(Evidence.target_dataset_id)
        .where(Evidence.reference_sha256 == reference_sha256, shared_evidence())
        .group_by(Evidence.target_dataset_id)
        .having(func.count(func.distinct(Evidence.source_id)) >= 2)
    )
    if len(session.scalars(pairs).all()) < max(after, fitted_on + 1):
        return
    summary = gather_evidence(session, store, reference_sha256)
    if len(summary.usable) >= after and len(summary.usable) > fitted_on:
        _refit(session, reference_sha256, Constants.from_settings(settings), "auto", summary)
        session.commit()


def calibration_status(ctx: Context) -> dict[str, Any]:
    """What ``GET /v1/calibration`` shows: the parameters in force, the evidence, and regrets."""
    session, store, reference_sha256 = ctx.session, ctx.store, ctx.reference.weights_sha256
    constants = Constants.from_settings(ctx.settings)
    calibration = current_calibration(session, reference_sha256)
    current = _params_of(calibration, constants.defaults)
    summary = gather_evidence(session, store, reference_sha256)
    scores = assess(summary, current, constants)
    scores.pop("chosen")
    return {
        "calibration_id": calibration.id if calibration is not None else None,
        "created_at": calibration.created_at if calibration is not None else None,
        "trigger": calibration.trigger if calibration is not None else None,
        "params": {"measure": current.measure, "lambda": current.lam, "refine": None},
        "bundled_defaults": {
            "measure": constants.defaults.measure,
            "lambda": constants.defaults.lam,
        },
        "evidence": {
            "fine_tunes": summary.rows,
            "targets": summary.targets,
            "usable_targets": len(summary.usable),
        },
        "regret": scores,
        "fitted_on": (
            {
                "fine_tunes": calibration.evidence_count,
                "targets": calibration.targets,
                "regret": calibration.report.get("regret"),
            }
            if calibration is not None
            else None
        ),
        "auto_refit_after_targets": ctx.settings.calibration_auto_refit_targets,
        "notes": [NOT_REFITTED],
    }
