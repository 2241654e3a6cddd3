"""Degree of fine-tuning: what the layer-wise learning rates buy, and what ``auto`` is worth.

    python -m bench.finetuning_degree            # 16 pairs x 3 seeds (22 min on 2 CPUs)
    python -m bench.finetuning_degree --quick    # 4 pairs x 1 seed (about 1 min)

The lecture's second table (Dube et al., "Degree of finetuning") trains the same source on
the same target with the layers below the head at a learning rate of 0.01 and of 0.1. Here
every pair (target, source) of issue 6's benchmark trains, as a user's job would
(``FinetuneOptions`` defaults: 40 epochs, early stopping on a validation fifth, one-cycle),
under every fixed schedule of ``SCHEDULES`` and under ``auto`` with each search of ``AUTOS``,
with 3 seeds; the score is the accuracy on the target's fixed test split, which nothing else
sees.

Pairs, by a rule fixed before any run: 8 targets spanning size (10, 20 and 50 training
images per class) and kind (in family, shifted, unseen family), each with the source P2L
picks for it (the service's default ranking) and the source P2L ranks last.

What "LL" means here: the head trains at the service's ``base_lr`` (0.05) in every schedule;
LL-0.01 and LL-0.1 put every layer group below the head (stem, stage1-3 of the compact CNN)
at 0.01 and 0.1, as explicit per-group multipliers (0.2 and 2).

``auto`` is measured by running it (its search and its final training). Variants of the
search are replayed: ``app.finetune.search.run_search`` itself, fed the scores of trial
cells (each candidate trained alone as a search's trial trains it); the replays of the real
searches must agree with the real runs, and the report says whether they do. The
predicted rules choose a fixed schedule without any search, from the pairs other than the
target's own (leave one target out, stricter than leaving one pair out): "constant" takes
the schedule with the lowest mean regret on those pairs; "nearest pairs" takes it among the
5 pairs closest in (log training images per class, P2L distance to the source).

Writes bench/results/finetuning_degree.json and .md; cells are cached in
bench/.cache/degree (delete it after changing app/finetune).
"""

import argparse
import hashlib
import json
import math
import time
from concurrent.futures import ProcessPoolExecutor
from functools import cache
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
import torch

from app.families import get_spec, layer_groups, load_model
from app.finetune.options import FinetuneOptions
from app.finetune.pipeline import finetune, three_way_split
from app.finetune.search import (
    AUTO_CANDIDATES,
    AutoScore,
    AutoSearch,
    run_search,
    trial_epochs,
)
from app.finetune.train import ImageTensors, evaluate
from app.zoo.bundled import BUNDLED_DIR
from bench.ground_truth import Target, load_targets, pooled_sd, source_entries
from bench.perf_common import machine
from bench.service_ranking import BundledRanker

RESULTS = Path(__file__).parent / "results"
CACHE = Path(__file__).parent / ".cache" / "degree" / "cells.jsonl"
RUNS = CACHE.with_name("runs.jsonl")  # the invocations that filled the cache
TARGETS = (
    "fashion", "fashion_inverted", "oxygen", "crawl",  # 50 training images per class
    "wesnoth_units",  # 20
    "unseen_scripts", "clipart_fewshot", "digits_inverted",  # 10
)  # fmt: skip
QUICK_TARGETS = ("fashion", "clipart_fewshot")
SEEDS = 3
# Fixed schedules: FinetuneOptions fields, plus "lower_lr" (every group below the head at
# that rate) and freeze_below "half" (the lower half of the groups below the head).
SCHEDULES: dict[str, dict[str, Any]] = {
    "LL-0.01": {"lower_lr": 0.01},
    "LL-0.1": {"lower_lr": 0.1},
    "decay 1": {"decay": 1.0},
    "decay 0.5": {"decay": 0.5},
    "decay 0.1": {"decay": 0.1},
    "decay 0 (frozen)": {"decay": 0.0},
    "freeze stem": {"decay": 1.0, "freeze_below": 1},
    "freeze lower half": {"decay": 1.0, "freeze_below": "half"},
}
AUTOS: dict[str, dict[str, Any]] = {
    "auto: exhaustive, accuracy (before)": {"auto_search": "exhaustive", "auto_score": "accuracy"},
    "auto: halving, accuracy": {"auto_search": "halving", "auto_score": "accuracy"},
    "auto: halving, loss (new default)": {"auto_search": "halving", "auto_score": "loss"},
}
OLD_AUTO, NEW_AUTO = "auto: exhaustive, accuracy (before)", "auto: halving, loss (new default)"
# auto's candidates under their fixed schedules' names.
CANDIDATE_NAMES = ("decay 1", "decay 0.5", "decay 0.1", "decay 0 (frozen)")
# Every trial either search runs (a candidate for some epochs, no early stopping), so that
# searches can be replayed from them: a trial is the same run as a manual job with those
# epochs and no patience.
AUTO_EPOCHS = FinetuneOptions().auto_epochs
TRIAL_EPOCHS = sorted({*trial_epochs("halving", AUTO_EPOCHS),
                       *trial_epochs("exhaustive", AUTO_EPOCHS)})  # fmt: skip
TRIALS: dict[str, dict[str, Any]] = {
    f"{name} for {epochs} epochs": {**SCHEDULES[name], "epochs": epochs, "patience": None}
    for name in CANDIDATE_NAMES
    for epochs in TRIAL_EPOCHS
}
# Searches replayed from the trials: (search, score, train the winner again?). The first
# three replay the real ones (a check that replays are exact); the others are variants.
Replayed = tuple[AutoSearch, AutoScore, bool]
REPLAYED: dict[str, Replayed] = {
    "replay: exhaustive, accuracy (before)": ("exhaustive", "accuracy", True),
    "replay: halving, accuracy": ("halving", "accuracy", True),
    "replay: halving, loss (new default)": ("halving", "loss", True),
    "replay: exhaustive, loss": ("exhaustive", "loss", True),
    "replay: exhaustive, accuracy, the winner's trial model kept": (
        "exhaustive",
        "accuracy",
        False,
    ),
    "replay: halving, accuracy, the winner's trial model kept": ("halving", "accuracy", False),
    "replay: halving, loss, the winner's trial model kept": ("halving", "loss", False),
}
NEIGHBOURS = 5
ALL = {**SCHEDULES, **TRIALS, **AUTOS}


@cache
def _target(name: str) -> Target:
    return load_targets([name])[0]


def options_for(schedule: str, groups: int, seed: int) -> FinetuneOptions:
    """The job's options for one schedule: the service's defaults, the test split external."""
    fixed = SCHEDULES.get(schedule) or TRIALS.get(schedule)
    fields = dict({"schedule": "auto", **AUTOS[schedule]} if fixed is None
                  else {"schedule": "manual", **fixed})  # fmt: skip
    if "lower_lr" in fields:
        lower = fields.pop("lower_lr") / FinetuneOptions().base_lr
        fields["multipliers"] = [lower] * (groups - 1) + [1.0]
    if fields.get("freeze_below") == "half":
        fields["freeze_below"] = (groups - 1) // 2
    return FinetuneOptions(test_fraction=0.0, seed=seed, **fields)


def run_cell(target_name: str, source_name: str, schedule: str, seed: int) -> dict[str, Any]:
    """One fine-tune as a job runs it; its test accuracy and the epochs it spent."""
    torch.set_num_threads(1)
    target = _target(target_name)
    entry = source_entries()[source_name]
    spec = get_spec(entry["architecture"])
    source = load_model(entry["architecture"], entry["num_classes"], BUNDLED_DIR / entry["weights"])
    options = options_for(schedule, len(layer_groups(source)), seed)
    images, labels = target.train
    started = time.perf_counter()
    model, report = finetune(
        source, entry["architecture"], images, labels, target.class_names, spec.mean, spec.std,
        options,
    )  # fmt: skip
    test = ImageTensors(
        target.images[target.is_test], target.labels[target.is_test], spec.mean, spec.std
    )
    search = report.auto_search
    chosen = None
    if search is not None:
        chosen = CANDIDATE_NAMES[AUTO_CANDIDATES.index(search["chosen"])]
    _, val_index, _ = three_way_split(labels, options.val_fraction, options.test_fraction, seed)
    val = evaluate(model, ImageTensors(images[val_index], labels[val_index], spec.mean, spec.std))
    return {
        "test_accuracy": evaluate(model, test).accuracy,
        "val_accuracy": val.accuracy,
        "val_loss": val.loss,
        "final_epochs": len(report.history),
        "search_epochs": search["epochs"] if search else 0,
        "chosen": chosen,
        "seconds": time.perf_counter() - started,
    }


def protocol_key(schedule: str) -> str:
    """What a cached cell depends on besides its names (delete the cache on code changes)."""
    # auto's own fields are in each auto's spec (a manual run does not depend on them).
    defaults = FinetuneOptions().model_dump(exclude={"auto_search", "auto_score"})
    protocol = {"defaults": defaults,
                "schedule": ALL[schedule]}  # fmt: skip
    if schedule in AUTOS:
        protocol["trials"] = trial_epochs(AUTOS[schedule]["auto_search"], AUTO_EPOCHS)
    return hashlib.sha256(json.dumps(protocol, sort_keys=True).encode()).hexdigest()[:12]


def load_cache() -> dict[tuple[str, str, str, int], dict[str, Any]]:
    """Finished cells of this protocol."""
    cells = {}
    if CACHE.exists():
        keys = {schedule: protocol_key(schedule) for schedule in ALL}
        for line in CACHE.read_text().splitlines():
            row = json.loads(line)
            if keys.get(row["schedule"]) == row["protocol"]:
                cells[(row["target"], row["source"], row["schedule"], row["seed"])] = row
    return cells


def run_cells(todo: list[tuple[str, str, str, int]], workers: int) -> float:
    """Run (and cache) the cells not done yet; their wall time."""
    cells = load_cache()
    missing = [cell for cell in todo if cell not in cells]
    started = time.perf_counter()
    if not missing:
        return 0.0
    print(f"fine-tuning {len(missing)} cells on {workers} processes ...", flush=True)
    CACHE.parent.mkdir(parents=True, exist_ok=True)
    with ProcessPoolExecutor(max_workers=workers) as pool, CACHE.open("a") as stream:
        futures = [(cell, pool.submit(run_cell, *cell)) for cell in missing]
        for done, ((target, source, schedule, seed), future) in enumerate(futures, start=1):
            row = {"target": target, "source": source, "schedule": schedule, "seed": seed,
                   "protocol": protocol_key(schedule), **future.result()}  # fmt: skip
            stream.write(json.dumps(row) + "\n")
            stream.flush()
            if done % 40 == 0 or done == len(missing):
                print(f"  {done}/{len(missing)}, {time.perf_counter() - started:.0f}s", flush=True)
    seconds = time.perf_counter() - started
    with RUNS.open("a") as stream:
        stream.write(
            json.dumps({"cells": len(missing), "wall_seconds": seconds, **machine()}) + "\n"
        )
    return seconds


def runs_so_far() -> list[dict[str, Any]]:
    """The invocations that computed the cached cells (how long each took, on what)."""
    return [json.loads(line) for line in RUNS.read_text().splitlines()] if RUNS.exists() else []


# --- pairs ---------------------------------------------------------------------------------


def choose_pairs(targets: list[str]) -> list[dict[str, Any]]:
    """Each target with P2L's pick (service default ranking) and the source it ranks last."""
    ranker = BundledRanker()
    pairs = []
    for name in targets:
        target = _target(name)
        images, labels = target.train
        ranked = ranker.rank(images, labels, target.class_names)
        per_class = len(labels) / len(target.class_names)
        for role, scored in (("P2L's pick", ranked[0]), ("P2L's last", ranked[-1])):
            pairs.append({
                "target": name, "source": scored.source_id, "role": role, "kind": target.kind,
                "train_per_class": per_class, "distance": float(scored.distance),
            })  # fmt: skip
    return pairs


# --- analysis ------------------------------------------------------------------------------


Cells = dict[tuple[str, str, str, int], dict[str, Any]]
Outcome = tuple[float, float, str]  # test accuracy, epochs (search + final), what trained


def replay(pair: dict[str, Any], seed: int, cells: Cells, how: Replayed) -> Outcome:
    """A search rerun by the service's own code on the trials' cells: what it would choose,
    reach and spend."""
    search, score, retrain = how
    key = (pair["target"], pair["source"])
    trained: dict[tuple[str, int], dict[str, Any]] = {}

    def look_up(candidate: dict[str, Any], epochs: int, *_: int) -> dict[str, float]:
        name = CANDIDATE_NAMES[AUTO_CANDIDATES.index(candidate)]
        trained[(name, epochs)] = cells[(*key, f"{name} for {epochs} epochs", seed)]
        return {k: trained[(name, epochs)][k] for k in ("val_accuracy", "val_loss")}

    record = run_search(search, score, AUTO_EPOCHS, look_up)
    chosen = CANDIDATE_NAMES[AUTO_CANDIDATES.index(record["chosen"])]
    if not retrain:
        kept = trained[(chosen, record["rounds"][-1]["epochs"])]
        return kept["test_accuracy"], float(record["epochs"]), chosen
    final = cells[(*key, chosen, seed)]
    return final["test_accuracy"], float(record["epochs"] + final["final_epochs"]), chosen


def analyse(pairs: list[dict[str, Any]], cells: Cells, seeds: int) -> dict[str, Any]:
    """Per-pair means, regrets against the best fixed schedule, and every method's summary."""
    outcomes: dict[str, dict[int, list[Outcome]]] = {}  # method -> pair -> one per seed
    for s in [*SCHEDULES, *AUTOS]:
        outcomes[s] = {}
        for i, p in enumerate(pairs):
            found = [cells[(p["target"], p["source"], s, seed)] for seed in range(seeds)]
            outcomes[s][i] = [
                (c["test_accuracy"], float(c["final_epochs"] + c["search_epochs"]),
                 c["chosen"] or s)
                for c in found
            ]  # fmt: skip
    for name, how in REPLAYED.items():
        outcomes[name] = {i: [replay(p, seed, cells, how) for seed in range(seeds)]
                          for i, p in enumerate(pairs)}  # fmt: skip
    means = {m: {i: float(np.mean([o[0] for o in runs])) for i, runs in by.items()}
             for m, by in outcomes.items()}  # fmt: skip
    epochs = {m: {i: float(np.mean([o[1] for o in runs])) for i, runs in by.items()}
              for m, by in outcomes.items()}  # fmt: skip
    sd = pooled_sd({f"{i}/{s}": [o[0] for o in outcomes[s][i]]
                    for s in SCHEDULES for i in range(len(pairs))})  # fmt: skip
    stderr = sd / math.sqrt(seeds)
    best = {i: max(SCHEDULES, key=lambda s, i=i: means[s][i]) for i in range(len(pairs))}
    regret = {i: {s: means[best[i]][i] - means[s][i] for s in SCHEDULES} for i in best}

    methods: dict[str, dict[int, tuple[float, float, str]]] = {}  # pair -> regret, epochs, pick
    for m, by in outcomes.items():
        methods[m] = {i: (means[best[i]][i] - means[m][i], epochs[m][i], _picks(runs))
                      for i, runs in by.items()}  # fmt: skip
    predicted = {
        "constant schedule, leave one target out": _constant_rule(pairs, regret),
        f"nearest {NEIGHBOURS} pairs (size, P2L distance), leave one target out": _nearest_rule(
            pairs, regret
        ),
        "by P2L distance (one schedule for near sources, one for far), leave one target out": (
            _distance_rule(pairs, regret)
        ),
    }
    # Choosing among the searches on these pairs is itself a choice: made without the target.
    loto = {}
    for i, p in enumerate(pairs):
        others = [j for j, q in enumerate(pairs) if q["target"] != p["target"]]
        variant = min(REPLAYED, key=lambda v: np.mean([methods[v][j][0] for j in others]))
        loto[i] = (*methods[variant][i][:2], variant.removeprefix("replay: "))
    methods["the search variant chosen on the other targets (leave one target out)"] = loto
    in_sample = min(SCHEDULES, key=lambda s: np.mean([regret[i][s] for i in regret]))
    predicted[f"one fixed schedule for all, chosen in-sample ({in_sample})"] = dict.fromkeys(
        best, in_sample
    )
    for rule, picks in predicted.items():
        methods[rule] = {i: (regret[i][p], epochs[p][i], p) for i, p in picks.items()}

    # Regret against what a user would pick from the other seeds' runs: free of the optimism
    # of "the best of 8 noisy means", but that pick is itself noisy, so this understates the
    # regret against the truly best schedule as much as the plain regret overstates it.
    def held_out_best(i: int, seed: int) -> float:
        others = [k for k in range(seeds) if k != seed]
        chosen = max(SCHEDULES, key=lambda s: np.mean([outcomes[s][i][k][0] for k in others]))
        return outcomes[chosen][i][seed][0]

    def accuracy_of(method: str, i: int, seed: int) -> float:
        if method in outcomes:
            return outcomes[method][i][seed][0]
        if method not in predicted:  # the search variant chosen leave one target out
            return outcomes[f"replay: {methods[method][i][2]}"][i][seed][0]
        return outcomes[predicted[method][i]][i][seed][0]  # a rule: its fixed schedule

    old_epochs = float(np.mean([methods[OLD_AUTO][i][1] for i in best]))
    summary = {}
    for method, per_pair in methods.items():
        r = np.array([v[0] for v in per_pair.values()])
        e = float(np.mean([v[1] for v in per_pair.values()]))
        summary[method] = {
            "mean_regret": float(r.mean()),
            "regret_stderr": _stderr_over_targets(r, pairs),
            "best_on_pairs": int(np.sum(r <= 1e-12)),
            "mean_epochs": e,
            "epochs_vs_old_auto": e / old_epochs,
            "within_pooled_se": bool(r.mean() <= stderr),
        }
        if seeds > 1:
            cross = np.array([
                np.mean([held_out_best(i, k) - accuracy_of(method, i, k) for k in range(seeds)])
                for i in per_pair
            ])  # fmt: skip
            summary[method]["cross_seed_regret"] = float(cross.mean())
            summary[method]["cross_seed_stderr"] = _stderr_over_targets(cross, pairs)
    agree = sum(
        outcomes[real][i][seed] == outcomes[replayed][i][seed]
        for real, replayed in zip(AUTOS, REPLAYED, strict=False)
        for i in best
        for seed in range(seeds)
    )  # fmt: skip
    rows = []
    for i, p in enumerate(pairs):
        ordered = sorted(SCHEDULES, key=lambda s, i=i: -means[s][i])
        rows.append({
            **p,
            "means": {m: means[m][i] for m in means},
            "epochs": {m: epochs[m][i] for m in epochs},
            "best_fixed": ordered[0],
            "second_fixed": ordered[1],
            "worst_fixed": ordered[-1],
            "methods": {m: {"regret": v[i][0], "epochs": v[i][1], "pick": v[i][2]}
                        for m, v in methods.items()},
        })  # fmt: skip
    return {
        "pooled_seed_sd": sd,
        "pooled_stderr": stderr,
        "replays_matching_real_runs": [agree, len(AUTOS) * len(best) * seeds],
        "pairs": rows,
        "summary": summary,
    }


def _stderr_over_targets(values: np.ndarray, pairs: list[dict[str, Any]]) -> float:
    """Standard error of the mean of per-pair values, over targets (a target's two pairs
    share its test split and its noise, so they are not independent)."""
    targets = list(dict.fromkeys(p["target"] for p in pairs))
    means = [np.mean([v for v, p in zip(values, pairs, strict=True) if p["target"] == t])
             for t in targets]  # fmt: skip
    return float(np.std(means, ddof=1) / math.sqrt(len(means))) if len(means) > 1 else math.nan


def _picks(runs: list[Outcome]) -> str:
    """What a method trained, per seed (a search may choose differently for each seed)."""
    chosen = [o[2] for o in runs]
    counts = {c: chosen.count(c) for c in dict.fromkeys(chosen)}
    return ", ".join(f"{c} x{n}" if n > 1 else c for c, n in counts.items())


def _constant_rule(
    pairs: list[dict[str, Any]], regret: dict[int, dict[str, float]]
) -> dict[int, str]:
    """For each pair: the fixed schedule with the lowest mean regret on the other targets."""
    picks = {}
    for i, p in enumerate(pairs):
        others = [j for j, q in enumerate(pairs) if q["target"] != p["target"]]
        picks[i] = min(SCHEDULES, key=lambda s: np.mean([regret[j][s] for j in others]))
    return picks


def _nearest_rule(
    pairs: list[dict[str, Any]], regret: dict[int, dict[str, float]]
) -> dict[int, str]:
    """For each pair: the fixed schedule with the lowest mean regret on the nearest pairs of
    other targets, in standardised (log training images per class, P2L distance)."""
    features = np.array([[math.log(p["train_per_class"]), p["distance"]] for p in pairs])
    picks = {}
    for i, p in enumerate(pairs):
        others = [j for j, q in enumerate(pairs) if q["target"] != p["target"]]
        known = features[others]
        scale = known.std(axis=0) + 1e-12
        gaps = np.linalg.norm((known - features[i]) / scale, axis=1)
        near = [others[k] for k in np.argsort(gaps, kind="stable")[:NEIGHBOURS]]
        picks[i] = min(SCHEDULES, key=lambda s: np.mean([regret[j][s] for j in near]))
    return picks


def _distance_rule(
    pairs: list[dict[str, Any]], regret: dict[int, dict[str, float]]
) -> dict[int, str]:
    """For each pair: one fixed schedule for sources nearer than a P2L-distance threshold and
    one for those farther, threshold and schedules fitted on the other targets' pairs."""
    picks = {}
    for i, p in enumerate(pairs):
        others = [j for j, q in enumerate(pairs) if q["target"] != p["target"]]
        fit = _fit_split([pairs[j]["distance"] for j in others], [regret[j] for j in others])
        threshold, near, far = fit
        picks[i] = near if p["distance"] <= threshold else far
    return picks


def _fit_split(distances: list[float], regrets: list[dict[str, float]]) -> tuple[float, str, str]:
    """(threshold, schedule at or below it, schedule above it) with the least total regret;
    ties go to the schedule listed first."""

    def best(side: list[int]) -> tuple[float, str]:
        totals = {s: sum(regrets[k][s] for k in side) for s in SCHEDULES}
        chosen = min(SCHEDULES, key=lambda s: totals[s])
        return totals[chosen], chosen

    everyone = best(list(range(len(distances))))
    fits = [(everyone[0], max(distances), everyone[1], everyone[1])]  # no split at all
    order = sorted(set(distances))
    for cut in ((a + b) / 2 for a, b in pairwise(order)):
        (low, near), (high, far) = (
            best([k for k, d in enumerate(distances) if d <= cut]),
            best([k for k, d in enumerate(distances) if d > cut]),
        )
        fits.append((low + high, cut, near, far))
    _, cut, near, far = min(fits, key=lambda fit: fit[0])
    return cut, near, far


# --- report --------------------------------------------------------------------------------


def _pct(a: float, b: float) -> str:
    return f"{100 * (a - b) / b:.1f}%" if b > 0 else "n/a"


def markdown(result: dict[str, Any]) -> str:
    """The results as Markdown: the lecture's table, the per-pair columns, the summary."""
    a = result["analysis"]
    se = a["pooled_stderr"]
    out = [
        "# Degree of fine-tuning",
        "",
        f"{len(a['pairs'])} pairs (target, source) x ({len(SCHEDULES)} fixed schedules + "
        f"{len(AUTOS)} auto searches + {len(TRIALS)} search trials) x {result['seeds']} seeds "
        f"= {result['cells']} fine-tunes, each as a job runs it (FinetuneOptions defaults: 40 "
        "epochs, one-cycle, early stopping with patience 10 on a validation fifth of the "
        "training images, best checkpoint), scored on the target's fixed test split "
        f"({result['cell_seconds'] / 60:.0f} CPU-min of fine-tuning in all).",
        "",
        "The run: "
        + "; ".join(
            f"{r['cells']} cells in {r['wall_seconds'] / 60:.1f} min of wall time on "
            f"{r['cpus']} CPUs ({result['workers']} single-threaded processes), load average at "
            f"start {r['load_average_1m_5m'][0]} (idle: {'yes' if r['idle_at_start'] else 'no'})"
            for r in result["runs"]
        )
        + f"; this report: {result['cached_cells']} cells from the cache.",
        "",
        "LL-x: the head at base_lr 0.05, every group below it (stem, stage1-3) at x. Accuracy: "
        f"mean over seeds; pooled seed SD {a['pooled_seed_sd']:.3f}, so the standard error of "
        f"one cell's mean is {se:.3f}.",
        "",
        "Searches are also replayed from trial cells (every candidate trained alone for 3, 6 "
        "and 10 epochs, as a search's trial does), which lets other scores and searches be "
        f"compared on the same runs; the replays of the {len(AUTOS)} real searches (the same "
        "code, `app.finetune.search.run_search`, fed the trials' scores) choose the same "
        "schedule and reach the same test accuracy as the real runs in "
        f"{a['replays_matching_real_runs'][0]} of {a['replays_matching_real_runs'][1]} "
        "(pair, seed) runs.",
        "",
        "## The lecture's table",
        "",
        "| target | source | LL-0.01 | LL-0.1 | % gain | best fixed | second | % gain |",
        "| --- | --- | ---: | ---: | ---: | --- | --- | ---: |",
    ]
    for row in a["pairs"]:
        m = row["means"]
        low, high = m["LL-0.01"], m["LL-0.1"]
        ll = [f"**{v:.1%}**" if v == max(low, high) else f"{v:.1%}" for v in (low, high)]
        first, second = row["best_fixed"], row["second_fixed"]
        out.append(
            f"| {row['target']} | {row['source']} ({row['role']}) | {ll[0]} | {ll[1]} | "
            f"{_pct(max(low, high), min(low, high))} | {first} ({m[first]:.1%}) | "
            f"{second} ({m[second]:.1%}) | {_pct(m[first], m[second])} |"
        )
    out += [
        "",
        "## Every fixed schedule, and what auto picked",
        "",
        "Mean test accuracy per schedule; auto: what it chose per seed, its regret against the "
        "pair's best fixed schedule, and its epochs (search + final training, mean over seeds).",
        "",
        "| target | source | train/class | P2L distance | "
        + " | ".join(SCHEDULES)
        + " | best - worst | "
        + " | ".join(AUTOS)
        + " |",
        "| --- | --- | ---: | ---: | " + " | ".join("---:" for _ in SCHEDULES) + " | ---: | "
        + " | ".join("---" for _ in AUTOS) + " |",
    ]  # fmt: skip
    for row in a["pairs"]:
        m = row["means"]
        cells = [f"**{m[s]:.3f}**" if s == row["best_fixed"] else f"{m[s]:.3f}" for s in SCHEDULES]
        autos = [
            f"{row['methods'][s]['pick']}: {m[s]:.3f}, regret {row['methods'][s]['regret']:+.3f}, "
            f"{row['methods'][s]['epochs']:.0f} ep"
            for s in AUTOS
        ]
        out.append(
            f"| {row['target']} | {row['source']} | {row['train_per_class']:.0f} | "
            f"{row['distance']:.3f} | " + " | ".join(cells)
            + f" | {m[row['best_fixed']] - m[row['worst_fixed']]:.3f} | " + " | ".join(autos) + " |"
        )  # fmt: skip
    out += [
        "",
        "## Regret and cost of each way to choose",
        "",
        "Regret: the pair's best fixed schedule's mean minus the method's (accuracy points), "
        "averaged over pairs. It is optimistic about the best (the best of 8 noisy means), so "
        "even a method that always trained a truly best schedule would show some. Cross-seed "
        "regret compares each seed's run with the fixed schedule that is best on the other "
        "seeds instead (it can be negative); it errs the other way, as that pick is noisy "
        "too. SE: over the 8 targets (a target's two pairs share its noise). Epochs: search "
        "plus final training, mean per job. Predicted rules and the leave-one-target-out "
        "search variant never see the held-out target's results; the new default was chosen "
        "among the search variants on all 16 pairs, so its row is in-sample and the "
        "leave-one-target-out variant's row is the honest estimate of choosing that way.",
        "",
        "| method | mean regret | ± SE | within pooled SE | pairs at the best | "
        "cross-seed regret | ± SE | epochs | epochs vs old auto |",
        "| --- | ---: | ---: | :---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for method, s in sorted(a["summary"].items(), key=lambda kv: kv[1]["mean_regret"]):
        cross = (f"{s['cross_seed_regret']:+.3f} | {s['cross_seed_stderr']:.3f}"
                 if "cross_seed_regret" in s else "n/a | n/a")  # fmt: skip
        out.append(
            f"| {method} | {s['mean_regret']:.3f} | {s['regret_stderr']:.3f} | "
            f"{'yes' if s['within_pooled_se'] else 'no'} | {s['best_on_pairs']} | {cross} | "
            f"{s['mean_epochs']:.1f} | {s['epochs_vs_old_auto']:.2f}x |"
        )
    out += ["", *result["conclusions"], ""]
    return "\n".join(out)


def conclusions(analysis: dict[str, Any]) -> list[str]:
    """The issue's checks in words, from the figures."""
    s, se = analysis["summary"], analysis["pooled_stderr"]
    lines = ["## Checks", ""]
    for name in (NEW_AUTO, OLD_AUTO):
        m = s[name]
        verdict = "within it" if m["within_pooled_se"] else (
            f"missed by {m['mean_regret'] - se:.3f}")  # fmt: skip
        lines.append(
            f"- {name}: mean regret {m['mean_regret']:.3f} against a pooled standard error "
            f"of {se:.3f} ({verdict}); cross-seed regret "
            f"{m.get('cross_seed_regret', math.nan):+.3f} "
            f"± {m.get('cross_seed_stderr', math.nan):.3f}; "
            f"{m['mean_epochs']:.1f} epochs per job, "
            f"{m['epochs_vs_old_auto']:.2f}x the old auto's."
        )
    lowest = min(s, key=lambda k: s[k]["mean_regret"])
    near = [k for k in s if s[k]["mean_regret"] <= s[lowest]["mean_regret"] + se]
    cheapest = min(near, key=lambda k: s[k]["mean_epochs"])
    lines.append(
        f"- Lowest mean regret: {lowest} ({s[lowest]['mean_regret']:.3f}, "
        f"{s[lowest]['mean_epochs']:.1f} epochs). Cheapest within one pooled standard error of "
        f"it: {cheapest} ({s[cheapest]['mean_regret']:.3f}, {s[cheapest]['mean_epochs']:.1f} "
        "epochs)."
    )
    for role, winner, loser in (("P2L's pick", "LL-0.01", "LL-0.1"),
                                ("P2L's last", "LL-0.1", "LL-0.01")):  # fmt: skip
        rows = [r for r in analysis["pairs"] if r["role"] == role]
        wins = sum(r["means"][winner] > r["means"][loser] for r in rows)
        lines.append(
            f"- The lecture's pattern: with {role} as the source, {winner} beats {loser} on "
            f"{wins} of {len(rows)} targets."
        )
    return lines


def main() -> None:
    """Run the benchmark and write its results."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 targets, 1 seed")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    started = time.perf_counter()
    host = machine()
    seeds = 1 if args.quick else SEEDS
    pairs = choose_pairs(list(QUICK_TARGETS if args.quick else TARGETS))
    todo = [(p["target"], p["source"], s, seed)
            for seed in range(seeds) for p in pairs for s in ALL]  # fmt: skip
    before = load_cache()
    cached = sum(cell in before for cell in todo)
    run_cells(todo, args.workers)
    cells = load_cache()
    analysis = analyse(pairs, cells, seeds)
    result = {
        "seeds": seeds,
        "cells": len(todo),
        "cached_cells": cached,
        "workers": args.workers,
        "cell_seconds": float(sum(cells[c]["seconds"] for c in todo)),
        "machine": host,
        "schedules": SCHEDULES,
        "autos": AUTOS,
        "halving_trial_epochs": trial_epochs("halving", FinetuneOptions().auto_epochs),
        "analysis": analysis,
        "conclusions": conclusions(analysis),
        "runs": runs_so_far(),
    }
    result["wall_seconds"] = time.perf_counter() - started
    stem = "finetuning_degree_quick" if args.quick else "finetuning_degree"
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{stem}.json").write_text(json.dumps(result, indent=1) + "\n")
    (RESULTS / f"{stem}.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
