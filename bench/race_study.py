"""Can any trial on the target's own training images pick within P2L's shortlist well enough
for issue 14's race bar? Out-of-fold scores of every shortlisted source, and ceilings.

    python -m bench.race_study        # every bundled target, about 20 min on 2 CPUs

The race (bench/race.py) scores short fine-tunes on a fifth of the target's training images
and misses its bar (regret under half of P2L's on the report targets). This study asks
whether more validation evidence would meet it. For every target, P2L's top 5 sources are
fine-tuned under the ground truth's protocol on 2 of 3 folds of the training images and
scored on the third, for every fold, so that every training image gets an out-of-fold loss
and correctness per source (seed 0). Folds are drawn three ways: stratified at random, and
as whole k-means clusters of the reference network's features per class (1 or 2 clusters a
class per fold), which keeps look-alikes (a sprite's frames, a font's glyphs) on one side,
as the benchmark's test splits keep whole groups. Trials train a sixth of the protocol's
epochs (random folds: a third too).

Selection rules over P2L's top 3 or 5: the best mean merit (minus loss, or accuracy) on one
fold (a single validation split of a third) or pooled over all folds, with P2L's first
choice kept unless beaten by more than z standard errors of the per-image difference
(z = 0, 1, 2). The rule with the lowest regret on the development targets is then judged on
the report targets. Two ceilings need no trial: the best source in the shortlist (oracle),
and a picker that sees the test split itself through one fine-tune per source (each
source's ground-truth mean plus the target's seed noise, 2,000 draws). Cost: the trials'
image-epochs plus the winner's fine-tune, against fine-tuning every shortlisted source.
Writes bench/results/race_study.json and .md.
"""

import json
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from itertools import product
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.cluster.vq import kmeans2
from scipy.stats import spearmanr

from app.families import get_spec, head_outputs, load_model
from app.finetune.pipeline import _train_copy
from app.finetune.train import Accelerator, ImageTensors, evaluate
from app.zoo.bundled import BUNDLED_DIR
from bench.ground_truth import load_targets, options_for, source_entries
from bench.perf_common import machine
from bench.service_ranking import BundledRanker

RESULTS = Path(__file__).parent / "results"
SELECTION = RESULTS / "selection.json"
CACHE = Path(__file__).parent / ".cache" / "race_study"
FOLDS = 3
TOP = 5
SHORTLISTS = (3, 5)
SPLITS = ("random", "clusters2", "clusters1")
SEED = 0
REPLICATE_DRAWS = 2000
BAR = 0.5  # issue 14: the race's regret under half of P2L's
LABELS = {
    "p2l": "P2L's pick (regret)",
    "spearman": "Spearman, out-of-fold vs test accuracy (top 5)",
}


def random_folds(labels: np.ndarray, seed: int) -> np.ndarray:
    """A fold number per image, stratified by class."""
    rng = np.random.default_rng(seed)
    fold = np.empty(len(labels), int)
    for label in np.unique(labels):
        index = rng.permutation(np.flatnonzero(labels == label))
        fold[index] = np.arange(len(index)) % FOLDS
    return fold


def cluster_folds(features: np.ndarray, labels: np.ndarray, per_fold: int, seed: int) -> np.ndarray:
    """A fold number per image: whole k-means clusters of each class's (unit) features to a
    fold, largest first to the lightest fold."""
    fold = np.empty(len(labels), int)
    unit = features / np.linalg.norm(features, axis=1, keepdims=True).clip(1e-12)
    for label in np.unique(labels):
        index = np.flatnonzero(labels == label)
        clusters = min(len(index), FOLDS * per_fold)
        _, assigned = kmeans2(unit[index].astype(np.float64), clusters, minit="++", seed=seed)
        sizes = np.bincount(assigned, minlength=clusters)
        load = np.zeros(FOLDS)
        for cluster in np.argsort(-sizes, kind="stable"):
            k = int(np.argmin(load))
            fold[index[assigned == cluster]] = k
            load[k] += sizes[cluster]
    return fold


def study_target(name: str, split: str) -> dict[str, Any]:
    """Out-of-fold per-image scores of P2L's top sources on one target (cached per split)."""
    path = CACHE / split / f"{name}.json"
    if path.exists():
        return json.loads(path.read_text())
    torch.set_num_threads(1)
    target = load_targets([name])[0]
    images, labels = target.train
    ranker = BundledRanker()
    ranked = [s.source_id for s in ranker.rank(images, labels, target.class_names)]
    options = options_for(len(labels), SEED)
    if split == "random":
        fold = random_folds(labels, SEED)
        levels = sorted({max(1, round(options.epochs / d)) for d in (6, 3)})
    else:  # "clusters<n>"
        features = torch.cat(list(ranker.reference.embed_array(images))).numpy()
        fold = cluster_folds(features, labels, int(split.removeprefix("clusters")), SEED)
        levels = [max(1, round(options.epochs / 6))]
    entries = source_entries(ranked[:TOP])
    scores: dict[str, Any] = {}
    for source, epochs in product(ranked[:TOP], levels):
        entry = entries[source]
        spec = get_spec(entry["architecture"])
        model = load_model(entry["architecture"], entry["num_classes"],
                           BUNDLED_DIR / entry["weights"])  # fmt: skip
        losses, correct = np.zeros(len(labels)), np.zeros(len(labels), bool)
        for k in range(FOLDS):
            train = ImageTensors(images[fold != k], labels[fold != k], spec.mean, spec.std)
            held = ImageTensors(images[fold == k], labels[fold == k], spec.mean, spec.std)
            tuned, _, _ = _train_copy(
                model.state_dict(), entry["architecture"], head_outputs(model),
                len(target.class_names), train, None, options, {}, epochs, {}, None,
                torch.device("cpu"), None, None, Accelerator(),
            )  # fmt: skip
            held_scores = evaluate(tuned, held, probabilities=True)
            assert held_scores.probabilities is not None
            chance = held_scores.probabilities[np.arange(len(held)), held_scores.labels]
            losses[fold == k] = -np.log(np.clip(chance, 1e-12, None))
            correct[fold == k] = held_scores.predictions == held_scores.labels
        scores[f"{source}@{epochs}"] = {
            "losses": losses.round(5).tolist(), "correct": correct.astype(int).tolist()
        }  # fmt: skip
    study = {"target": name, "role": target.role, "ranked": ranked, "epochs": options.epochs,
             "levels": levels, "fold": fold.tolist(), "scores": scores}  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(study))
    print(split, name, flush=True)
    return study


def merit(study: dict[str, Any], source: str, epochs: int, by: str, fold: int | None) -> np.ndarray:
    """Per-image merit (higher is better): minus the loss, or correctness; one fold or all."""
    scores = study["scores"][f"{source}@{epochs}"]
    values = -np.asarray(scores["losses"]) if by == "loss" else np.asarray(scores["correct"], float)
    return values if fold is None else values[np.asarray(study["fold"]) == fold]


def pick(shortlist: list[str], merits: dict[str, np.ndarray], z: float) -> str:
    """The best mean merit (ties: P2L's order), unless it beats P2L's first choice by no more
    than ``z`` standard errors of the per-image difference."""
    best = max(shortlist, key=lambda s: (merits[s].mean(), -shortlist.index(s)))
    if best == shortlist[0] or z <= 0:
        return best
    difference = merits[best] - merits[shortlist[0]]
    error = difference.std(ddof=1) / np.sqrt(len(difference))
    return best if difference.mean() > z * error else shortlist[0]


def rules(study: dict[str, Any], split: str) -> dict[str, tuple[str, float]]:
    """Every rule's pick on one target, and its cost as a fraction of fine-tuning every
    shortlisted source."""
    out = {}
    for k, by, epochs, scope, z in product(
        SHORTLISTS, ("loss", "accuracy"), study["levels"], ("one fold", "all folds"), (0, 1, 2)
    ):
        shortlist = study["ranked"][:k]
        fold = 0 if scope == "one fold" else None
        merits = {s: merit(study, s, epochs, by, fold) for s in shortlist}
        # Image-epochs of the trials per source: 2/3 of the images, once or once per fold.
        trials = epochs * (FOLDS - 1) / FOLDS * (1 if fold == 0 else FOLDS)
        level = f"1/{round(study['epochs'] / epochs)}" if epochs < study["epochs"] else "all"
        name = f"top {k}, {split} folds, {scope}, {by}, {level} of the epochs, z {z}"
        out[name] = (
            pick(shortlist, merits, z),
            (k * trials + study["epochs"]) / (k * study["epochs"]),
        )
    return out


def replicate_oracle(
    accuracy: dict[str, Any], shortlist: list[str], rng: np.random.Generator
) -> float:
    """Expected regret of picking by one more fine-tune per source scored on the test split
    itself: each source's mean plus the target's seed noise (its pooled seed SD)."""
    means = np.array([accuracy[s]["mean"] for s in shortlist])
    noise = max(a["stderr"] * np.sqrt(len(a["runs"])) for a in accuracy.values())
    draws = means + rng.normal(0, noise, (REPLICATE_DRAWS, len(shortlist)))
    best = max(a["mean"] for a in accuracy.values())
    return float(np.mean(best - means[draws.argmax(axis=1)]))


def evaluate_rules(studies: dict[str, dict[str, dict[str, Any]]]) -> list[dict[str, Any]]:
    """Per target: P2L's regret, the ceilings, every rule's regret and cost, the diagnostics."""
    truth = {t["target"]: t for t in json.loads(SELECTION.read_text())["targets"]}
    rng = np.random.default_rng(SEED)
    rows = []
    for name, by_split in studies.items():
        accuracy = truth[name]["accuracy"]
        mean = {s: a["mean"] for s, a in accuracy.items()}
        best = max(mean.values())
        random = by_split["random"]
        ranked, longest = random["ranked"], random["levels"][-1]
        shortlist = ranked[:TOP]
        cv_accuracy = [merit(random, s, longest, "accuracy", None).mean() for s in shortlist]
        row: dict[str, Any] = {
            "target": name,
            "role": random["role"],
            "p2l": best - mean[ranked[0]],
            "oracle": {k: best - max(mean[s] for s in ranked[:k]) for k in SHORTLISTS},
            "replicate_oracle": {
                k: replicate_oracle(accuracy, ranked[:k], rng) for k in SHORTLISTS
            },
            "spearman": float(spearmanr(cv_accuracy, [mean[s] for s in shortlist]).statistic),
            "rules": {},
        }
        for split, study in by_split.items():
            for rule, (source, cost) in rules(study, split).items():
                row["rules"][rule] = {"pick": source, "regret": best - mean[source], "cost": cost}
        rows.append(row)
    return rows


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean regrets per target group; the rule chosen on the development targets."""
    groups = {
        "report": [r for r in rows if r["role"] == "report"],
        "development": [r for r in rows if r["role"] != "report"],
        "all": rows,
    }

    def mean(group: str, get: Any) -> float:
        return float(np.mean([get(r) for r in groups[group]]))

    summary: dict[str, Any] = {"targets": {g: len(v) for g, v in groups.items()}, "groups": {}}
    for group in groups:
        summary["groups"][group] = {
            "p2l": mean(group, lambda r: r["p2l"]),
            **{f"oracle top {k}": mean(group, lambda r, k=k: r["oracle"][k]) for k in SHORTLISTS},
            **{
                f"test-split replicate top {k}": mean(
                    group, lambda r, k=k: r["replicate_oracle"][k]
                )
                for k in SHORTLISTS
            },
            "spearman": float(np.nanmean([r["spearman"] for r in groups[group]])),
        }
    names = list(rows[0]["rules"])
    regret = {
        g: {n: mean(g, lambda r, n=n: r["rules"][n]["regret"]) for n in names} for g in groups
    }
    cost = {n: float(np.mean([r["rules"][n]["cost"] for r in rows])) for n in names}
    chosen = min(names, key=lambda n: (round(regret["development"][n], 4), cost[n]))
    best_report = min(names, key=lambda n: regret["report"][n])
    summary["rules"] = {n: {"regret": {g: regret[g][n] for g in groups}, "cost": cost[n]}
                        for n in names}  # fmt: skip
    summary["chosen_on_development"] = chosen
    summary["best_on_report_in_hindsight"] = best_report
    return summary


def checks(summary: dict[str, Any]) -> list[str]:
    """The bar against the chosen rule and against the ceilings, on the report targets."""
    report = summary["groups"]["report"]
    bar = BAR * report["p2l"]
    chosen = summary["chosen_on_development"]
    hindsight = summary["best_on_report_in_hindsight"]
    rule = summary["rules"]
    return [
        f"- The bar: under half of P2L's report regret ({report['p2l']:.3f}), i.e. < {bar:.4f}.",
        f"- Chosen on the development targets: *{chosen}*: report regret "
        f"{rule[chosen]['regret']['report']:.3f} at {rule[chosen]['cost']:.2f} of fine-tuning "
        f"every shortlisted source: under the bar: "
        f"{'yes' if rule[chosen]['regret']['report'] < bar else '**no**'}.",
        f"- The best of all {len(rule)} rules on the report targets, in hindsight: "
        f"*{hindsight}*: {rule[hindsight]['regret']['report']:.3f}: under the bar: "
        f"{'yes' if rule[hindsight]['regret']['report'] < bar else '**no**'}.",
        *(
            f"- A picker that sees the test split itself, one fine-tune per source, over P2L's "
            f"top {k}: {report[f'test-split replicate top {k}']:.3f} (under the bar: "
            f"{'yes' if report[f'test-split replicate top {k}'] < bar else '**no**'}); the "
            f"best source in the top {k}: {report[f'oracle top {k}']:.3f}."
            for k in SHORTLISTS
        ),
        f"- Out-of-fold accuracy on the training images (random folds, the longest trials) "
        f"ranks the top 5 with a mean Spearman correlation of {report['spearman']:.2f} to "
        "their test accuracy.",
    ]


def markdown(result: dict[str, Any]) -> str:
    """The results as Markdown."""
    summary, host = result["summary"], result["machine"]
    groups = list(summary["groups"])
    out = [
        "# Can trials on the training images pick within P2L's shortlist?",
        "",
        "Out-of-fold scores (3 folds, seed 0) of P2L's top 5 sources on every bundled target; "
        "selection rules compared offline, chosen on the development targets, judged on the "
        "report targets (see bench/race_study.py). Ground truth: bench/results/selection.json. "
        f"Run: {result['seconds'] / 60:.1f} min on {host['cpus']} CPUs, load average at start "
        f"{host['load_average_1m_5m'][0]} (idle: {'yes' if host['idle_at_start'] else 'no'}).",
        "",
        "## Checks",
        "",
        *result["checks"],
        "",
        "## Ceilings and diagnostics (mean over targets)",
        "",
        "| | " + " | ".join(f"{g} ({summary['targets'][g]})" for g in groups) + " |",
        "| --- |" + " ---: |" * len(groups),
    ]
    for key in summary["groups"]["report"]:
        label = LABELS.get(key, f"{key} (regret)")
        out.append(f"| {label} | " + " | ".join(
            f"{summary['groups'][g][key]:.3f}" for g in groups) + " |")  # fmt: skip
    out += [
        "",
        "## Every rule (mean regret; cost: fraction of fine-tuning every shortlisted source)",
        "",
        "| rule | " + " | ".join(groups) + " | cost |",
        "| --- |" + " ---: |" * (len(groups) + 1),
    ]
    for name, rule in sorted(summary["rules"].items(), key=lambda x: x[1]["regret"]["development"]):
        out.append(f"| {name} | " + " | ".join(f"{rule['regret'][g]:.3f}" for g in groups)
                   + f" | {rule['cost']:.2f} |")  # fmt: skip
    return "\n".join(out) + "\n"


def main() -> None:
    """Run (``--cached``: reuse bench/.cache/race_study), print and write the results."""
    started = time.perf_counter()
    host = machine()
    if "--cached" not in sys.argv[1:]:
        shutil.rmtree(CACHE, ignore_errors=True)
    names = [t.name for t in load_targets()]
    tasks = [(name, split) for split in SPLITS for name in names]
    with ProcessPoolExecutor(2) as pool:
        done = list(pool.map(study_target, *zip(*tasks, strict=True)))
    studies: dict[str, dict[str, dict[str, Any]]] = {name: {} for name in names}
    for (name, split), study in zip(tasks, done, strict=True):
        studies[name][split] = study
    rows = evaluate_rules(studies)
    summary = summarise(rows)
    result = {"targets": rows, "summary": summary, "checks": checks(summary), "machine": host,
              "seconds": time.perf_counter() - started}  # fmt: skip
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "race_study.json").write_text(json.dumps(result, indent=1) + "\n")
    (RESULTS / "race_study.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
