"""Selection quality: does P2L pick the source that fine-tunes best? (the paper's table)

    python -m bench.selection            # full run (see README for its time)
    python -m bench.selection --quick    # 4 bundled targets, 1 seed: under 3 minutes

Ground truth: every source of the bundled zoo is fine-tuned on every target with the
service's own code (app.finetune.pipeline, one fixed protocol for all), plus the no-transfer
baseline (same architecture from scratch), for several seeds; accuracy is measured on a
test split of the target that neither training nor early stopping sees.

Targets: the 13 held-out targets bundled with the zoo, plus (full run, when Debian's
dataset-fashion-mnist and fonts-noto-core and scikit-learn are installed) three more 5 x 50
targets drawn from other held-out classes. No target image ever trained the reference
network or a source.

Tie rule, fixed before looking at results: a pick is a hit *within noise* when its mean
accuracy is at most one pooled standard error (over seeds) below the best source's mean;
the strict hit rate needs the pick to be the best mean. Both are reported.

Writes bench/results/selection.json, selection.md and selection.png.
"""

import argparse
import copy
import json
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy.stats import weightedtau

from app.architectures import feature_extractor, get_spec, load_model
from app.finetune.pipeline import FinetuneOptions, finetune, stratified_split, train_from_scratch
from app.finetune.train import ImageTensors, evaluate
from app.p2l.logme import logme
from app.p2l.reference import load_reference
from app.p2l.scoring import MEASURES, ScoringParams, SignatureIndex
from app.p2l.signature import load_signature, signature_of_array
from app.zoo.bundled import BUNDLED_DIR, manifest

RESULTS = Path(__file__).parent / "results"
TEST_FRACTION = 0.3
EPS = 1e-3
LAMBDAS = (0.0, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5)
PROTOCOL = FinetuneOptions(schedule="manual", decay=0.5, epochs=30, patience=8, batch_size=32)
QUICK_TARGETS = ("garments", "digits", "food", "objects")


@dataclass
class Target:
    """A benchmark target: images, labels, and the source from its domain (if any)."""

    name: str
    images: np.ndarray
    labels: np.ndarray
    class_names: list[str]
    related: str | None


def bundled_targets() -> list[Target]:
    """The held-out targets shipped with the zoo."""
    targets = []
    for entry in manifest()["targets"]:
        data = np.load(BUNDLED_DIR / entry["file"])
        targets.append(
            Target(
                entry["name"],
                data["images"],
                data["labels"],
                [str(c) for c in data["class_names"]],
                entry["related_source"],
            )
        )
    return targets


def extra_targets(seed: int) -> list[Target]:
    """Three more 5 x 50 targets from other held-out classes (needs the Debian data)."""
    from app.zoo import domains
    from app.zoo.build import HELDOUT_FRACTION, SOURCE_SCRIPTS

    def five_by_fifty(domain: domains.Domain, classes: list[str], name: str, related: str):
        rng = np.random.default_rng(seed)
        keep = np.concatenate(
            [
                rng.permutation(np.flatnonzero(domain.labels == domain.class_names.index(c)))[:50]
                for c in classes
            ]
        )
        labels = np.array([classes.index(domain.class_names[i]) for i in domain.labels[keep]])
        return Target(name, domain.images[keep], labels, classes, related)

    try:
        garments = domains.fashion_mnist("t10k")
        _, digits = domains.split_by_group(domains.handwritten_digits(), HELDOUT_FRACTION, seed)
        _, scripts = domains.split_by_group(
            domains.glyphs("scripts", SOURCE_SCRIPTS, 400, seed), HELDOUT_FRACTION, seed
        )
    except (OSError, ImportError) as exc:
        print(f"extra targets skipped ({exc}); install the Debian data packages for them")
        return []
    return [
        five_by_fifty(
            garments, ["tshirt", "trouser", "sandal", "shirt", "sneaker"], "garments_b", "garments"
        ),
        five_by_fifty(digits, ["0", "2", "7", "8", "9"], "digits_b", "digits"),
        five_by_fifty(
            scripts,
            ["latin", "devanagari", "georgian", "armenian", "ethiopic"],
            "scripts_b",
            "scripts",
        ),
    ]


def load_source(entry: dict) -> torch.nn.Module:
    """A bundled source model with its weights."""
    return load_model(entry["architecture"], entry["num_classes"], BUNDLED_DIR / entry["weights"])


def fine_tune_accuracy(
    source: torch.nn.Module | None, arch: str, target: Target, seed: int
) -> tuple[float, float]:
    """Test accuracy (and seconds) of fine-tuning ``source`` (None: from scratch) on target."""
    spec = get_spec(arch)
    train_idx, test_idx = stratified_split(target.labels, TEST_FRACTION, seed)
    options = FinetuneOptions(**{**PROTOCOL.__dict__, "seed": seed})
    images, labels = target.images[train_idx], target.labels[train_idx]
    started = time.perf_counter()
    if source is None:
        split_train, split_val = stratified_split(labels, options.val_fraction, seed)
        model, _ = train_from_scratch(
            arch,
            len(target.class_names),
            ImageTensors(images[split_train], labels[split_train], spec.mean, spec.std),
            ImageTensors(images[split_val], labels[split_val], spec.mean, spec.std),
            options,
        )
    else:
        model, _ = finetune(
            source, arch, images, labels, target.class_names, spec.mean, spec.std, options
        )
    test = ImageTensors(target.images[test_idx], target.labels[test_idx], spec.mean, spec.std)
    return evaluate(model, test).accuracy, time.perf_counter() - started


def logme_score(source: torch.nn.Module, target: Target, seed: int) -> float:
    """LogME of the source's features on the target's training split."""
    spec = get_spec("compact_cnn_small")
    train_idx, _ = stratified_split(target.labels, TEST_FRACTION, seed)
    data = ImageTensors(target.images[train_idx], target.labels[train_idx], spec.mean, spec.std)
    extractor = feature_extractor(copy.deepcopy(source)).eval()
    with torch.inference_mode():
        images, _ = data.batch(torch.arange(len(data)), torch.device("cpu"))
        features = extractor(images).numpy()
    return logme(features, data.labels.numpy())


def selection_metrics(scores: dict[str, float], acc: dict[str, np.ndarray]) -> dict:
    """Pick quality of one method on one target."""
    names = list(acc)
    means = np.array([acc[n].mean() for n in names])
    stderr = np.array([_stderr(acc[n]) for n in names])
    best = int(np.argmax(means))
    pick = max(names, key=lambda n: scores[n])
    p = names.index(pick)
    ranked = sorted(names, key=lambda n: -scores[n])
    noise = float(np.sqrt(stderr[best] ** 2 + stderr[p] ** 2))
    tau = weightedtau([scores[n] for n in names], means).statistic
    return {
        "pick": pick,
        "pick_accuracy": float(means[p]),
        "hit": pick == names[best],
        "hit_within_noise": bool(means[best] - means[p] <= noise),
        "top3": names[best] in ranked[:3],
        "regret": float(means[best] - means[p]),
        "weighted_tau": float(tau) if np.isfinite(tau) else 0.0,
    }


def winner_margin(acc: dict[str, np.ndarray]) -> dict:
    """Is the best source's lead over the runner-up larger than the seed noise?"""
    ordered = sorted(acc, key=lambda n: -acc[n].mean())
    best, second = acc[ordered[0]], acc[ordered[1]]
    noise = float(np.sqrt(_stderr(best) ** 2 + _stderr(second) ** 2))
    gap = float(best.mean() - second.mean())
    return {"runner_up": ordered[1], "winner_gap": gap, "winner_within_noise": gap <= noise}


def _stderr(values: np.ndarray) -> float:
    return float(values.std(ddof=1) / np.sqrt(len(values))) if len(values) > 1 else 0.0


def random_metrics(acc: dict[str, np.ndarray]) -> dict:
    """Expected pick quality of choosing a source uniformly at random."""
    means = np.array([a.mean() for a in acc.values()])
    k = len(means)
    return {
        "pick": "(random)",
        "pick_accuracy": float(means.mean()),
        "hit": float((means == means.max()).sum() / k),
        "hit_within_noise": float((means == means.max()).sum() / k),
        "top3": min(3 / k, 1.0),
        "regret": float(means.max() - means.mean()),
        "weighted_tau": 0.0,
    }


def method_scores(
    index: SignatureIndex,
    signature,
    method: str,
    measure: str,
    lam: float,
) -> dict[str, float]:
    """Score of every source under one ranking method."""
    ranked = index.rank(signature, method, measure, ScoringParams(lam, EPS, 0.01))
    return {s.source_id: s.score for s in ranked}


def run(quick: bool, seeds: int) -> dict:
    """Fine-tune everything, score every method, calibrate, and summarise."""
    started = time.perf_counter()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    info = manifest()
    reference = load_reference("compact_cnn", BUNDLED_DIR / "reference.safetensors")
    index = SignatureIndex(eps=EPS)
    for entry in info["sources"]:
        index.add(entry["name"], load_signature(BUNDLED_DIR / entry["signature"]))
    sources = {entry["name"]: load_source(entry) for entry in info["sources"]}
    targets = bundled_targets()
    if quick:
        targets = [t for t in targets if t.name in QUICK_TARGETS]
    else:
        targets += extra_targets(0)

    per_target = []
    for target in targets:
        t0 = time.perf_counter()
        signature = signature_of_array(reference, target.images, target.labels, target.class_names)
        index.rank(signature, "p2l", "kl", ScoringParams(0.01, EPS, 0.01))
        p2l_seconds = time.perf_counter() - t0
        acc: dict[str, np.ndarray] = {}
        finetune_seconds = 0.0
        for name, source in sources.items():
            runs = [
                fine_tune_accuracy(source, "compact_cnn_small", target, s) for s in range(seeds)
            ]
            acc[name] = np.array([a for a, _ in runs])
            finetune_seconds += runs[0][1]
        baseline = np.array(
            [fine_tune_accuracy(None, "compact_cnn_small", target, s)[0] for s in range(seeds)]
        )
        logme_seconds = time.perf_counter()
        logme_scores = {n: logme_score(m, target, 0) for n, m in sources.items()}
        logme_seconds = time.perf_counter() - logme_seconds
        per_target.append(
            {
                "target": target.name,
                "related": target.related,
                "images": len(target.labels),
                "classes": len(target.class_names),
                "signature": signature,
                "accuracy": {n: a.tolist() for n, a in acc.items()},
                "acc": acc,
                "baseline": baseline.tolist(),
                "logme": logme_scores,
                "p2l_seconds": p2l_seconds,
                "finetune_all_seconds": finetune_seconds,
                "logme_seconds": logme_seconds,
            }
        )
        best = max(acc, key=lambda n: acc[n].mean())
        print(
            f"{target.name:15s} best {best:10s} {acc[best].mean():.3f}  baseline "
            f"{baseline.mean():.3f}  ({time.perf_counter() - t0:.0f}s)",
            flush=True,
        )

    def evaluate_method(method: str, measure: str, lam: float, rows: list[dict]) -> list[dict]:
        return [
            selection_metrics(method_scores(index, r["signature"], method, measure, lam), r["acc"])
            for r in rows
        ]

    methods: dict[str, list[dict]] = {}
    default_lam = 0.01
    for measure in MEASURES:
        methods[f"p2l ({measure})"] = evaluate_method("p2l", measure, default_lam, per_target)
        methods[f"distance ({measure})"] = evaluate_method("distance", measure, 0, per_target)
    methods["largest"] = evaluate_method("largest", "kl", 0, per_target)
    methods["logme"] = [selection_metrics(r["logme"], r["acc"]) for r in per_target]
    methods["random"] = [random_metrics(r["acc"]) for r in per_target]

    calibration = calibrate(per_target, evaluate_method)
    summary = {name: summarise(rows) for name, rows in methods.items()}
    summary["p2l (calibrated, leave-one-target-out)"] = summarise(calibration["held_out_rows"])

    table = []
    for i, row in enumerate(per_target):
        p2l = methods["p2l (kl)"][i]
        means = {n: float(np.mean(a)) for n, a in row["accuracy"].items()}
        best = max(means, key=means.get)
        table.append(
            {
                "target": row["target"],
                "related_source": row["related"],
                "images": row["images"],
                "best_source": best,
                "best_accuracy": means[best],
                "best_std": float(np.std(row["accuracy"][best], ddof=1)) if seeds > 1 else 0.0,
                "p2l_pick": p2l["pick"],
                "p2l_accuracy": p2l["pick_accuracy"],
                "hit": p2l["hit"],
                "hit_within_noise": p2l["hit_within_noise"],
                "op_over_rds": p2l["pick_accuracy"] / float(np.mean(list(means.values()))),
                "op_over_a_phi": p2l["pick_accuracy"] / max(float(np.mean(row["baseline"])), 1e-9),
                "regret": p2l["regret"],
                "baseline_accuracy": float(np.mean(row["baseline"])),
                "accuracy_by_source": means,
                "accuracy_runs": row["accuracy"],
                "baseline_runs": row["baseline"],
                **winner_margin(row["acc"]),
                "p2l_ranking_seconds": row["p2l_seconds"],
                "finetune_all_seconds": row["finetune_all_seconds"],
                "logme_seconds": row["logme_seconds"],
            }
        )
    return {
        "benchmark": "selection",
        "quick": quick,
        "seeds": seeds,
        "protocol": {
            **PROTOCOL.__dict__,
            "test_fraction": TEST_FRACTION,
            "eps": EPS,
            "p2l_lambda_default": default_lam,
        },
        "tie_rule": "hit within noise: pick mean >= best mean - pooled standard error over seeds",
        "targets": table,
        "methods": summary,
        "calibration": {k: v for k, v in calibration.items() if k != "held_out_rows"},
        "seconds": round(time.perf_counter() - started, 1),
        "machine": {"cpus": __import__("os").cpu_count(), "python": platform.python_version()},
    }


def calibrate(per_target: list[dict], evaluate_method) -> dict:
    """Choose (measure, lambda) by mean regret on all but one target; score the left-out one."""
    grid = {
        (m, lam): evaluate_method("p2l", m, lam, per_target) for m in MEASURES for lam in LAMBDAS
    }
    in_sample = {f"{m}@{lam}": summarise(rows) for (m, lam), rows in grid.items()}
    held_out_rows, folds = [], []
    for i, row in enumerate(per_target):

        def loss(key, i=i):
            others = [r for j, r in enumerate(grid[key]) if j != i]
            return (np.mean([r["regret"] for r in others]), -np.mean([r["hit"] for r in others]))

        choice = min(grid, key=lambda key: (loss(key), key[0] != "kl", key[1]))
        held_out_rows.append(grid[choice][i])
        folds.append({"left_out": row["target"], "measure": choice[0], "lambda": choice[1]})
    best_all = min(
        grid, key=lambda key: (np.mean([r["regret"] for r in grid[key]]), key[0] != "kl", key[1])
    )
    return {
        "grid_in_sample": in_sample,
        "best_in_sample": {
            "measure": best_all[0],
            "lambda": best_all[1],
            **summarise(grid[best_all]),
        },
        "folds": folds,
        "held_out_rows": held_out_rows,
    }


def summarise(rows: list[dict]) -> dict:
    """Over all targets: pick rates, regret, weighted tau."""
    return {
        "top1": float(np.mean([r["hit"] for r in rows])),
        "top1_within_noise": float(np.mean([r["hit_within_noise"] for r in rows])),
        "top3": float(np.mean([r["top3"] for r in rows])),
        "mean_regret": float(np.mean([r["regret"] for r in rows])),
        "weighted_tau": float(np.mean([r["weighted_tau"] for r in rows])),
    }


def write(results: dict) -> None:
    """JSON, a Markdown report and a plot under bench/results/."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = "selection_quick" if results["quick"] else "selection"
    (RESULTS / f"{stem}.json").write_text(json.dumps(results, indent=2) + "\n")
    lines = [
        f"# Selection quality{' (quick subset)' if results['quick'] else ''}",
        "",
        f"{len(results['targets'])} targets x {len(results['targets'][0]['accuracy_by_source'])} "
        f"sources x {results['seeds']} seed(s), plus the from-scratch baseline; test split "
        f"{TEST_FRACTION:.0%} of each target; run time {results['seconds'] / 60:.1f} min on "
        f"{results['machine']['cpus']} CPUs. Tie rule: {results['tie_rule']}.",
        "",
        "## Per target (P2L, kl, lambda = 0.01)",
        "",
        "| target | related source | best source (acc) | P2L pick (acc) | hit | within noise "
        "| OP/RDS | OP/A-phi | regret | no transfer | runner-up (gap) | P2L rank s "
        "| fine-tune all s |",
        "| --- | --- | --- | --- | :---: | :---: | ---: | ---: | ---: | ---: | --- | ---: | ---: |",
    ]
    for t in results["targets"]:
        lines.append(
            f"| {t['target']} | {t['related_source'] or '—'} | {t['best_source']} "
            f"({t['best_accuracy']:.3f}) | {t['p2l_pick']} ({t['p2l_accuracy']:.3f}) | "
            f"{'yes' if t['hit'] else 'no'} | {'yes' if t['hit_within_noise'] else 'no'} | "
            f"{t['op_over_rds']:.2f} | {t['op_over_a_phi']:.2f} | {t['regret']:.3f} | "
            f"{t['baseline_accuracy']:.3f} | {t['runner_up']} ({t['winner_gap']:.3f}"
            f"{', within noise' if t['winner_within_noise'] else ''}) | "
            f"{t['p2l_ranking_seconds']:.2f} | {t['finetune_all_seconds']:.0f} |"
        )
    lines += [
        "",
        "## Over all targets",
        "",
        "| method | top-1 | top-1 within noise | top-3 | mean regret | weighted tau |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, m in results["methods"].items():
        lines.append(
            f"| {name} | {m['top1']:.2f} | {m['top1_within_noise']:.2f} | "
            f"{m['top3']:.2f} | {m['mean_regret']:.3f} | {m['weighted_tau']:.2f} |"
        )
    cal = results["calibration"]["best_in_sample"]
    folds = results["calibration"]["folds"]
    lines += [
        "",
        "## Calibration",
        "",
        f"In-sample best (all targets): measure {cal['measure']}, lambda {cal['lambda']} "
        f"(top-1 {cal['top1']:.2f}, mean regret {cal['mean_regret']:.3f}).",
        "Leave-one-target-out choices: "
        + ", ".join(f"{f['left_out']}: {f['measure']}@{f['lambda']}" for f in folds)
        + ". Held-out figures: the row *p2l (calibrated, leave-one-target-out)*.",
    ]
    (RESULTS / f"{stem}.md").write_text("\n".join(lines) + "\n")
    plot(results, RESULTS / f"{stem}.png")
    print("\n".join(lines))


def plot(results: dict, path: Path) -> None:
    """Top-1 rate and mean regret per method."""
    from matplotlib.figure import Figure

    names = list(results["methods"])
    fig = Figure(figsize=(10, 4.5), dpi=100)
    left, right = fig.subplots(1, 2)
    left.barh(names, [results["methods"][n]["top1_within_noise"] for n in names], color="#1b9e77")
    left.set_xlabel("top-1 pick rate (within noise)")
    right.barh(names, [results["methods"][n]["mean_regret"] for n in names], color="#d95f02")
    right.set_xlabel("mean regret (accuracy points lost)")
    right.set_yticks([])
    fig.suptitle("Which source to fine-tune: P2L vs baselines and LogME")
    fig.tight_layout()
    fig.savefig(path)


def main() -> None:
    """CLI entry point."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="4 targets, 1 seed")
    parser.add_argument("--seeds", type=int, default=None)
    args = parser.parse_args()
    seeds = args.seeds or (1 if args.quick else 3)
    write(run(args.quick, seeds))


if __name__ == "__main__":
    main()
