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
"""

import numpy as np
from scipy.stats import weightedtau

from bench.ground_truth import SCRATCH, CellStats, within_noise


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
