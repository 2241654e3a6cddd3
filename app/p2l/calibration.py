"""Refitting the ranking's parameters (measure, lambda) on evidence from finished fine-tunes.

Evidence: for each target, the test (or validation) accuracy each fine-tuned source
reached. Parameters are judged by regret: on each target, the best accuracy seen minus
the accuracy of the source those parameters rank first among the sources tried on it.
Only targets with two or more sources tried say anything about a ranking.

``fit`` picks, from a fixed grid (the vectorised measures x issue 6's lambdas), the
parameters with the lowest mean regret; ties keep the parameters in force, then the grid
order. ``leave_one_target_out`` tells what the refit is worth on a target it did not see:
each target scored under parameters fitted on the others (the current ones when there
are no others). A refit uses ``guarded_fit``: the parameters in force stay unless
refitting beats them leave-one-target-out (bench/calibration.py: on few targets an
unguarded refit chases noise and loses to the bundled defaults). Refine settings
(two-stage ranking) are not refitted: the evidence holds no per-candidate measure of the
sources on the target.
"""

from collections.abc import Collection
from dataclasses import dataclass

import numpy as np

from app.measures import CALIBRATED_MEASURES, Measure
from app.p2l.scoring import ScoringParams, SignatureIndex
from app.p2l.signature import DatasetSignature

GRID_LAMBDAS = (0.0, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2)


@dataclass(frozen=True)
class RankingParams:
    """What a calibration sets: the P2L measure and the weight of log(source size)."""

    measure: Measure
    lam: float


@dataclass
class TargetEvidence:
    """One target's signature and the accuracy each source fine-tuned on it reached."""

    target: DatasetSignature
    accuracy: dict[str, float]  # source id -> mean accuracy over its fine-tunes


def grid(current: RankingParams) -> list[RankingParams]:
    """The parameters a refit chooses among, the current ones first (they win ties)."""
    candidates = [RankingParams(m, lam) for m in CALIBRATED_MEASURES for lam in GRID_LAMBDAS]
    return [current, *(c for c in candidates if c != current)]


def regret_table(
    evidence: list[TargetEvidence],
    sources: dict[str, DatasetSignature],
    candidates: list[RankingParams],
    eps: float,
    emd_gamma: float,
    claimed: Collection[str] = (),
    claimed_images_cap: int | None = None,
) -> np.ndarray:
    """``(targets, candidates)`` regrets: best accuracy minus that of each candidate's pick,
    over the sources whose signatures are given (others cannot be ranked). The sources in
    ``claimed`` weigh at most ``claimed_images_cap`` images, as rankings weigh them."""
    index = SignatureIndex(eps=eps, claimed_images_cap=claimed_images_cap)
    for source_id, signature in sources.items():
        index.add(source_id, signature, claimed=source_id in claimed)
    table = np.zeros((len(evidence), len(candidates)))
    for t, item in enumerate(evidence):
        tried = [s for s in item.accuracy if s in sources]
        best = max(item.accuracy[s] for s in tried)
        for c, params in enumerate(candidates):
            top = index.rank(
                item.target, "p2l", params.measure, ScoringParams(params.lam, eps, emd_gamma),
                source_ids=tried, top_k=1,
            )[0]  # fmt: skip
            table[t, c] = best - item.accuracy[top.source_id]
    return table


def fit(table: np.ndarray, targets: np.ndarray | None = None) -> int:
    """The candidate (column) with the lowest mean regret over ``targets`` (rows; all by
    default); the first on a tie, 0 (the current parameters) with no target."""
    rows = table if targets is None else table[targets]
    if len(rows) == 0:
        return 0
    return int(np.argmin(rows.mean(axis=0)))  # argmin keeps the first of equal means


def leave_one_target_out(table: np.ndarray) -> float | None:
    """Mean regret of each target under the parameters fitted on the other targets."""
    if len(table) == 0:
        return None
    everyone = np.arange(len(table))
    return float(np.mean([table[t, fit(table, everyone[everyone != t])] for t in everyone]))


def informative(evidence: list[TargetEvidence], sources: set[str]) -> list[TargetEvidence]:
    """The targets on which two or more rankable sources were fine-tuned."""
    return [e for e in evidence if sum(s in sources for s in e.accuracy) >= 2]


def guarded_fit(table: np.ndarray, targets: np.ndarray | None = None) -> int:
    """``fit``, but the parameters in force (column 0) stay unless refitting beats them
    leave-one-target-out on ``targets``: a refit must show it generalises before it is used."""
    rows = table if targets is None else table[targets]
    best = fit(rows)
    if best == 0:
        return 0
    loto = leave_one_target_out(rows)
    return best if loto is not None and loto < rows[:, 0].mean() else 0
