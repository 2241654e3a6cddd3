"""Selection quality: does P2L pick the source that fine-tunes best? (the paper's table)

    python -m bench.selection            # full run: every source x every target
    python -m bench.selection --quick    # 6 sources x 4 targets, 1 seed: under 3 minutes

Ground truth (bench/ground_truth.py): every bundled source fine-tuned on every bundled
target with one fixed protocol, plus training from scratch, scored on each target's fixed
test split; cells are cached under bench/.cache, so a run resumes where it stopped.

Every method sees only the targets' *training* images: P2L's target signature (one forward
pass through the reference network), and the per-candidate peers LogME, LEEP and NCE (one
forward pass through every source). Nothing but the final score sees a test image.

Choices made on the development targets only (the manifest's ``role``), reported on the
report targets: which candidate reference network, which distance measure, which lambda.
The headline applies the same rule nested, leave one *family* out: each target is scored by
the choice made on the targets of the other families (near-twins such as ``crawl`` and
``crawl_fewshot`` would otherwise inform each other).

Every mean regret comes with a 90% interval from a paired bootstrap over target families,
and with its difference to the headline P2L row (bench/selection_metrics.py); a noise-floor
row says how much regret one seed's noise alone costs.

Writes bench/results/selection.json, selection.md and selection.png (``selection_quick.*``
with --quick). Metric rules: bench/selection_metrics.py; seed rule: bench/ground_truth.py.
"""

import argparse
import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from app.families import feature_extractor, get_spec, load_model
from app.finetune.train import ImageTensors
from app.measures import MEASURES
from app.p2l.peers import knn_accuracy, leep, logme, nce
from app.p2l.scoring import SignatureIndex
from app.p2l.signature import load_signature, signature_of_array
from app.zoo.bundled import BUNDLED_DIR, manifest
from bench import learned
from bench.ground_truth import (
    CELLS,
    KINDS,
    MAX_SEEDS,
    PROTOCOL,
    SCRATCH,
    CellCache,
    CellStats,
    Target,
    cpu_workers,
    ground_truth,
    load_targets,
    source_entries,
    within_noise,
)
from bench.selection_metrics import (
    BOOTSTRAP_DRAWS,
    BOOTSTRAP_LEVEL,
    BOOTSTRAP_SEED,
    count_summary,
    method_summaries,
    near_ties,
    noise_floor_metrics,
    pick_metrics,
    random_metrics,
    second_stage,
    seed_sd,
    summarise,
)
from bench.zoo.build import CANDIDATES_DIR, CHOSEN_REFERENCE, REFERENCE_CANDIDATES, load_candidate

RESULTS = Path(__file__).parent / "results"
EPS = 1e-3
EMD_GAMMA = 0.01
LAMBDAS = (0.0, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2)
PEERS = ("logme", "leep", "nce", "knn")
QUICK_SOURCES = (
    "fashion_54k", "scripts_9k", "clipart_1700", "papirus_2800", "wesnoth_units_2600", "mixed_17k",
)  # fmt: skip
QUICK_TARGETS = ("fashion", "fashion_inverted", "unseen_scripts", "oxygen")
CONFIG_KEYS = ("reference", "measure", "lambda")
VECTORISED = ("kl", "js", "cosine")
NESTED = "nested leave-one-family-out"
HEADLINE = f"p2l, {NESTED}"
SHORTLIST = 3  # the two-stage cost the learned ranker is held to (bench.two_stage's choice)
SECOND_STAGES = ("logme", "knn")
RANDOM = "random (expected)"
NOISE_FLOOR = "noise floor (best on seed 0, scored on other seeds)"
# Each row's regret is compared, paired, with these rows' (JSON key -> row name).
BASELINES = {"difference_to_p2l": HEADLINE, "difference_to_random": RANDOM}


# --- what each method sees -----------------------------------------------------------------


def p2l_distances(
    targets: list[Target], sources: list[str], reference_name: str
) -> tuple[dict[str, dict[str, dict[str, float]]], dict[str, float]]:
    """``D(target, source)`` per target and measure under one candidate reference, and the
    seconds of P2L's one forward pass (target signature) plus kl scoring, per target."""
    reference = load_candidate(reference_name)
    index = SignatureIndex(eps=EPS)
    for name in sources:
        index.add(name, load_signature(CANDIDATES_DIR / reference_name /
                                       f"{name}.signature.safetensors"))  # fmt: skip
    distances, seconds = {}, {}
    for target in targets:
        started = time.perf_counter()
        images, labels = target.train
        signature = signature_of_array(reference, images, labels, target.class_names)
        index.distances(signature, "kl", None, EMD_GAMMA)
        seconds[target.name] = time.perf_counter() - started  # what the default costs
        by_measure = {m: index.distances(signature, m, None, EMD_GAMMA) for m in MEASURES}
        distances[target.name] = {
            m: dict(zip(index.ids, d.astype(float).tolist(), strict=True))
            for m, d in by_measure.items()
        }
    return distances, seconds


def peer_scores(
    targets: list[Target], sources: list[str]
) -> tuple[dict[str, dict[str, dict[str, float]]], dict[str, float]]:
    """LogME, LEEP, NCE and k-NN accuracy of every source on every target's training images,
    and the seconds of the forward passes (one per source) plus the measures, per target."""
    entries = source_entries(sources)
    scores: dict[str, dict[str, dict[str, float]]] = {t.name: {p: {} for p in PEERS}
                                                       for t in targets}  # fmt: skip
    seconds = dict.fromkeys((t.name for t in targets), 0.0)
    for name, entry in entries.items():
        spec = get_spec(entry["architecture"])
        model = load_model(entry["architecture"], entry["num_classes"],
                           BUNDLED_DIR / entry["weights"])  # fmt: skip
        head = model.head
        extractor = feature_extractor(model).eval()
        for target in targets:
            started = time.perf_counter()
            images, labels = target.train
            data = ImageTensors(images, labels, spec.mean, spec.std)
            with torch.inference_mode():
                batch, _ = data.batch(torch.arange(len(data)), torch.device("cpu"))
                features = extractor(batch)
                probabilities = head(features).softmax(1).numpy()
            features = features.numpy()
            scores[target.name]["logme"][name] = logme(features, labels)
            scores[target.name]["leep"][name] = leep(probabilities, labels)
            scores[target.name]["nce"][name] = nce(probabilities, labels)
            scores[target.name]["knn"][name] = knn_accuracy(features, labels)
            seconds[target.name] += time.perf_counter() - started
    return scores, seconds


def p2l_scores(distance: dict[str, float], sizes: dict[str, int], lam: float) -> dict[str, float]:
    """``lambda * log(n_s) - D(t, s)`` for every source."""
    return {s: lam * float(np.log(sizes[s])) - d for s, d in distance.items()}


# --- calibration on development targets ----------------------------------------------------


def choose(rows_by_config: dict[tuple, list[dict]]) -> tuple:
    """The configuration with the lowest mean regret; ties: more picks within noise, then
    kl (vectorised, milliseconds at any zoo size), then the smaller lambda."""

    def key(config: tuple) -> tuple:
        summary = summarise(rows_by_config[config])
        _, measure, lam = config
        return (round(summary["regret"], 6), -summary["top1_within_noise"], measure != "kl", lam)

    return min(rows_by_config, key=key)


# --- the run -------------------------------------------------------------------------------


def learned_ranker(
    targets: list[Target], sources: list[str], stats: dict[str, dict[str, CellStats]], quick: bool
) -> tuple[dict[str, dict[str, dict]], dict[str, Any], dict[str, dict[str, float]]]:
    """The learned ranker's rows (bench.learned: chosen on the development targets, judged
    leave one family out) under the bundled reference, the rest of its report, and its
    scores per target."""
    if quick:
        return {}, {}, {}
    reference = load_candidate(CHOSEN_REFERENCE)
    signatures = {t.name: signature_of_array(reference, *t.train, t.class_names) for t in targets}
    source_signatures = {
        name: load_signature(CANDIDATES_DIR / CHOSEN_REFERENCE / f"{name}.signature.safetensors")
        for name in sources
    }
    return learned.evaluate(
        [t.name for t in targets],
        [t.name for t in targets if t.role == "dev"],
        [t.name for t in targets if t.role == "report"],
        {t.name: t.family for t in targets},
        {t.name: t.kind for t in targets},
        signatures,
        source_signatures,
        stats,
    )


def run(quick: bool, workers: int) -> dict[str, Any]:
    """Ground truth, every method's scores, calibration on dev targets, summaries."""
    started = time.perf_counter()
    info = manifest()
    sources = list(QUICK_SOURCES) if quick else [e["name"] for e in info["sources"]]
    targets = load_targets(list(QUICK_TARGETS) if quick else None)
    sizes = {e["name"]: e["num_train_images"] for e in info["sources"] if e["name"] in sources}
    cache = CellCache(CELLS)
    seeds = 1 if quick else MAX_SEEDS
    stats = ground_truth([t.name for t in targets], sources, cache, workers, seeds)
    truth_seconds = time.perf_counter() - started

    distances, p2l_seconds = {}, {}
    for ref in REFERENCE_CANDIDATES:
        distances[ref], p2l_seconds[ref] = p2l_distances(targets, sources, ref)
    peers, peer_seconds = peer_scores(targets, sources)

    def rows(scores_of: Callable[[str], dict[str, float]], names: list[str]) -> list[dict]:
        return [pick_metrics(scores_of(t), stats[t]) for t in names]

    def p2l(ref: str, measure: str, lam: float) -> Callable[[str], dict[str, float]]:
        return lambda t: p2l_scores(distances[ref][t][measure], sizes, lam)

    names = [t.name for t in targets]
    family = {t.name: t.family for t in targets}
    dev = [t.name for t in targets if t.role == "dev"] or names
    report = [t.name for t in targets if t.role == "report"] or dev
    configs = [(r, m, lam) for r in REFERENCE_CANDIDATES for m in MEASURES for lam in LAMBDAS]
    grid = {config: dict(zip(names, rows(p2l(*config), names), strict=True)) for config in configs}
    # The default must rank 100,000 sources in milliseconds: emd (one transport problem per
    # source) is measured, but only the vectorised measures are eligible.
    eligible = [c for c in configs if c[1] in VECTORISED]

    def chosen_on(on: list[str], among: list[tuple] = eligible) -> tuple:
        return choose({c: [grid[c][t] for t in on] for c in among})

    def nested(among: list[tuple] = eligible) -> tuple[dict[str, dict], dict[str, tuple]]:
        """Leave one family out: choose on the targets of the other families, score the
        targets of the family left out."""
        if len(set(family.values())) < 2:
            raise SystemExit("leave-one-family-out needs targets of two families or more")
        by_family = {
            f: chosen_on([n for n in names if family[n] != f], among) for f in set(family.values())
        }
        picks = {t: by_family[family[t]] for t in names}
        return {t: grid[c][t] for t, c in picks.items()}, picks

    dev_choice = chosen_on(dev)
    shipped = chosen_on(names)
    nested_rows, nested_choices = nested()
    fixed_split = "p2l ({}, {}, lambda {}): chosen on the development targets".format(*dev_choice)
    per_target: dict[str, dict[str, dict]] = {
        HEADLINE: nested_rows,
        fixed_split: grid[dev_choice],
        "p2l ({}, {}, lambda {}): chosen on all targets (in-sample)".format(*shipped): grid[
            shipped
        ],
    }
    has_split = dev != names  # --quick has report targets only: no fixed split to speak of
    if not has_split:
        del per_target[fixed_split]
    ref = shipped[0]
    for m in MEASURES:
        lam = chosen_on(names, [c for c in configs if c[:2] == (ref, m)])[2]
        if (ref, m, lam) != shipped:
            per_target[f"p2l ({ref}, {m}, lambda {lam})"] = grid[(ref, m, lam)]
        per_target[f"distance only ({ref}, {m})"] = grid[(ref, m, 0.0)]
    per_target["largest source"] = dict(
        zip(
            names, rows(lambda t: {s: float(np.log(sizes[s])) for s in sources}, names), strict=True
        )
    )
    for peer in PEERS:
        per_target[peer] = dict(zip(names, rows(lambda t, p=peer: peers[t][p], names), strict=True))
    for other in REFERENCE_CANDIDATES:
        per_target[f"p2l with reference '{other}', {NESTED}"] = nested(
            [c for c in eligible if c[0] == other]
        )[0]
    per_target[f"p2l with emd too, {NESTED}"] = nested(configs)[0]
    # More rows go here, before the summaries: ``per_target[name] = {target: pick_metrics(
    # scores, stats[target])}``, for all targets or only some (a row judged on the report
    # targets only, say). Every row gets its summary, regret interval and paired differences
    # in every split and kind, over the targets it covers.
    if not quick:
        learned.write_bundled_evidence(targets, stats)
    learned_rows, learned_report, learned_scores = learned_ranker(targets, sources, stats, quick)
    per_target.update(learned_rows)
    # Second stages at the two-stage cost (one pass through each of the first stage's top
    # SHORTLIST): what `refine` does after P2L or after the learned ranker.
    first_stages = {"p2l nested": {t: p2l(*nested_choices[t])(t) for t in names}}
    if learned_scores:
        first_stages["learned (chosen on dev)"] = learned_scores
    for first, scored in first_stages.items():
        for peer in SECOND_STAGES:
            per_target[f"{first}, then {peer} on its top {SHORTLIST}, leave-one-family-out"] = {
                t: pick_metrics(second_stage(scores, peers[t][peer], SHORTLIST), stats[t])
                for t, scores in scored.items()
            }

    noise_rows = {t: noise_floor_metrics(stats[t]) for t in names}
    judged = {
        **per_target,
        NOISE_FLOOR: noise_rows,
        RANDOM: {t: random_metrics(stats[t]) for t in names},
    }

    def summaries_on(on: list[str], among: dict[str, dict[str, dict]]) -> dict[str, dict]:
        return method_summaries(among, on, family, BASELINES)

    # The dev-chosen row is only honest on the report targets.
    without_fixed = {n: r for n, r in judged.items() if n != fixed_split}
    splits = {"all": names, "report": report, "dev": dev}
    summaries = {
        split: summaries_on(on, judged if split == "report" else without_fixed)
        for split, on in splits.items()
    }
    kind_of = {t.name: t.kind for t in targets}
    by_kind = {
        k: summaries_on(on, without_fixed)
        for k in KINDS
        if (on := [t for t in names if kind_of[t] == k])
    }
    near = {t: near_ties(stats[t]) for t in names}
    fallbacks = [t for t in names if noise_rows[t]["fallback"]]

    headline = HEADLINE
    n_sources = len(sources)
    # Restored cells carry no time: timings come from the timed cells (targets) only.
    timed_targets = [
        t.name for t in targets if all(stats[t.name][s].seconds is not None for s in sources)
    ]
    fine_tunes = [sum(stats[t][s].seconds or 0.0 for s in sources) for t in timed_targets]
    costs = {
        "p2l": {
            "forward_passes": 1,
            "median_seconds": float(np.median(list(p2l_seconds[ref].values()))),
            "what": "one pass of the target's training images through the reference, "
            "then scoring every source",
        },
        "learned": {
            "forward_passes": 1,
            "what": "P2L's one pass through the reference; the learned model reads only "
            "signatures and the past targets' results",
        },
        f"a second stage on the top {SHORTLIST}": {
            "forward_passes": 1 + SHORTLIST,
            "what": f"the first stage's one pass, then one through each of its top {SHORTLIST}",
        },
        "logme, leep, nce, knn (together)": {
            "forward_passes": n_sources,
            "median_seconds": float(np.median(list(peer_seconds.values()))),
            "what": f"one pass through each of the {n_sources} sources",
        },
        "fine-tune every source once": {
            "median_seconds": float(np.median(fine_tunes)) if fine_tunes else None,
            "timed_targets": len(timed_targets),
            "targets": len(targets),
        },
    }
    table = [
        target_row(t, stats[t.name], per_target[headline][t.name], nested_choices[t.name], sources)
        | {"near_ties": near[t.name], "noise_floor_regret": noise_rows[t.name]["regret"]}
        for t in targets
    ]
    used_cells = [cell for (t, s, _), cell in cache.cells.items() if t in stats and s in stats[t]]
    timed_cells = [c["seconds"] for c in used_cells if c.get("seconds") is not None]

    def check(split: str, method: str) -> dict[str, Any]:
        ours = summaries[split][method]["regret"]
        logme_regret = summaries[split]["logme"]["regret"]
        random_regret = summaries[split]["random (expected)"]["regret"]
        return {
            "method": method,
            "targets": split,
            "p2l_regret": ours,
            "logme_regret": logme_regret,
            "random_regret": random_regret,
            "p2l_at_most_logme": ours <= logme_regret,
            "p2l_at_most_quarter_of_random": ours <= random_regret / 4,
        }

    checks = {
        "nested_all_targets": check("all", headline),
        "nested_report_targets": check("report", headline),
        **({"fixed_split_report_targets": check("report", fixed_split)} if has_split else {}),
        "within_noise_source_in_p2l_top3": {
            row["target"]: row["within_noise_in_top3"] for row in table if row["kind"] == "shifted"
        },
    }
    return {
        "benchmark": "selection",
        "quick": quick,
        "sources": sources,
        "targets": table,
        "development_targets": dev,
        "report_targets": report,
        "protocol": {**PROTOCOL, "max_seeds": seeds, "eps": EPS, "emd_gamma": EMD_GAMMA},
        "rules": {
            "seeds": "seed 0 everywhere, scratch seeds 0-2; sources within two standard errors "
            "of a target's best get up to 3 seeds",
            "within_noise": "best mean - source mean <= 2 * sqrt(se_best^2 + se_source^2), "
            "se = the target's pooled seed SD / sqrt(seeds)",
            "choice": "the (reference, measure, lambda) with the lowest mean regret on the "
            "targets it may see (ties: more picks within noise, then kl, then smaller lambda), "
            "among the vectorised measures (kl, js, cosine: emd solves one transport problem "
            "per source and cannot rank 100,000 sources in milliseconds); applied to the "
            "development targets (fixed split) and, nested, to the targets of every family "
            "but the scored target's (leave one family out)",
            "bootstrap": {
                "unit": "family",
                "draws": BOOTSTRAP_DRAWS,
                "level": BOOTSTRAP_LEVEL,
                "seed": BOOTSTRAP_SEED,
                "interval": "percentile",
                "what": "each draw takes as many families as the targets judged have, with "
                "replacement, and every target of each drawn family; a mean is the mean over "
                "the drawn targets. Differences are paired: the same draws for both rows, over "
                "the targets both cover; resolved: the interval excludes 0",
            },
            "noise_floor": "per target, the source with the best seed-0 accuracy (ties: "
            "picked at random, the mean over them), scored by the mean of its other seeds (its "
            "seed-0 accuracy where it has none); regret: the target's best mean minus that",
            "near_ties": "sources whose mean is within one pooled seed SD of the target's best "
            "mean (the best included); the SD pooled as for the standard errors",
        },
        "chosen": {
            "development_targets": dict(zip(CONFIG_KEYS, dev_choice, strict=True)),
            "all_targets": dict(zip(CONFIG_KEYS, shipped, strict=True)),
            "nested": {t: "/".join(map(str, c)) for t, c in nested_choices.items()},
        },
        "headline_method": headline,
        "fixed_split_method": fixed_split if has_split else None,
        "noise_floor_method": NOISE_FLOOR,
        "methods": summaries,
        "methods_by_kind": by_kind,
        "noise_floor": {
            "fallbacks": len(fallbacks),
            "fallback_targets": fallbacks,
            "tied_pick_targets": sum(len(noise_rows[t]["tied_picks"]) > 1 for t in names),
        },
        "near_ties": {
            "by_split": {
                split: count_summary([near[t] for t in on]) for split, on in splits.items()
            },
            "by_kind": {
                k: count_summary([near[t] for t in names if kind_of[t] == k]) for k in by_kind
            },
        },
        "checks": checks,
        "learned": learned_report,
        "costs": costs,
        "grid": {
            "/".join(map(str, c)): {
                split: summarise([grid[c][t] for t in on]) for split, on in splits.items()
            }
            for c in configs
        },
        "seconds": {
            "ground_truth": round(truth_seconds, 1),
            "total": round(time.perf_counter() - started, 1),
        },
        "cell_seconds": {  # the timed cells only (restored cells carry no time)
            "median": float(np.median(timed_cells)) if timed_cells else None,
            "cells": len(used_cells),
            "timed_cells": len(timed_cells),
            "sum": float(sum(timed_cells)),
            "workers": workers,
        },
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "torch": torch.__version__,
        },
    }


def target_row(
    target: Target, stats: dict[str, CellStats], p2l: dict, config: tuple, sources: list[str]
) -> dict:
    """One target's ground truth and P2L's pick (nested: chosen without this target's
    family)."""
    means = {s: stats[s].mean for s in sources}
    best, worst = max(means, key=means.get), min(means, key=means.get)
    tied = within_noise(stats)
    return {
        "target": target.name,
        "kind": target.kind,
        "family": target.family,
        "role": target.role,
        "shift": target.shift,
        "train_images": int((~target.is_test).sum()),
        "test_images": int(target.is_test.sum()),
        "classes": len(target.class_names),
        "best_source": best,
        "best_accuracy": means[best],
        "best_stderr": stats[best].stderr,
        "worst_source": worst,
        "worst_accuracy": means[worst],
        "spread": means[best] - means[worst],
        "spread_over_noise": (means[best] - means[worst]) / max(stats[best].stderr, 1e-9),
        "scratch_accuracy": stats[SCRATCH].mean,
        "best_minus_scratch": means[best] - stats[SCRATCH].mean,
        "within_noise_of_best": sorted(tied),
        "seed_sd": seed_sd(stats),
        "p2l_config": "/".join(map(str, config)),
        "p2l_pick": p2l["pick"],
        "p2l_accuracy": p2l["pick_accuracy"],
        "p2l_regret": p2l["regret"],
        "p2l_rank_of_best": p2l["rank_of_best"],
        "p2l_top3": p2l["top3_names"],
        "within_noise_in_top3": p2l["top3_within_noise"],
        "accuracy": {
            s: {"mean": c.mean, "stderr": c.stderr, "runs": c.runs} for s, c in stats.items()
        },
    }


# --- reporting -----------------------------------------------------------------------------


def with_interval(mean: float, interval: list[float], sign: str = "") -> str:
    """``0.043 [0.031, 0.056]`` (``sign="+"``: ``-0.004 [-0.012, +0.003]``)."""
    lo, hi = interval
    return f"{mean:{sign}.3f} [{lo:{sign}.3f}, {hi:{sign}.3f}]"


def difference_text(difference: dict[str, Any] | None, itself: bool = False) -> str:
    """A paired difference with its interval, bold where the interval excludes 0 (a dash for
    the baseline row itself, or where there is none)."""
    if difference is None or itself:
        return "—"
    text = with_interval(difference["mean"], difference["interval"], "+")
    return f"**{text}**" if difference["resolved"] else text


def row_name(name: str, m: dict[str, Any], targets: int) -> str:
    """A method's name, with how many targets it covers where that is not all of them."""
    return name if m["targets"] == targets else f"{name} ({m['targets']} of {targets} targets)"


def methods_table(summary: dict[str, dict[str, Any]]) -> list[str]:
    """Markdown rows: one per method."""
    targets = max(m["targets"] for m in summary.values())
    lines = [
        "| method | top-1 | top-1 within noise | top-3 | a within-noise source in top-3 "
        "| mean regret [90%] | vs P2L [90%] | weighted tau | gain over random "
        "| gain over scratch | OP/RDS | OP/A-phi |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, m in summary.items():
        lines.append(
            f"| {row_name(name, m, targets)} | {m['top1']:.2f} | {m['top1_within_noise']:.2f} | "
            f"{m['top3']:.2f} | {m['top3_within_noise']:.2f} | "
            f"{with_interval(m['regret'], m['regret_interval'])} | "
            f"{difference_text(m['difference_to_p2l'], name == HEADLINE)} | "
            f"{m['weighted_tau']:.2f} | "
            f"{m['gain_over_random']:+.3f} | {m['gain_over_scratch']:+.3f} | "
            f"{m['op_over_rds']:.2f} | {m['op_over_a_phi']:.2f} |"
        )
    return lines


def resolved_sentence(
    summary: dict[str, dict[str, Any]], key: str, baseline: str, label: str
) -> str:
    """Which rows' differences in regret to ``baseline`` (``key``) the intervals resolve, and
    which way; ``label``: what to call the baseline."""
    compared = {n: m[key] for n, m in summary.items() if n != baseline and m.get(key)}
    lower = [n for n, d in compared.items() if d["resolved"] and d["mean"] < 0]
    higher = [n for n, d in compared.items() if d["resolved"] and d["mean"] > 0]
    within = [n for n in compared if n not in lower and n not in higher]

    def named(found: list[str]) -> str:
        return ", ".join(f"`{n}`" for n in found) or "none"

    return (
        f"Resolved against {label} (the 90% interval of the paired difference excludes 0): "
        f"lower regret {named(lower)}; higher regret {named(higher)}. Not resolved "
        f"({len(within)} of {len(compared)}): {named(within)}."
    )


def interval_paragraph(
    summary: dict[str, dict[str, Any]], headline: str, floor_measured: bool = True
) -> list[str]:
    """What the intervals of a table resolve, from its own figures (and what the noise floor
    says, where it was measured: not where every pick had one seed only)."""
    if headline not in summary:
        return []
    top = summary[headline]
    lines = [
        "",
        f"Intervals: 90%, a paired bootstrap over the {top['families']} families of these "
        f"{top['targets']} targets. "
        + resolved_sentence(summary, "difference_to_p2l", headline, f"`{headline}`"),
    ]
    floor = summary.get(NOISE_FLOOR)
    if floor and floor_measured:
        lines[-1] += (
            " The noise floor's regret is "
            f"{with_interval(floor['regret'], floor['regret_interval'])}: one seed's noise alone "
            "costs that much, so smaller differences are not resolvable."
        )
    return lines


def kind_table(summary: dict[str, dict[str, Any]]) -> list[str]:
    """Markdown rows for one kind of target: regret, and the paired differences to the
    headline P2L row and to a random pick."""
    targets = max(m["targets"] for m in summary.values())
    lines = [
        "| method | top-1 within noise | mean regret [90%] | vs P2L [90%] | vs random [90%] |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name, m in summary.items():
        lines.append(
            f"| {row_name(name, m, targets)} | {m['top1_within_noise']:.2f} | "
            f"{with_interval(m['regret'], m['regret_interval'])} | "
            f"{difference_text(m['difference_to_p2l'], name == HEADLINE)} | "
            f"{difference_text(m['difference_to_random'], name == RANDOM)} |"
        )
    return lines


def floor_measured(results: dict[str, Any]) -> bool:
    """Whether the noise floor was measured on some target (not only seed-0 fallbacks)."""
    return bool(results["noise_floor"]["fallbacks"] < len(results["targets"]))


def kinds_section(results: dict[str, Any]) -> list[str]:
    """One table per kind of target, over all targets of that kind."""
    headline, near = results["headline_method"], results["near_ties"]["by_kind"]
    lines = [
        "## Per kind of target",
        "",
        "Every method on all targets of one kind (P2L nested), with intervals from a bootstrap "
        "over that kind's families; bold: the interval excludes 0.",
    ]
    for kind, summary in results["methods_by_kind"].items():
        top = summary[headline]
        lines += [
            "",
            f"### {kind.replace('_', ' ')} ({top['targets']} targets, {top['families']} families)",
            "",
            *kind_table(summary),
            "",
            resolved_sentence(summary, "difference_to_random", RANDOM, "a random pick"),
            *interval_paragraph(summary, headline, floor_measured(results)),
            "",
            f"Near ties: {near[kind]['mean']:.1f} sources per target (median "
            f"{near[kind]['median']:.0f}) within one seed SD of the best.",
        ]
    return lines


def near_ties_section(results: dict[str, Any]) -> list[str]:
    """How many sources per target are within one seed SD of the best, per split and kind."""
    near = results["near_ties"]
    lines = [
        "## Near ties",
        "",
        f"Near ties: {results['rules']['near_ties']}. Where several sources are near ties, "
        "which of them a method picks is mostly noise.",
        "",
        "| targets | how many | near ties per target (mean) | median |",
        "| --- | ---: | ---: | ---: |",
    ]
    for group, summary in [*near["by_split"].items(), *near["by_kind"].items()]:
        lines.append(
            f"| {group.replace('_', ' ')} | {summary['targets']} | {summary['mean']:.1f} | "
            f"{summary['median']:.0f} |"
        )
    return lines


def check_line(check: dict[str, Any]) -> str:
    """One sentence on a regret check."""
    yes = lambda ok: "yes" if ok else "**no**"  # noqa: E731
    return (
        f"`{check['method']}` on the {check['targets']} targets: mean regret "
        f"{check['p2l_regret']:.3f}, LogME {check['logme_regret']:.3f}, random "
        f"{check['random_regret']:.3f}; at most LogME's: {yes(check['p2l_at_most_logme'])}; "
        f"at most a quarter of random's: {yes(check['p2l_at_most_quarter_of_random'])}."
    )


def write(results: dict[str, Any]) -> None:
    """JSON, a Markdown report and a plot under bench/results/."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = "selection_quick" if results["quick"] else "selection"
    (RESULTS / f"{stem}.json").write_text(json.dumps(results, indent=2) + "\n")
    chosen, checks, rules = results["chosen"], results["checks"], results["rules"]
    targets, cells = results["targets"], results["cell_seconds"]
    kinds = {k: sum(t["kind"] == k for t in targets) for k in KINDS}
    on_dev, on_all = chosen["development_targets"], chosen["all_targets"]
    config = "reference `{reference}`, measure `{measure}`, lambda {lambda}".format
    roles = (
        f"{len(results['development_targets'])} development, "
        f"{len(results['report_targets'])} report"
        if results["fixed_split_method"]
        else "no development/report split"
    )
    timed = cells.get("timed_cells", cells["cells"])
    if cells["median"] is None:
        cost = (
            f"Ground truth: {cells['cells']} fine-tunes, none of them timed (restored from a "
            "results file); cells are cached, so this run took "
            f"{results['seconds']['total'] / 60:.1f} min."
        )
    else:
        cost = (
            f"Ground truth: {cells['cells']} fine-tunes; the {timed} timed ones took "
            f"{cells['sum'] / 60:.0f} CPU-minutes, {cells['median']:.1f} s each (median) in each "
            f"of {cells['workers']} single-threaded worker processes on "
            f"{results['machine']['cpus']} CPUs (about {cells['sum'] / cells['workers'] / 60:.0f}"
            " min of wall time from an empty cache; cells are cached, so this run took "
            f"{results['seconds']['total'] / 60:.1f} min)."
        )
    families = len({t["family"] for t in targets})
    floor = results["noise_floor"]
    headline, measured = results["headline_method"], floor_measured(results)
    lines = [
        f"# Selection quality{' (quick subset)' if results['quick'] else ''}",
        "",
        f"{len(targets)} targets from {families} families ({kinds['in_family']} from source "
        f"families, {kinds['shifted']} shifted versions of a source family, "
        f"{kinds['unseen_family']} from families no source saw; {roles}) x "
        f"{len(results['sources'])} sources, plus training from scratch. {cost}",
        "",
        f"- Protocol of every cell: {json.dumps(results['protocol'])}.",
        f"- Seeds: {rules['seeds']}.",
        f"- Within noise: {rules['within_noise']}.",
        f"- Choice of reference network, measure and lambda: {rules['choice']}.",
        f"- Intervals: {rules['bootstrap']['level']:.0%}, {rules['bootstrap']['draws']:,} "
        f"draws (seed {rules['bootstrap']['seed']}), resampling whole families: "
        f'{rules["bootstrap"]["what"]}. "vs P2L": the row\'s mean regret minus '
        f"`{results['headline_method']}`'s; bold where resolved.",
        f"- `{NOISE_FLOOR}`: {rules['noise_floor']} ({floor['fallbacks']} of {len(targets)} "
        f"targets fell back to seed 0; {floor['tied_pick_targets']} had sources tied on seed 0).",
        *(
            [f"- Chosen on the development targets: {config(**on_dev)}."]
            if results["fixed_split_method"]
            else []
        ),
        f"- Chosen on all targets (the service's default after the full run): {config(**on_all)}.",
        "- Every method sees only the training images of a target; the test split is seen by "
        "the final score alone.",
        "",
        "## All targets (P2L's choices nested: each target scored by a choice made without its "
        "family)",
        "",
        *methods_table(results["methods"]["all"]),
        *interval_paragraph(results["methods"]["all"], headline, measured),
        "",
        "## Report targets",
        "",
        *methods_table(results["methods"]["report"]),
        *interval_paragraph(results["methods"]["report"], headline, measured),
        "",
        "## Checks",
        "",
        f"- {check_line(checks['nested_all_targets'])}",
        f"- {check_line(checks['nested_report_targets'])}",
        *(
            [f"- {check_line(checks['fixed_split_report_targets'])}"]
            if "fixed_split_report_targets" in checks
            else []
        ),
        "- A source within noise of the best in P2L's top 3 (nested), on the shifted targets "
        "(the garment case is `fashion_inverted`): "
        + ", ".join(
            f"{t}: {'yes' if ok else '**no**'}"
            for t, ok in checks["within_noise_source_in_p2l_top3"].items()
        )
        + ".",
        "",
        "## Per target",
        "",
        "Ground truth (mean test accuracy over seeds ± standard error), the spread between the "
        "best and the worst source, the sources within one seed SD of the best (near ties), "
        "and P2L's pick under the configuration chosen without that target's family.",
        "",
        "| target | kind | family | role | train/test | best source | worst | spread (/ noise) "
        "| near ties | scratch | best - scratch | P2L pick | regret "
        "| within-noise source in top 3 |",
        "| --- | --- | --- | --- | ---: | --- | --- | ---: | ---: | ---: | ---: | --- | ---: "
        "| :---: |",
    ]
    for t in targets:
        lines.append(
            f"| {t['target']} | {t['kind']}{' (' + t['shift'] + ')' if t['shift'] else ''} | "
            f"{t['family']} | {t['role']} | {t['train_images']}/{t['test_images']} | "
            f"{t['best_source']} ({t['best_accuracy']:.3f} ± {t['best_stderr']:.3f}) | "
            f"{t['worst_source']} ({t['worst_accuracy']:.3f}) | {t['spread']:.3f} "
            f"({t['spread_over_noise']:.0f}x) | {t['near_ties']} | {t['scratch_accuracy']:.3f} | "
            f"{t['best_minus_scratch']:+.3f} | {t['p2l_pick']} "
            f"({t['p2l_accuracy']:.3f}) | {t['p2l_regret']:.3f} | "
            f"{'yes' if t['within_noise_in_top3'] else 'no'} |"
        )
    spreads = [t["spread_over_noise"] for t in targets]
    margins = [t["best_minus_scratch"] for t in targets]
    lines += [
        "",
        "Best minus worst exceeds 3x the best source's standard error on "
        f"{sum(s > 3 for s in spreads)} of {len(targets)} targets "
        f"(median {np.median(spreads):.0f}x); the best source beats training from scratch by "
        f"more than 0.05 on {sum(m > 0.05 for m in margins)} of {len(targets)} "
        f"(median {np.median(margins):+.3f}).",
        "",
        *near_ties_section(results),
        "",
        *kinds_section(results),
        "",
        "## Development targets",
        "",
        *methods_table(results["methods"]["dev"]),
        *interval_paragraph(results["methods"]["dev"], headline, measured),
        "",
        "## Cost",
        "",
        "| method | forward passes per target | median seconds per target |",
        "| --- | ---: | ---: |",
    ]
    for name, entry in results["costs"].items():
        passes = entry.get("forward_passes", "—")
        seconds = entry.get("median_seconds")
        shown = "—" if seconds is None else f"{seconds:.2f}"
        if "timed_targets" in entry:
            shown += f" ({entry['timed_targets']} of {entry['targets']} targets timed)"
        lines.append(f"| {name} | {passes} | {shown} |")
    if results.get("learned"):
        lines += ["", *learned.report_lines(results["learned"])]
        headline = results["methods"]["report"][results["headline_method"]]["regret"]
        learned.plot_curve(results["learned"]["learning_curve"], headline,
                           RESULTS / "learned_curve.png")  # fmt: skip
    (RESULTS / f"{stem}.md").write_text("\n".join(lines) + "\n")
    plot(results, RESULTS / f"{stem}.png")
    print("\n".join(lines))


def plot(results: dict[str, Any], path: Path) -> None:
    """Mean regret and top-1 within noise per method, over all targets."""
    from matplotlib.figure import Figure

    summary = results["methods"]["all"]
    names = list(summary)
    regrets = np.array([summary[n]["regret"] for n in names])
    intervals = np.array([summary[n]["regret_interval"] for n in names])
    fig = Figure(figsize=(11, 0.35 * len(names) + 1.5), dpi=100)
    left, right = fig.subplots(1, 2)
    left.barh(names, [summary[n]["top1_within_noise"] for n in names], color="#1b9e77")
    left.set_xlabel("top-1 within noise (all targets)")
    left.invert_yaxis()
    errors = np.clip([regrets - intervals[:, 0], intervals[:, 1] - regrets], 0, None)
    right.barh(names, regrets, xerr=errors, color="#d95f02", ecolor="#333333", capsize=2)
    right.set_xlabel("mean regret (90% interval over families)")
    right.set_yticks([])
    right.invert_yaxis()
    fig.suptitle("Which source to fine-tune: P2L vs baselines and per-candidate peers")
    fig.tight_layout()
    fig.savefig(path)


def main() -> None:
    """CLI entry point."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="6 sources x 4 targets, 1 seed")
    parser.add_argument("--workers", type=int, default=cpu_workers(),
                        help="fine-tuning processes (one torch thread each)")  # fmt: skip
    args = parser.parse_args()
    write(run(args.quick, args.workers))


if __name__ == "__main__":
    main()
