"""Refitting the ranking's measure and lambda on evidence from finished fine-tunes: what it
buys on targets the refit never saw.

    python -m bench.calibration       # every bundled target, under a minute on 2 CPUs

Evidence comes from the selection benchmark's ground truth (bench/results/selection.json:
every bundled source fine-tuned on every bundled target, scored on test splits nothing else
saw), in three amounts a service could have collected per target:

- ``every source``: all of the zoo's sources fine-tuned (the most a zoo owner could run);
- ``P2L top 3``: the three sources the bundled defaults rank first (a user comparing the
  shortlist by hand);
- ``P2L top 1 + 2 random``: the default pick and two others.

Each target is left out in turn: the service's own refit (``app.p2l.calibration``: the
grid, the regret table, ``fit``) runs on the other targets' evidence, and the parameters
it chooses rank the whole zoo for the left-out target; regret: the best source's test
accuracy minus the pick's. Against: the bundled defaults (chosen by the selection benchmark
on all its targets, so in-sample here) and its nested leave-one-family-out figure. The service's
refit is guarded (it switches only when refitting wins leave one target out on the evidence
it has); the plain refit is shown beside it. A learning curve shows the regret as the
number of targets with evidence grows (random subsets).

Writes bench/results/calibration.json and .md.
"""

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from app.p2l.calibration import (
    RankingParams,
    TargetEvidence,
    fit,
    grid,
    guarded_fit,
    regret_table,
)
from app.p2l.scoring import ScoringParams
from app.p2l.signature import signature_of_array
from app.zoo.bundled import manifest
from bench.ground_truth import Target, load_targets
from bench.perf_common import machine
from bench.service_ranking import DEFAULTS, BundledRanker

RESULTS = Path(__file__).parent / "results"
SELECTION = RESULTS / "selection.json"
CURVE_DRAWS = 200
SEED = 0


def curve_sizes(targets: int) -> list[int]:
    """How many targets have evidence at each point of the learning curve: powers of two,
    then every target but the left-out one."""
    sizes = [k for k in (1, 2, 4, 8, 16, 32, 64) if k < targets - 1]
    return [*sizes, targets - 1]


def full_zoo_regrets(
    ranker: BundledRanker,
    signatures: dict[str, Any],
    accuracy: dict[str, dict[str, float]],
    candidates: list[RankingParams],
) -> dict[str, np.ndarray]:
    """Per target, each candidate's regret when it ranks the whole zoo."""
    out = {}
    for name, signature in signatures.items():
        best = max(accuracy[name].values())
        row = []
        for params in candidates:
            scoring = ScoringParams(params.lam, ranker.params.eps, ranker.params.emd_gamma)
            top = ranker.index.rank(signature, "p2l", params.measure, scoring, top_k=1)[0]
            row.append(best - accuracy[name][top.source_id])
        out[name] = np.array(row)
    return out


def run() -> dict[str, Any]:
    """Leave-one-target-out regret of refitting, per evidence scenario, and the curve."""
    truth = {t["target"]: t for t in json.loads(SELECTION.read_text())["targets"]}
    ranker = BundledRanker()
    targets: list[Target] = load_targets()
    names = [t.name for t in targets]
    roles = {t.name: t.role for t in targets}
    accuracy = {n: {s: a["mean"] for s, a in truth[n]["accuracy"].items()} for n in names}
    signatures = {
        t.name: signature_of_array(ranker.reference, *t.train, t.class_names) for t in targets
    }
    defaults = RankingParams(DEFAULTS["p2l_measure"], DEFAULTS["p2l_lambda"])
    candidates = grid(defaults)
    full = full_zoo_regrets(ranker, signatures, accuracy, candidates)
    default_ranked = {
        n: [s.source_id for s in ranker.index.rank(signatures[n], "p2l", defaults.measure,
                                                    ranker.params)]
        for n in names
    }  # fmt: skip
    rng = np.random.default_rng(SEED)
    sources = {e["name"]: ranker.index.signature(e["name"]) for e in manifest()["sources"]}
    scenarios: dict[str, Callable[[str], list[str]]] = {
        "every source": lambda n: list(accuracy[n]),
        "P2L top 3": lambda n: default_ranked[n][:3],
        "P2L top 1 + 2 random": lambda n: [
            default_ranked[n][0],
            *rng.choice(default_ranked[n][1:], size=2, replace=False).tolist(),
        ],
    }
    # The same left-out targets and evidence targets for every scenario and the defaults.
    everyone = np.arange(len(names))
    draws = {
        k: [
            (held, rng.choice(everyone[everyone != held], size=k, replace=False))
            for held in rng.integers(len(names), size=CURVE_DRAWS)
        ]
        for k in curve_sizes(len(names))
    }
    result: dict[str, Any] = {"scenarios": {}, "candidates": len(candidates)}
    result["defaults_curve"] = {
        k: float(np.mean([full[names[held]][0] for held, _ in d])) for k, d in draws.items()
    }
    for label, tried in scenarios.items():
        evidence = [
            TargetEvidence(signatures[n], {s: accuracy[n][s] for s in tried(n)}) for n in names
        ]
        table = regret_table(evidence, sources, candidates, ranker.params.eps,
                             ranker.params.emd_gamma)  # fmt: skip
        picks = {n: fit(table, everyone[everyone != i]) for i, n in enumerate(names)}
        loto = {n: float(full[n][picks[n]]) for n in names}
        curve = {
            k: float(np.mean([full[names[held]][fit(table, others)] for held, others in d]))
            for k, d in draws.items()
        }
        guarded_curve = {
            k: float(np.mean([full[names[held]][guarded_fit(table, others)] for held, others in d]))
            for k, d in draws.items()
        }
        guarded = {n: guarded_fit(table, everyone[everyone != i]) for i, n in enumerate(names)}
        chosen_all = candidates[fit(table)]
        result["scenarios"][label] = {
            "loto_regret": loto,
            "choices": {
                n: f"{candidates[c].measure}/{candidates[c].lam:g}" for n, c in picks.items()
            },
            "fitted_on_all": f"{chosen_all.measure}/{chosen_all.lam:g}",
            "curve": curve,
            "guarded_loto_regret": {n: float(full[n][guarded[n]]) for n in names},
            "guarded_curve": guarded_curve,
        }
    # A service whose defaults were chosen elsewhere: start from the development targets'
    # choice (the benchmark's fixed split) and refit on the report targets' evidence alone.
    chosen = json.loads(SELECTION.read_text())["chosen"]["development_targets"]
    start = RankingParams(chosen["measure"], chosen["lambda"])
    reported = [n for n in names if roles[n] == "report"]
    start_candidates = grid(start)
    start_full = full_zoo_regrets(
        ranker, {n: signatures[n] for n in reported}, accuracy, start_candidates
    )
    inner = np.arange(len(reported))
    result["from_development_choice"] = {
        "start": f"{start.measure}/{start.lam:g}",
        "start_regret": float(np.mean([start_full[n][0] for n in reported])),
        "report_targets": len(reported),
    }
    for label, tried in scenarios.items():
        evidence = [
            TargetEvidence(signatures[n], {s: accuracy[n][s] for s in tried(n)}) for n in reported
        ]
        table = regret_table(evidence, sources, start_candidates, ranker.params.eps,
                             ranker.params.emd_gamma)  # fmt: skip
        result["from_development_choice"][label] = {
            variant: float(np.mean([start_full[n][chooser(table, inner[inner != i])]
                                    for i, n in enumerate(reported)]))
            for variant, chooser in (("refit", fit), ("guarded refit", guarded_fit))
        }  # fmt: skip
    result["defaults_regret"] = {n: float(full[n][0]) for n in names}
    result["roles"] = roles
    result["nested_selection"] = {
        k: json.loads(SELECTION.read_text())["checks"][k]["p2l_regret"]
        for k in ("nested_all_targets", "nested_report_targets")
    }
    return result


def summarise(result: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Mean regrets per group of targets."""
    groups = {
        "report targets": [n for n, r in result["roles"].items() if r == "report"],
        "all targets": list(result["roles"]),
    }
    out = {}
    for group, names in groups.items():
        row = {"bundled defaults (in-sample)": float(np.mean(
            [result["defaults_regret"][n] for n in names]))}  # fmt: skip
        for label, s in result["scenarios"].items():
            row[f"refit on {label}"] = float(np.mean([s["loto_regret"][n] for n in names]))
            row[f"guarded refit on {label} (the service's)"] = float(
                np.mean([s["guarded_loto_regret"][n] for n in names])
            )
        out[group] = row
    return out


def markdown(result: dict[str, Any]) -> str:
    """The results as Markdown."""
    host = result["machine"]
    nested = result["nested_selection"]
    out = [
        "# Calibration: refitting measure and lambda on finished fine-tunes",
        "",
        "Evidence from bench/results/selection.json; each target left out in turn, the "
        "service's refit (app.p2l.calibration) fitted on the others' evidence, the chosen "
        f"parameters rank the whole zoo ({result['candidates']} candidates: kl, js, cosine x "
        "8 lambdas). Regret: best source's test accuracy minus the pick's. "
        f"Run: {result['seconds']:.0f} s on {host['cpus']} CPUs, load average at start "
        f"{host['load_average_1m_5m'][0]} (idle: {'yes' if host['idle_at_start'] else 'no'}).",
        "",
        "| method | report targets | all targets |",
        "| --- | ---: | ---: |",
    ]
    summary = result["summary"]
    for method in summary["all targets"]:
        out.append(
            f"| {method} | {summary['report targets'][method]:.3f} | "
            f"{summary['all targets'][method]:.3f} |"
        )
    out += [
        "| the selection benchmark's nested leave-one-family-out P2L | "
        f"{nested['nested_report_targets']:.3f} | {nested['nested_all_targets']:.3f} |",
        "",
        "Starting from parameters chosen elsewhere (the development targets' choice, "
        f"{result['from_development_choice']['start']}: mean regret "
        f"{result['from_development_choice']['start_regret']:.3f} on the report targets), "
        f"each report target under parameters refitted on the other "
        f"{result['from_development_choice']['report_targets'] - 1} report targets' evidence: "
        + "; ".join(
            f"{label}: refit {v['refit']:.3f}, guarded refit {v['guarded refit']:.3f}"
            for label, v in result["from_development_choice"].items()
            if isinstance(v, dict)
        )
        + ".",
        "",
        "Fitted on every target: "
        + "; ".join(f"{label}: {s['fitted_on_all']}" for label, s in result["scenarios"].items())
        + ".",
        "",
        f"## Learning curve (mean regret of a left-out target, {CURVE_DRAWS} random draws)",
        "",
        "The same left-out targets (and the same evidence targets) in every column. Each "
        "cell: plain refit / guarded refit (the service's: it switches only when refitting "
        "wins leave one target out on the evidence).",
        "",
        "| targets with evidence | bundled defaults | "
        + " | ".join(f"refit on {label}" for label in result["scenarios"])
        + " |",
        "| ---: | ---: | " + " | ".join("---:" for _ in result["scenarios"]) + " |",
    ]
    for k in result["defaults_curve"]:
        out.append(f"| {k} | {result['defaults_curve'][k]:.3f} | " + " | ".join(
            f"{s['curve'][k]:.3f} / {s['guarded_curve'][k]:.3f}"
            for s in result["scenarios"].values()) + " |")  # fmt: skip
    return "\n".join(out) + "\n"


def main() -> None:
    """Run, print and write the results."""
    started = time.perf_counter()
    host = machine()
    result = run()
    result["summary"] = summarise(result)
    result["machine"] = host
    result["seconds"] = time.perf_counter() - started
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "calibration.json").write_text(json.dumps(result, indent=1) + "\n")
    (RESULTS / "calibration.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
