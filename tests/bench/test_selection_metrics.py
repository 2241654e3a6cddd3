"""The selection benchmark's statistics (bench/selection_metrics.py): the paired bootstrap
over target families, the noise-floor row and near ties, on small hand-made tables."""

import math

import numpy as np
import pytest

from bench.ground_truth import SCRATCH, CellStats
from bench.selection_metrics import (
    bootstrap_means,
    family_counts,
    mean_interval,
    method_summaries,
    near_ties,
    noise_floor_metrics,
    paired_difference,
    second_stage,
    seed_sd,
)

pytestmark = pytest.mark.unit

SD = 0.02  # the pooled seed SD of the hand-made targets below


def cell(*runs: float) -> CellStats:
    """A cell as ``target_stats`` makes it: standard error = pooled SD / sqrt(seeds)."""
    return CellStats(list(runs), SD / math.sqrt(len(runs)), None)


def one_family_each(values: list[float]) -> tuple[dict[str, float], dict[str, str]]:
    targets = {f"t{i}": v for i, v in enumerate(values)}
    return targets, {t: f"family {t}" for t in targets}


def test_the_interval_contains_the_mean() -> None:
    rng = np.random.default_rng(1)
    values = {f"t{i}": float(v) for i, v in enumerate(rng.uniform(0, 0.1, 24))}
    family_of = {t: f"f{i // 3}" for i, t in enumerate(values)}  # 8 families of 3
    lo, hi = mean_interval(values, family_of)
    assert lo < np.mean(list(values.values())) < hi
    assert hi - lo > 0.005  # an interval, not a point


def test_the_interval_is_wider_for_fewer_families() -> None:
    few = one_family_each([0.0, 0.1] * 2)
    many = one_family_each([0.0, 0.1] * 20)
    lo_few, hi_few = mean_interval(*few)
    lo_many, hi_many = mean_interval(*many)
    assert hi_few - lo_few > 2 * (hi_many - lo_many)
    # The same 40 targets in 4 families of near-twins: 4 independent facts, not 40.
    values, _ = many
    twins = {t: f"f{i % 4}" for i, t in enumerate(values)}
    lo_twins, hi_twins = mean_interval(values, twins)
    assert hi_twins - lo_twins > 2 * (hi_many - lo_many)


def test_families_are_resampled_as_wholes() -> None:
    # a1 and a2 are one family: a draw takes both or neither, so every draw's mean is one of
    # the means of whole families (0, 0.5 or 1), never 0.25 or 0.75.
    values = {"a1": 1.0, "a2": 1.0, "b1": 0.0, "b2": 0.0}
    family_of = {"a1": "a", "a2": "a", "b1": "b", "b2": "b"}
    means = bootstrap_means(values, family_of)
    assert set(np.round(means, 9)) == {0.0, 0.5, 1.0}
    # Two families with the same mean: every draw has that mean, however the targets differ.
    values = {"a1": 0.9, "a2": 0.1, "b1": 0.5, "b2": 0.5}
    assert mean_interval(values, family_of) == pytest.approx([0.5, 0.5], abs=1e-12)


def test_each_draw_takes_as_many_families_as_there_are() -> None:
    counts = family_counts(("a", "b", "c"), 1000, 0)
    assert counts.shape == (1000, 3)
    assert (counts.sum(axis=1) == 3).all()
    assert (counts == 3).any(axis=1).sum() > 0  # with replacement: one family thrice


def test_a_method_minus_itself_is_exactly_zero() -> None:
    rng = np.random.default_rng(2)
    values = {f"t{i}": float(v) for i, v in enumerate(rng.uniform(0, 0.2, 12))}
    family_of = {t: f"f{i // 2}" for i, t in enumerate(values)}
    assert paired_difference(values, dict(values), family_of) == {
        "mean": 0.0,
        "interval": [0.0, 0.0],
        "resolved": False,
        "targets": 12,
    }


def test_differences_are_paired_target_by_target() -> None:
    # A method 0.01 worse on every target: unpaired intervals of the two means overlap, the
    # paired difference is exactly 0.01 in every draw, and resolved.
    rng = np.random.default_rng(3)
    values = {f"t{i}": float(v) for i, v in enumerate(rng.uniform(0, 0.2, 12))}
    family_of = {t: f"f{i // 2}" for i, t in enumerate(values)}
    worse = {t: v + 0.01 for t, v in values.items()}
    difference = paired_difference(worse, values, family_of)
    assert difference is not None
    assert difference["interval"] == pytest.approx([0.01, 0.01])
    assert difference["resolved"]
    assert mean_interval(worse, family_of)[0] < mean_interval(values, family_of)[1]


def metrics(regret: float) -> dict[str, float]:
    return {key: 0.0 for key in ("top1", "top1_within_noise", "top3", "top3_within_noise",
            "weighted_tau", "gain_over_random", "gain_over_scratch", "op_over_rds",
            "op_over_a_phi")} | {"regret": regret}  # fmt: skip


def test_every_row_gets_intervals_over_the_targets_it_covers() -> None:
    family_of = {"a1": "a", "a2": "a", "b": "b", "c": "c"}
    rows = {
        "p2l": {t: metrics(r) for t, r in zip(family_of, (0.0, 0.1, 0.2, 0.3), strict=True)},
        "random": {t: metrics(0.5) for t in family_of},
        "report only": {"a2": metrics(0.1), "c": metrics(0.1)},
        "elsewhere": {"d": metrics(0.1)},
    }
    baselines = {"difference_to_p2l": "p2l", "difference_to_random": "random"}
    summary = method_summaries(rows, list(family_of), family_of, baselines)
    assert list(summary) == ["p2l", "random", "report only"]  # no target here: left out
    assert summary["p2l"]["difference_to_p2l"]["interval"] == [0.0, 0.0]
    partial = summary["report only"]
    assert (partial["targets"], partial["families"]) == (2, 2)
    assert partial["regret"] == pytest.approx(0.1)
    assert partial["difference_to_p2l"]["mean"] == pytest.approx(-0.1)  # 0.1 - mean(0.1, 0.3)
    assert partial["difference_to_random"]["resolved"]
    lo, hi = summary["p2l"]["regret_interval"]
    assert lo <= summary["p2l"]["regret"] <= hi
    assert summary["random"]["difference_to_p2l"]["resolved"]
    # A baseline row that covers none of a row's targets: no difference, no crash.
    assert method_summaries(rows, ["a1"], family_of, {"vs": "elsewhere"})["p2l"]["vs"] is None


# --- the noise floor and near ties ---------------------------------------------------------


def table(**sources: CellStats) -> dict[str, CellStats]:
    return {**sources, SCRATCH: cell(0.5, 0.5, 0.5)}


def test_the_noise_floor_scores_the_seed_0_winner_on_its_other_seeds() -> None:
    stats = table(
        lucky=cell(0.80, 0.70, 0.72),  # best on seed 0, mean 0.74
        best=cell(0.78, 0.79, 0.80),  # best mean, 0.79
        weak=cell(0.60),
    )
    row = noise_floor_metrics(stats)
    assert row["pick"] == "lucky"
    assert row["pick_accuracy"] == pytest.approx(0.71)  # seeds 1 and 2, not seed 0
    assert row["regret"] == pytest.approx(0.79 - 0.71)
    assert row["top1"] == 0.0
    assert not row["fallback"]


def test_a_noise_floor_pick_with_no_other_seed_falls_back_to_seed_0() -> None:
    stats = table(alone=cell(0.82), best=cell(0.81, 0.85, 0.86))
    row = noise_floor_metrics(stats)
    assert row["pick"] == "alone"
    assert row["fallback"]
    assert row["pick_accuracy"] == pytest.approx(0.82)
    assert row["regret"] == pytest.approx(0.84 - 0.82)


def test_sources_tied_on_seed_0_are_a_random_pick() -> None:
    stats = table(first=cell(0.80, 0.70, 0.70), second=cell(0.80, 0.90, 0.90))
    row = noise_floor_metrics(stats)
    assert row["tied_picks"] == ["first", "second"]
    assert row["pick_accuracy"] == pytest.approx(0.80)  # mean of 0.70 and 0.90
    assert row["regret"] == pytest.approx((0.80 + 0.90 + 0.90) / 3 - 0.80)
    assert row["top1"] == pytest.approx(0.5)


def test_near_ties_count_sources_within_one_seed_sd_of_the_best() -> None:
    stats = table(
        best=cell(0.78, 0.79, 0.80),  # 0.790
        close=cell(0.775),  # 0.015 below: within one SD (0.02), not within one SE (0.0115)
        below=cell(0.76, 0.77),  # 0.025 below
        far=cell(0.70, 0.75, 0.74),  # 0.060 below
    )
    assert seed_sd(stats) == pytest.approx(SD)
    assert near_ties(stats) == 2
    assert near_ties({**stats, "twin": cell(0.79, 0.79, 0.79)}) == 3
    assert near_ties(table(only=cell(0.5))) == 1


def test_a_second_stage_reorders_the_shortlist_only() -> None:
    first = {"a": 0.9, "b": 0.8, "c": 0.7, "d": 0.6, "e": 0.5}
    second = {"a": 0.1, "b": 0.3, "c": 0.2, "d": 9.0, "e": 8.0}  # d, e: not shortlisted
    scores = second_stage(first, second, top=3)
    assert sorted(scores, key=lambda s: -scores[s]) == ["b", "c", "a", "d", "e"]


def test_the_coverage_flag_and_expected_gain_are_scored_per_kind_of_target() -> None:
    from bench.learned import by_kind

    kind = {"a": "in_family", "b": "shifted", "c": "unseen_family", "d": "unseen_family"}
    block = {
        "coverage": {"flagged": {"a": False, "b": True, "c": True, "d": False}},
        "gain": {
            "per_target": {  # "d" has no scratch evidence: no expected gain
                "a": {"expected": 0.10, "low": 0.0, "high": 0.2, "measured": 0.15},
                "b": {"expected": 0.05, "low": 0.0, "high": 0.1, "measured": 0.20},
                "c": {"expected": 0.02, "low": -0.1, "high": 0.1, "measured": 0.00},
            }
        },
    }
    over_scratch = {"a": 0.20, "b": 0.01, "c": 0.30, "d": 0.20}
    scored = by_kind(block, kind, over_scratch, on=["a", "b", "c", "d"])

    assert scored["in_family"]["targets"] == 1 and scored["in_family"]["flagged"] == 0.0
    # "b" is flagged but shifted: wrong about the kind, right about its small gain.
    assert scored["shifted"]["hit_rate_unseen_family"] == 0.0
    assert scored["shifted"]["hit_rate_small_gain"] == 1.0
    # "c" flagged (right about the kind, wrong about the gain); "d" not (the reverse).
    assert scored["unseen_family"]["hit_rate_unseen_family"] == 0.5
    assert scored["unseen_family"]["hit_rate_small_gain"] == 0.5
    assert scored["unseen_family"]["gain_mean_error"] == pytest.approx(0.02)
    assert scored["all"]["gain_mean_absolute_error"] == pytest.approx((0.05 + 0.15 + 0.02) / 3)
    assert scored["all"]["gain_interval_coverage"] == pytest.approx(2 / 3)
    assert scored["all"]["targets"] == 4
