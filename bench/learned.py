"""The learned ranker on the benchmark: chosen on the development targets, judged leave one
family out, its learning curve, its coverage flag and its expected gain.

Protocol, fixed before any run:
Run by ``python -m bench.selection``, which writes its rows and sections into
``bench/results/selection.{json,md}``, its learning curve to ``learned_curve.png``, and the
ground truth the service starts from to ``app/zoo/bundled/evidence.json``.

- *Choice*: every configuration of ``CANDIDATES`` is scored on the development targets only,
  each development family ranked by a ranker fitted on the other development families; the
  lowest mean regret wins (ties: the earlier, simpler configuration). The service ships that
  configuration (``app.p2l.learned.LearnedConfig``'s defaults); this script says whether it
  does.
- *Judged*: every target ranked by a ranker fitted on every target of the other families
  (leave one family out: a family's near-twins never inform each other).
- *Learning curve*: each report target ranked by a ranker fitted on ``k`` targets drawn at
  random from the other families (``ORDERS`` random draws per ``k``); below the ranker's
  minimum of evidence the service's P2L default answers, as it does in the service.
- *Coverage flag*: a target is flagged outside what the zoo covers when its nearest source is
  farther than ``coverage_quantile`` of the past targets' nearest sources; the quantile is the
  one that flags the development targets of unseen families best (leave one family out).
  Judged against the target's kind (unseen family or not) and against whether fine-tuning the
  best source beats training from scratch by more than ``SMALL_GAIN``.
- *Expected gain*: the learned pick's expected gain over scratch against its measured gain.
"""

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from app.config import Settings
from app.p2l.learned import BASE_FEATURES, FEATURES, EvidenceTarget, LearnedConfig, LearnedRanker
from app.p2l.scoring import ScoringParams, SignatureIndex
from app.p2l.signature import DatasetSignature
from app.services.learning import ship_bundled_signatures
from app.zoo.bundled import BUNDLED_DIR, load_active_reference
from bench.ground_truth import (
    KINDS,
    SCRATCH,
    CellStats,
    Target,
)
from bench.selection_metrics import pick_metrics

RESULTS = Path(__file__).parent / "results"

ORDERS = 20
CURVE_SIZES = (0, 5, 10, 20)
SMALL_GAIN = 0.05
QUANTILES = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95)
FEATURE_SETS: tuple[tuple[str, ...], ...] = (
    ("js",),
    ("js", "log_size"),
    ("js", "record"),
    ("js", "near_record"),
    ("js", "log_size", "record"),
    ("js", "log_size", "record", "near_record"),
    FEATURES,
)
CANDIDATES: tuple[LearnedConfig, ...] = tuple(
    LearnedConfig(alpha=alpha, features=features, neighbours=neighbours, model=model, record=record)
    for model, alphas in (("ridge", (1.0, 100.0)), ("boosted", (1.0,)))
    for features in FEATURE_SETS
    for record in ("z", "closeness")
    for alpha in alphas
    for neighbours in ((5,) if "near_record" not in features else (3, 10))
    if model == "ridge" or len(features) > 1
)


def describe(config: LearnedConfig) -> str:
    """A configuration in words."""
    model = f"ridge alpha {config.alpha:g}" if config.model == "ridge" else "boosted trees"
    near = f"{config.neighbours} nearest targets" if "near_record" in config.features else "no k-NN"
    return f"{model}, features {'+'.join(config.features)}, record as {config.record}, {near}"


def _evidence(
    names: list[str],
    signatures: dict[str, DatasetSignature],
    stats: dict[str, dict[str, CellStats]],
    family: dict[str, str],
) -> dict[str, EvidenceTarget]:
    return {
        t: EvidenceTarget(
            key=t,
            group=family[t],
            signature=signatures[t],
            accuracy={s: c.mean for s, c in stats[t].items() if s != SCRATCH},
            scratch=stats[t][SCRATCH].mean,
        )
        for t in names
    }


def evaluate(
    names: list[str],
    dev: list[str],
    report: list[str],
    family: dict[str, str],
    kind: dict[str, str],
    signatures: dict[str, DatasetSignature],
    source_signatures: dict[str, DatasetSignature],
    stats: dict[str, dict[str, CellStats]],
    settings: Settings | None = None,
) -> tuple[dict[str, dict[str, dict]], dict[str, Any], dict[str, dict[str, float]]]:
    """Per-target metrics of the learned rows (for the methods tables), the rest of the
    learned ranker's report (choice, learning curve, coverage, expected gain), and the
    chosen ranker's scores per target (leave one family out), for second stages."""
    settings = settings or Settings(_env_file=None)
    index = SignatureIndex(eps=LearnedConfig().eps)
    for name, signature in source_signatures.items():
        index.add(name, signature)
    sources = index.source_ids()
    evidence = _evidence(names, signatures, stats, family)
    p2l_params = ScoringParams(settings.p2l_lambda, LearnedConfig().eps, LearnedConfig().emd_gamma)

    def p2l_scores(target: str) -> dict[str, float]:
        ranked = index.rank(signatures[target], "p2l", settings.p2l_measure, p2l_params)
        return {r.source_id: r.score for r in ranked}

    def scores_leaving_family_out(
        on: list[str], pool: list[str], config: LearnedConfig
    ) -> dict[str, dict[str, float]]:
        scores = {}
        for fam in sorted({family[t] for t in on}):
            ranker = LearnedRanker(index, [evidence[t] for t in pool if family[t] != fam], config)
            for t in (t for t in on if family[t] == fam):
                scores[t] = ranker.rank(signatures[t], sources).scores if ranker.active else (
                    p2l_scores(t))  # fmt: skip
        return scores

    def leave_family_out(on: list[str], pool: list[str], config: LearnedConfig) -> dict[str, dict]:
        scored = scores_leaving_family_out(on, pool, config)
        return {t: pick_metrics(scores, stats[t]) for t, scores in scored.items()}

    def mean_regret(rows: dict[str, dict]) -> float:
        return float(np.mean([r["regret"] for r in rows.values()]))

    # The choice, on the development targets alone: each ranked by a ranker fitted on the
    # development targets of the other families.
    dev_scores = [
        (mean_regret(leave_family_out(dev, dev, replace(c, min_targets=1))), i)
        for i, c in enumerate(CANDIDATES)
    ]
    chosen = CANDIDATES[min(dev_scores)[1]]

    learned_scores = scores_leaving_family_out(names, names, chosen)
    learned = {t: pick_metrics(scores, stats[t]) for t, scores in learned_scores.items()}
    base = leave_family_out(names, names, replace(chosen, features=BASE_FEATURES))
    rows = {
        "learned (chosen on dev), leave-one-family-out": learned,
        "learned, distances and size only, leave-one-family-out": base,
    }

    curve = _learning_curve(report, names, family, evidence, chosen, index, sources, stats,
                            p2l_scores)  # fmt: skip
    # The best source's gain over training from scratch, per target.
    over_scratch = {
        t: max(c.mean for s, c in stats[t].items() if s != SCRATCH) - stats[t][SCRATCH].mean
        for t in names
    }
    coverage = _coverage(names, dev, family, kind, evidence, index, chosen, over_scratch)
    gain = _gain(names, family, evidence, index, chosen, stats, sources, signatures)
    report_block = {
        "protocol": __doc__,
        "candidates": [
            {"config": describe(c), "dev_regret": score}
            for (score, _), c in zip(dev_scores, CANDIDATES, strict=True)
        ],
        "chosen_on_dev": describe(chosen),
        "chosen_config": {
            "model": chosen.model,
            "alpha": chosen.alpha,
            "features": list(chosen.features),
            "record": chosen.record,
            "neighbours": chosen.neighbours,
        },
        "learning_curve": curve,
        "coverage": coverage,
        "gain": gain,
    }
    report_block["by_kind"] = by_kind(report_block, kind, over_scratch, report)
    return rows, report_block, learned_scores


def _learning_curve(
    report: list[str],
    names: list[str],
    family: dict[str, str],
    evidence: dict[str, EvidenceTarget],
    config: LearnedConfig,
    index: SignatureIndex,
    sources: list[str],
    stats: dict[str, dict[str, CellStats]],
    p2l_scores: Any,
) -> list[dict[str, Any]]:
    rng = np.random.default_rng(0)
    points = []
    largest = min(len([n for n in names if family[n] != family[t]]) for t in report)
    for size in (*CURVE_SIZES, largest):
        regrets = []
        for _ in range(ORDERS):
            per_target = []
            for t in report:
                pool = [n for n in names if family[n] != family[t]]
                drawn = [pool[i] for i in rng.permutation(len(pool))[:size]]
                ranker = LearnedRanker(index, [evidence[n] for n in drawn], config)
                scores = (
                    ranker.rank(evidence[t].signature, sources).scores
                    if ranker.active
                    else p2l_scores(t)
                )
                per_target.append(pick_metrics(scores, stats[t])["regret"])
            regrets.append(float(np.mean(per_target)))
        points.append(
            {
                "evidence_targets": size,
                "label": "all other families" if size == largest else str(size),
                "mean_regret": float(np.mean(regrets)),
                "sd_over_orders": float(np.std(regrets)),
                "orders": ORDERS,
            }
        )
    return points


def _coverage(
    names: list[str],
    dev: list[str],
    family: dict[str, str],
    kind: dict[str, str],
    evidence: dict[str, EvidenceTarget],
    index: SignatureIndex,
    config: LearnedConfig,
    over_scratch: dict[str, float],
) -> dict[str, Any]:
    percentiles = {}
    for t in names:
        ranker = LearnedRanker(
            index, [e for n, e in evidence.items() if family[n] != family[t]],
            replace(config, min_targets=10**9),
        )  # fmt: skip
        coverage = ranker.coverage(evidence[t].signature, index.source_ids())
        assert coverage is not None
        percentiles[t] = coverage.percentile
    unseen = {t: kind[t] == "unseen_family" for t in names}
    small = {t: over_scratch[t] < SMALL_GAIN for t in names}

    def hit_rate(on: list[str], quantile: float, truth: dict[str, bool]) -> float:
        return float(np.mean([(percentiles[t] > quantile) == truth[t] for t in on]))

    best_quantile = max(QUANTILES, key=lambda q: (hit_rate(dev, q, unseen), q))
    report = [t for t in names if t not in dev]
    return {
        "quantile_chosen_on_dev": best_quantile,
        "hit_rate_unseen_family": {
            split: hit_rate(on, best_quantile, unseen)
            for split, on in (("all", names), ("report", report), ("dev", dev))
        },
        "hit_rate_small_gain": {
            split: hit_rate(on, best_quantile, small)
            for split, on in (("all", names), ("report", report), ("dev", dev))
        },
        "always_covered_hit_rate_unseen_family": float(np.mean([not unseen[t] for t in report])),
        "flagged": {t: percentiles[t] > best_quantile for t in names},
        "percentile": percentiles,
    }


def _gain(
    names: list[str],
    family: dict[str, str],
    evidence: dict[str, EvidenceTarget],
    index: SignatureIndex,
    config: LearnedConfig,
    stats: dict[str, dict[str, CellStats]],
    sources: list[str],
    signatures: dict[str, DatasetSignature],
) -> dict[str, Any]:
    errors, inside, rows = [], [], {}
    for t in names:
        ranker = LearnedRanker(
            index, [e for n, e in evidence.items() if family[n] != family[t]], config
        )
        pick = max(ranker.rank(signatures[t], sources).scores.items(), key=lambda kv: kv[1])[0]
        coverage = ranker.coverage(signatures[t], sources)
        assert coverage is not None
        gains = ranker.gains(signatures[t], [pick], coverage.nearest_distance)
        if pick not in gains:  # no scratch evidence to learn from
            continue
        expected = gains[pick]
        measured = stats[t][pick].mean - stats[t][SCRATCH].mean
        errors.append(expected.expected - measured)
        inside.append(expected.low <= measured <= expected.high)
        rows[t] = {"pick": pick, "expected": expected.expected, "low": expected.low,
                   "high": expected.high, "measured": measured}  # fmt: skip
    return {
        "mean_absolute_error": float(np.mean(np.abs(errors))),
        "mean_error": float(np.mean(errors)),
        "interval_coverage": float(np.mean(inside)),
        "per_target": rows,
    }


# --- what the selection benchmark writes ---------------------------------------------------


def write_bundled_evidence(targets: list[Target], stats: dict[str, dict[str, CellStats]]) -> None:
    """``app/zoo/bundled/evidence.json``: the ground truth the service's learned ranker starts
    from (mean test accuracy of every bundled source, and of scratch, on each finished target)."""
    entries = [
        {
            "name": t.name,
            "family": t.family,
            "kind": t.kind,
            "accuracy": {s: round(c.mean, 4) for s, c in stats[t.name].items() if s != SCRATCH},
            "scratch": round(stats[t.name][SCRATCH].mean, 4),
        }
        for t in targets
    ]
    document = {
        "what": "mean test accuracy over seeds of every bundled source fine-tuned on each "
        "bundled target with finished ground truth, and of training from scratch "
        "(bench/ground_truth.py's protocol; written by python -m bench.selection)",
        "targets": entries,
    }
    (BUNDLED_DIR / "evidence.json").write_text(json.dumps(document, indent=1) + "\n")
    # Their signatures under the service's bundled reference, shipped beside them.
    ship_bundled_signatures(load_active_reference(Settings(_env_file=None)))


def by_kind(
    block: dict[str, Any], kind: dict[str, str], gain_over_scratch: dict[str, float], on: list[str]
) -> dict[str, dict[str, float]]:
    """The coverage flag's hit rates and the expected gain's errors per kind of target (and
    over all of ``on``), from the block's per-target flags and gains."""
    flagged, gains = block["coverage"]["flagged"], block["gain"]["per_target"]
    out = {}
    for group in (*KINDS, "all"):
        targets = [t for t in on if group in ("all", kind[t])]
        scored = [gains[t] for t in targets if t in gains]
        if not scored:  # no target of this kind (--quick), or none with scratch evidence
            continue
        errors = np.array([g["expected"] - g["measured"] for g in scored])
        out[group] = {
            "targets": len(targets),
            "flagged": float(np.mean([flagged[t] for t in targets])),
            "hit_rate_unseen_family": float(
                np.mean([flagged[t] == (kind[t] == "unseen_family") for t in targets])
            ),
            "hit_rate_small_gain": float(
                np.mean([flagged[t] == (gain_over_scratch[t] < SMALL_GAIN) for t in targets])
            ),
            "gain_mean_absolute_error": float(np.mean(np.abs(errors))),
            "gain_mean_error": float(np.mean(errors)),
            "gain_interval_coverage": float(
                np.mean([g["low"] <= g["measured"] <= g["high"] for g in scored])
            ),
        }
    return out


def report_lines(block: dict[str, Any]) -> list[str]:
    """The learning curve, the coverage flag and the expected gain, as markdown."""
    lines = [
        "## Learning curve (report targets)",
        "",
        f"Chosen on the development targets: {block['chosen_on_dev']} (the service's "
        "defaults, `app.p2l.learned.LearnedConfig`; a test checks they agree).",
        "",
        "| past targets learned from | mean regret | SD over random draws |",
        "| --- | ---: | ---: |",
    ]
    for point in block["learning_curve"]:
        lines.append(
            f"| {point['label']} | {point['mean_regret']:.3f} | {point['sd_over_orders']:.3f} |"
        )
    coverage, gain = block["coverage"], block["gain"]
    lines += [
        "",
        "![learning curve](learned_curve.png)",
        "",
        "## Coverage flag and expected gain (leave one family out)",
        "",
        f"- Quantile chosen on the development targets: {coverage['quantile_chosen_on_dev']} "
        "(the service's `coverage_quantile`).",
        f"- Flag right about the kind (unseen family or not): "
        f"{coverage['hit_rate_unseen_family']['report']:.2f} of report targets "
        f"({coverage['always_covered_hit_rate_unseen_family']:.2f} by saying 'covered' always).",
        f"- Flag right about a small gain over scratch (< {SMALL_GAIN}): "
        f"{coverage['hit_rate_small_gain']['report']:.2f} of report targets.",
        f"- Expected gain of the learned pick over scratch, all targets: mean absolute error "
        f"{gain['mean_absolute_error']:.3f}, mean error {gain['mean_error']:+.3f}; the measured "
        f"gain inside the 90% interval on {gain['interval_coverage']:.2f} of targets.",
        "",
        "Per kind of target (report targets): the share flagged 'not covered', how often the "
        "flag is right about the kind (unseen family or not) and about a small gain over "
        f"scratch (< {SMALL_GAIN}), and the learned pick's expected gain against the measured "
        "one.",
        "",
        "| kind | targets | flagged | flag right: kind | flag right: small gain | "
        "gain: mean abs. error | gain: mean error | inside the 90% interval |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for group, row in block["by_kind"].items():
        lines.append(
            f"| {group.replace('_', ' ')} | {row['targets']} | {row['flagged']:.2f} | "
            f"{row['hit_rate_unseen_family']:.2f} | {row['hit_rate_small_gain']:.2f} | "
            f"{row['gain_mean_absolute_error']:.3f} | {row['gain_mean_error']:+.3f} | "
            f"{row['gain_interval_coverage']:.2f} |"
        )
    lines.append("")
    return lines


def plot_curve(curve: list[dict[str, Any]], p2l_regret: float, path: Path) -> None:
    """The learning curve with P2L's regret as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(5, 3.2))
    axes.errorbar(range(len(curve)), [p["mean_regret"] for p in curve],
                  yerr=[p["sd_over_orders"] for p in curve], marker="o", capsize=3)  # fmt: skip
    axes.axhline(p2l_regret, color="grey", linestyle="--", label="P2L, nested")
    axes.set_xticks(range(len(curve)), [p["label"] for p in curve])
    axes.set_xlabel("past targets the ranker learned from (0: the service's P2L)")
    axes.set_ylabel("mean regret (report targets)")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
