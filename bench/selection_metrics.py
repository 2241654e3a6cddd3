"""How well a ranking picks: metrics of one method on one target, and their summary.

Rules, fixed before any run:
- *best*: the source with the highest mean test accuracy over its seeds.
- *within noise*: a source whose mean is at most two standard errors (of the difference)
  below the best's: ``best - s <= 2 * sqrt(se_best^2 + se_s^2)``.
- *regret*: best mean minus the pick's mean (accuracy points lost by trusting the method).
- *weighted tau*: scipy's weighted Kendall tau between the method's scores and the mean
  accuracies (hyperbolic weights: disagreements near the top count most).
- *gain over random*: the pick's mean minus the mean over all sources (what a uniformly
  random pick gets on average); *gain over scratch*: the pick's mean minus training from
  scratch. The ratios are the paper's OP/RDS and OP/A-phi.
- *intervals*: a paired bootstrap over target *families* (targets of one family, such as
  ``crawl`` and ``crawl_fewshot``, are not independent): each draw takes as many families as
  there are, with replacement, and every target of each drawn family; a method's mean is
  the mean over the drawn targets. 90% percentile intervals from 10,000 draws with a fixed
  seed. The draws depend only on the set of families, so two methods judged on the same
  targets share them: a difference between two methods is bootstrapped pair by pair
  (target by target), and a method minus itself is exactly 0. A difference is *resolved*
  when its interval excludes 0.
- *noise floor*: per target, the source with the best seed-0 accuracy, scored by the mean
  of its other seeds; its regret is what one seed's noise alone costs a perfect judge of
  seed 0. Differences below it are not resolvable by this ground truth.
- *near ties*: per target, the sources whose mean is within one pooled seed SD of the best.
"""

import math
from collections.abc import Mapping, Sequence
from functools import cache
from typing import Any

import numpy as np
from scipy.stats import weightedtau

from bench.ground_truth import SCRATCH, CellStats, within_noise

BOOTSTRAP_DRAWS = 10_000
BOOTSTRAP_LEVEL = 0.90
BOOTSTRAP_SEED = 0


def second_stage(
    first: Mapping[str, float], second: Mapping[str, float], top: int
) -> dict[str, float]:
    """Scores (higher first) of ``first``'s ranking with its top ``top`` re-ordered by
    ``second``, as the service's ``refine`` orders them: the shortlist by the second-stage
    score, then the rest in the first stage's order."""
    ranked = sorted(first, key=lambda s: -first[s])
    shortlist = sorted(ranked[:top], key=lambda s: -second[s])
    order = shortlist + ranked[top:]
    return {s: float(len(order) - i) for i, s in enumerate(order)}


def pick_metrics(scores: dict[str, float], stats: dict[str, CellStats]) -> dict:
    """Quality of the ranking ``scores`` (higher first) on one target."""
    names = [s for s in stats if s != SCRATCH]
    means = {s: stats[s].mean for s in names}
    best = max(names, key=means.get)
    ranked = sorted(names, key=lambda s: -scores[s])
    pick = ranked[0]
    tied = within_noise(stats)
    mean_all = float(np.mean(list(means.values())))
    tau = weightedtau([scores[s] for s in names], [means[s] for s in names]).statistic
    return {
        "pick": pick,
        "pick_accuracy": means[pick],
        "top1": pick == best,
        "top1_within_noise": pick in tied,
        "top3": best in ranked[:3],
        "top3_within_noise": any(s in tied for s in ranked[:3]),
        "top3_names": ranked[:3],
        "rank_of_best": ranked.index(best) + 1,
        "regret": means[best] - means[pick],
        "weighted_tau": float(tau) if np.isfinite(tau) else 0.0,
        "gain_over_random": means[pick] - mean_all,
        "gain_over_scratch": means[pick] - stats[SCRATCH].mean,
        "op_over_rds": means[pick] / mean_all,
        "op_over_a_phi": means[pick] / max(stats[SCRATCH].mean, 1e-9),
    }


def random_metrics(stats: dict[str, CellStats]) -> dict:
    """The expected metrics of a uniformly random pick."""
    names = [s for s in stats if s != SCRATCH]
    means = np.array([stats[s].mean for s in names])
    k = len(names)
    mean_all = float(means.mean())
    return {
        "pick": "(random)",
        "pick_accuracy": mean_all,
        "top1": 1 / k,
        "top1_within_noise": len(within_noise(stats)) / k,
        "top3": min(3 / k, 1.0),
        "top3_within_noise": 1 - _none_in_random_three(k, len(within_noise(stats))),
        "rank_of_best": (k + 1) / 2,
        "regret": float(means.max()) - mean_all,
        "weighted_tau": 0.0,
        "gain_over_random": 0.0,
        "gain_over_scratch": mean_all - stats[SCRATCH].mean,
        "op_over_rds": 1.0,
        "op_over_a_phi": mean_all / max(stats[SCRATCH].mean, 1e-9),
    }


def _none_in_random_three(k: int, good: int) -> float:
    """Probability that 3 sources drawn without replacement from ``k`` miss all ``good``."""
    draws = min(3, k)
    return float(np.prod([(k - good - i) / (k - i) for i in range(draws)]).clip(0))


SUMMARY_KEYS = (
    "top1", "top1_within_noise", "top3", "top3_within_noise", "regret", "weighted_tau",
    "gain_over_random", "gain_over_scratch", "op_over_rds", "op_over_a_phi",
)  # fmt: skip


def summarise(rows: list[dict]) -> dict[str, float]:
    """Means over targets of every metric."""
    return {key: float(np.mean([float(r[key]) for r in rows])) for key in SUMMARY_KEYS}


# --- intervals: a paired bootstrap over families -------------------------------------------


@cache
def family_counts(families: tuple[str, ...], draws: int, seed: int) -> np.ndarray:
    """How often each of ``families`` is drawn in each bootstrap draw (``draws`` x families).

    Each draw takes ``len(families)`` families with replacement. The result depends only on
    the families (and ``draws``, ``seed``): methods judged on the same targets share draws."""
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(families), size=(draws, len(families)))
    counts = np.zeros((draws, len(families)), dtype=np.int32)
    np.add.at(counts, (np.arange(draws)[:, None], picks), 1)
    counts.setflags(write=False)
    return counts


def bootstrap_means(
    values: Mapping[str, float],
    family_of: Mapping[str, str],
    draws: int = BOOTSTRAP_DRAWS,
    seed: int = BOOTSTRAP_SEED,
) -> np.ndarray:
    """The mean of ``values`` (one per target) in each draw of families: every target of a
    family drawn k times counts k times."""
    targets = list(values)
    families = tuple(sorted({family_of[t] for t in targets}))
    position = {f: i for i, f in enumerate(families)}
    weights = family_counts(families, draws, seed)[:, [position[family_of[t]] for t in targets]]
    numbers = np.array([float(values[t]) for t in targets])
    return np.asarray(weights @ numbers / weights.sum(axis=1))


def percentile_interval(samples: np.ndarray, level: float = BOOTSTRAP_LEVEL) -> list[float]:
    """The central ``level`` percentile interval ``[lo, hi]`` of bootstrap samples."""
    tail = (1 - level) / 2
    lo, hi = np.quantile(samples, [tail, 1 - tail])
    return [float(lo), float(hi)]


def mean_interval(
    values: Mapping[str, float],
    family_of: Mapping[str, str],
    draws: int = BOOTSTRAP_DRAWS,
    level: float = BOOTSTRAP_LEVEL,
    seed: int = BOOTSTRAP_SEED,
) -> list[float]:
    """The family-bootstrap interval of the mean of ``values`` over targets."""
    return percentile_interval(bootstrap_means(values, family_of, draws, seed), level)


def paired_difference(
    values: Mapping[str, float],
    baseline: Mapping[str, float],
    family_of: Mapping[str, str],
    draws: int = BOOTSTRAP_DRAWS,
    level: float = BOOTSTRAP_LEVEL,
    seed: int = BOOTSTRAP_SEED,
) -> dict[str, Any] | None:
    """Mean of ``values - baseline`` over the targets both have, its interval (the same
    draws for both: the per-target differences are resampled) and whether the interval
    excludes 0. None when they share no target."""
    common = [t for t in values if t in baseline]
    if not common:
        return None
    differences = {t: float(values[t]) - float(baseline[t]) for t in common}
    lo, hi = mean_interval(differences, family_of, draws, level, seed)
    return {
        "mean": float(np.mean(list(differences.values()))),
        "interval": [lo, hi],
        "resolved": bool(lo > 0 or hi < 0),
        "targets": len(common),
    }


def method_summaries(
    rows: Mapping[str, Mapping[str, dict]],
    on: Sequence[str],
    family_of: Mapping[str, str],
    baselines: Mapping[str, str],
    draws: int = BOOTSTRAP_DRAWS,
    level: float = BOOTSTRAP_LEVEL,
    seed: int = BOOTSTRAP_SEED,
) -> dict[str, dict[str, Any]]:
    """Every row's summary over the targets ``on`` that it covers (a row may cover some
    only; one that covers none is left out), with its targets and families, the interval of
    its mean regret (``regret_interval``) and, per ``baselines`` entry (output key -> row
    name), its paired difference in regret to that row (None where that row is absent)."""
    out: dict[str, dict[str, Any]] = {}
    for name, by_target in rows.items():
        covered = [t for t in on if t in by_target]
        if not covered:
            continue
        regrets = {t: float(by_target[t]["regret"]) for t in covered}
        summary: dict[str, Any] = dict(summarise([by_target[t] for t in covered]))
        summary["targets"] = len(covered)
        summary["families"] = len({family_of[t] for t in covered})
        summary["regret_interval"] = mean_interval(regrets, family_of, draws, level, seed)
        for key, baseline in baselines.items():
            other = rows.get(baseline, {})
            summary[key] = paired_difference(
                regrets,
                {t: float(other[t]["regret"]) for t in covered if t in other},
                family_of, draws, level, seed,
            )  # fmt: skip
        out[name] = summary
    return out


# --- the noise floor and near ties ---------------------------------------------------------


def noise_floor_metrics(stats: dict[str, CellStats]) -> dict:
    """A perfect judge of seed 0: the source with the best seed-0 accuracy (``runs[0]``:
    ``target_stats`` keeps seeds in order, and every source has seed 0), scored by the mean
    of its other seeds. A pick with no other seed falls back to its seed-0 accuracy
    (``fallback``). Sources tied on seed 0 are picked uniformly at random: the pick's
    figures are the means over the tied sources (``tied_picks``). The ranking metrics
    (top-3, rank of the best, weighted tau) are those of the seed-0 accuracies."""
    names = [s for s in stats if s != SCRATCH]
    first = {s: float(stats[s].runs[0]) for s in names}
    top = max(first.values())
    picks = [s for s in names if first[s] == top]
    held_out = {s: float(np.mean(stats[s].runs[1:])) if len(stats[s].runs) > 1 else first[s]
                for s in picks}  # fmt: skip
    score = float(np.mean(list(held_out.values())))
    means = {s: stats[s].mean for s in names}
    best = max(names, key=means.get)  # type: ignore[arg-type]
    tied = within_noise(stats)
    mean_all = float(np.mean(list(means.values())))
    scratch = stats[SCRATCH].mean
    row = pick_metrics(first, stats)
    row.update(
        pick=picks[0],
        tied_picks=picks,
        pick_accuracy=score,
        top1=float(np.mean([s == best for s in picks])),
        top1_within_noise=float(np.mean([s in tied for s in picks])),
        regret=means[best] - score,
        gain_over_random=score - mean_all,
        gain_over_scratch=score - scratch,
        op_over_rds=score / mean_all,
        op_over_a_phi=score / max(scratch, 1e-9),
        fallback=any(len(stats[s].runs) < 2 for s in picks),
    )
    return row


def seed_sd(stats: dict[str, CellStats]) -> float:
    """The target's pooled seed SD: ``target_stats`` gives every cell of a target the
    standard error ``sd / sqrt(seeds)`` with one pooled ``sd`` (read off the best source)."""
    names = [s for s in stats if s != SCRATCH]
    best = stats[max(names, key=lambda s: stats[s].mean)]
    return best.stderr * math.sqrt(len(best.runs))


def near_ties(stats: dict[str, CellStats]) -> int:
    """How many sources (the best included) have a mean within one pooled seed SD of the
    best mean."""
    sd = seed_sd(stats)
    means = [c.mean for s, c in stats.items() if s != SCRATCH]
    top = max(means)
    return sum(top - m <= sd for m in means)


def count_summary(counts: Sequence[float]) -> dict[str, float | int]:
    """Mean and median of per-target counts, and how many targets."""
    return {
        "mean": float(np.mean(counts)),
        "median": float(np.median(counts)),
        "targets": len(counts),
    }
