"""The race over P2L's shortlist (``source_id: "race"``) against P2L's pick, and its cost
against fine-tuning every source of the shortlist.

    python -m bench.race          # every bundled target, 3 seeds, about 15 min on 2 CPUs

Ground truth: issue 6's selection benchmark (bench/results/selection.json: every bundled
source fine-tuned on every bundled target under a fixed protocol, scored on test splits
nothing else saw). A method's regret on a target: the best source's mean test accuracy
minus its pick's. The race runs the service's own code (``app.finetune.race.run_race``
with ``app.finetune.pipeline.race_trial``, what a race job runs) on the target's training
images, with the job's defaults: trials under the protocol's schedule, scored by
validation loss on a stratified fifth, a budget of one fine-tune's epochs (RaceOptions'
default), P2L's top 3 (the default) and top 5. Three seeds (the split, the heads, the
batches) per target. The final's guard (P2L's order stands unless the race shows
otherwise beyond noise) was chosen on the development targets in a first run; the report
targets are the test.

Cost, measured in this process: every shortlisted source fine-tuned once under the
protocol (the ground truth's own cell, seed 0), timed; the race costs its trials plus the
winner's fine-tune. Writes bench/results/race.json and .md.
"""

import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from app.families import get_spec, load_model
from app.finetune.options import FinetuneOptions
from app.finetune.pipeline import race_trial
from app.finetune.race import RaceOptions, run_race
from app.zoo.bundled import BUNDLED_DIR
from bench.ground_truth import Target, load_targets, options_for, run_cell, source_entries
from bench.perf_common import machine
from bench.service_ranking import BundledRanker

RESULTS = Path(__file__).parent / "results"
SELECTION = RESULTS / "selection.json"
TWO_STAGE = RESULTS / "two_stage.json"
SHORTLISTS = (3, 5)
SEEDS = (0, 1, 2)
DEFAULT_RACE = RaceOptions()
VAL_FRACTION = FinetuneOptions.model_fields["val_fraction"].default


def race_options(train_images: int, seed: int) -> FinetuneOptions:
    """The ground truth's protocol with a job's default validation split (races need one)."""
    protocol = options_for(train_images, seed).model_dump()
    return FinetuneOptions.model_validate({**protocol, "val_fraction": VAL_FRACTION})


def race(target: Target, shortlist: list[str], seed: int) -> dict[str, Any]:
    """One race over ``shortlist`` (P2L's order) on the target's training images."""
    images, labels = target.train
    options = race_options(len(labels), seed)
    entries = source_entries(shortlist)

    def trial(name: str, epochs: int, number: int, planned: int) -> dict[str, Any]:
        entry = entries[name]
        spec = get_spec(entry["architecture"])
        model = load_model(entry["architecture"], entry["num_classes"],
                           BUNDLED_DIR / entry["weights"])  # fmt: skip
        return race_trial(
            model, entry["architecture"], images, labels, len(target.class_names), spec.mean,
            spec.std, options, epochs, {"phase": "race", "label": name},
        )  # fmt: skip

    contestants = [{"source_id": s, "source_name": s} for s in shortlist]
    budget = DEFAULT_RACE.budget_epochs or options.epochs
    started = time.perf_counter()
    record = run_race(contestants, budget, DEFAULT_RACE.score, trial)
    final = record["final"] or {}
    return {
        "winner": record["winner"],
        "halving_winner": final.get("halving_winner", record["winner"]),
        "seconds": time.perf_counter() - started,
        "epochs": record["epochs"],
        "budget_epochs": budget,
        "rounds": [
            [(t["source_id"], round(t["val_loss"], 4)) for t in r["trials"]]
            for r in record["rounds"]
        ],
    }


def run(targets: list[Target]) -> list[dict[str, Any]]:
    """Every target's P2L pick, races and costs."""
    truth = {t["target"]: t for t in json.loads(SELECTION.read_text())["targets"]}
    ranker = BundledRanker()
    rows = []
    for target in targets:
        accuracy = {s: a["mean"] for s, a in truth[target.name]["accuracy"].items()}
        best = max(accuracy.values())
        images, labels = target.train
        ranked = [s.source_id for s in ranker.rank(images, labels, target.class_names)]
        longest = ranked[: max(SHORTLISTS)]
        finetune_seconds = {s: run_cell(target.name, s, 0)["seconds"] for s in longest}
        row: dict[str, Any] = {
            "target": target.name, "role": target.role, "kind": target.kind,
            "best_accuracy": best, "p2l_pick": ranked[0], "p2l_regret": best - accuracy[ranked[0]],
            "finetune_seconds": finetune_seconds, "races": {},
        }  # fmt: skip
        for k in SHORTLISTS:
            shortlist = ranked[:k]
            runs = [race(target, shortlist, seed) for seed in SEEDS]
            every = sum(finetune_seconds[s] for s in shortlist)
            for r in runs:
                r["regret"] = best - accuracy[r["winner"]]
                r["halving_regret"] = best - accuracy[r["halving_winner"]]
                r["cost_seconds"] = r["seconds"] + finetune_seconds[r["winner"]]
                r["fraction_of_every_source"] = r["cost_seconds"] / every
            row["races"][k] = {
                "shortlist": shortlist,
                "oracle_regret": best - max(accuracy[s] for s in shortlist),
                "random_regret": float(np.mean([best - accuracy[s] for s in shortlist])),
                "every_source_seconds": every,
                "runs": runs,
            }
        rows.append(row)
        print(target.name, {k: [r["regret"] for r in v["runs"]] for k, v in row["races"].items()},
              f"p2l {row['p2l_regret']:.3f}", flush=True)  # fmt: skip
    return rows


def summarise(rows: list[dict[str, Any]], two_stage: dict[str, float]) -> dict[str, Any]:
    """Mean regret and cost per method over ``rows``; per-seed regrets of the races."""
    out: dict[str, Any] = {
        "targets": len(rows),
        "p2l": {"mean_regret": float(np.mean([r["p2l_regret"] for r in rows]))},
    }
    for k in SHORTLISTS:
        races = [r["races"][k] for r in rows]
        per_seed = [float(np.mean([v["runs"][i]["regret"] for v in races]))
                    for i in range(len(SEEDS))]  # fmt: skip
        out[f"race top {k}"] = {
            "mean_regret": float(np.mean(per_seed)),
            "regret_per_seed": per_seed,
            "halving_alone_regret": float(np.mean(
                [run["halving_regret"] for v in races for run in v["runs"]])),
            "fraction_of_every_source_seconds": float(np.mean(
                [run["fraction_of_every_source"] for v in races for run in v["runs"]])),
            "fraction_of_every_source_epochs": float(np.mean(
                [(run["epochs"] + run["budget_epochs"]) / (k * run["budget_epochs"])
                 for v in races for run in v["runs"]])),
            "race_seconds": float(np.mean([run["seconds"] for v in races for run in v["runs"]])),
            "every_source_seconds": float(np.mean([v["every_source_seconds"] for v in races])),
            "oracle_regret": float(np.mean([v["oracle_regret"] for v in races])),
            "random_regret": float(np.mean([v["random_regret"] for v in races])),
        }  # fmt: skip
    out.update({f"two-stage: {m}": {"mean_regret": v} for m, v in two_stage.items()})
    return out


def two_stage_regrets(names: set[str]) -> dict[str, float]:
    """P2L top 3 then LogME, and LogME over every source, from bench/results/two_stage.json."""
    rows = [r for r in json.loads(TWO_STAGE.read_text())["targets"] if r["target"] in names]
    methods = ("p2l top 3, then logme", "logme, every source")
    return {m: float(np.mean([r["picks"][m]["regret"] for r in rows])) for m in methods}


def checks(summary: dict[str, Any]) -> list[str]:
    """Issue 14's race check on the report targets."""
    report = summary["report targets"]
    p2l = report["p2l"]["mean_regret"]
    lines = []
    for k in SHORTLISTS:
        s = report[f"race top {k}"]
        lines.append(
            f"- Report targets, race over P2L's top {k}: mean regret {s['mean_regret']:.3f} "
            f"(seeds {', '.join(f'{x:.3f}' for x in s['regret_per_seed'])}) against P2L's "
            f"{p2l:.3f}: under half of it: {'yes' if s['mean_regret'] < p2l / 2 else '**no**'}; "
            f"at {s['fraction_of_every_source_seconds']:.0%} of the seconds of fine-tuning all "
            f"{k} ({s['fraction_of_every_source_epochs']:.0%} of the epochs)."
        )
    return lines


def markdown(result: dict[str, Any]) -> str:
    """The results as Markdown: a summary per target group, the per-target table, checks."""
    host = result["machine"]
    out = [
        "# The race over P2L's shortlist",
        "",
        "P2L's top k sources race (successive halving of short fine-tunes scored by "
        "validation loss, a budget of one fine-tune's epochs; in the final the source P2L "
        "ranks lower must win by more than 2 standard errors of the per-image difference); "
        "the survivor is the pick. The final's guard was chosen on the 10 development "
        "targets before any report target raced (their table below repeats that comparison "
        "in this run); the halving-alone rows show the same runs without it. "
        "Ground truth: bench/results/selection.json. Regret: best source's test accuracy "
        "minus the pick's. Cost: the race's trials plus the winner's fine-tune, against "
        "fine-tuning every shortlisted source, both timed in this run. "
        f"Run: {result['seconds'] / 60:.1f} min on {host['cpus']} CPUs, load average at start "
        f"{host['load_average_1m_5m'][0]} (idle: {'yes' if host['idle_at_start'] else 'no'}). "
        f"Seeds {', '.join(map(str, SEEDS))}.",
        "",
    ]
    for group, summary in result["summary"].items():
        out += [
            f"## {group} ({summary['targets']})",
            "",
            "| method | mean regret | per seed | cost vs fine-tuning all k (seconds / epochs) "
            "| oracle in shortlist | random in shortlist |",
            "| --- | ---: | --- | ---: | ---: | ---: |",
            f"| P2L's pick | {summary['p2l']['mean_regret']:.3f} | | | | |",
        ]
        for k in SHORTLISTS:
            s = summary[f"race top {k}"]
            out.append(
                f"| race, P2L top {k}, halving alone (no guard in the final) | "
                f"{s['halving_alone_regret']:.3f} | | | | |"
            )
            out.append(
                f"| race, P2L top {k} (the service's) | {s['mean_regret']:.3f} | "
                f"{' / '.join(f'{x:.3f}' for x in s['regret_per_seed'])} | "
                f"{s['fraction_of_every_source_seconds']:.2f} / "
                f"{s['fraction_of_every_source_epochs']:.2f} | {s['oracle_regret']:.3f} | "
                f"{s['random_regret']:.3f} |"
            )
        for name, s in summary.items():
            if name.startswith("two-stage"):
                out.append(f"| {name[len('two-stage: ') :]} | {s['mean_regret']:.3f} | | | | |")
        out.append("")
    out += [
        "## Per target (mean regret over seeds)",
        "",
        "| target | role | P2L | " + " | ".join(f"race top {k}" for k in SHORTLISTS) + " |",
        "| --- | --- | ---: | " + " | ".join("---:" for _ in SHORTLISTS) + " |",
    ]
    for r in result["targets"]:
        races = [np.mean([run["regret"] for run in r["races"][k]["runs"]]) for k in SHORTLISTS]
        out.append(
            f"| {r['target']} | {r['role']} | {r['p2l_regret']:.3f} | "
            + " | ".join(f"{x:.3f}" for x in races) + " |"
        )  # fmt: skip
    out += ["", "## Checks", "", *result["checks"], ""]
    return "\n".join(out)


def main() -> None:
    """Run, print and write the results (``--report``: the report targets only)."""
    started = time.perf_counter()
    host = machine()
    report_only = "--report" in sys.argv[1:]
    targets = [t for t in load_targets() if not report_only or t.role == "report"]
    rows = run(targets)
    groups = {"report targets": [r for r in rows if r["role"] == "report"]}
    if not report_only:
        groups["development targets (chose the final's guard)"] = [
            r for r in rows if r["role"] == "dev"
        ]
        groups["all targets"] = rows
    result: dict[str, Any] = {
        "targets": rows,
        "summary": {
            name: summarise(group, two_stage_regrets({r["target"] for r in group}))
            for name, group in groups.items()
        },
        "machine": host,
    }
    result["checks"] = checks(result["summary"])
    result["seconds"] = time.perf_counter() - started
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "race.json").write_text(json.dumps(result, indent=1) + "\n")
    (RESULTS / "race.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
