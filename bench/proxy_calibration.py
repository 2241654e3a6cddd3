"""Provisional calibration of lambda and the measure, leave-one-target-out, on a proxy truth.

    python -m bench.proxy_calibration

Targets: the held-out targets bundled with the zoo (app/zoo/bundled/targets) that have a
source from their own domain. Proxy ground truth: that same-domain source is the best one to
transfer from. This is weaker than the benchmark's truth (fine-tune every source, measure
accuracy; issue #5) and only says which lambdas keep the score from overriding a clear domain
match; the defaults it supports are provisional until that benchmark calibrates them.
For each target left out, (measure, lambda) is chosen on the others (most hits; ties: the
default measure kl, then the median lambda of the tied ones) and scored on the left-out one.
Writes bench/results/calibration_proxy.json and .md.
"""

import json
import statistics
from pathlib import Path

import numpy as np

from app.p2l.reference import load_reference
from app.p2l.scoring import MEASURES, ScoringParams, SignatureIndex
from app.p2l.signature import DatasetSignature, load_signature, signature_of_array
from app.zoo.bundled import BUNDLED_DIR, manifest

RESULTS = Path(__file__).parent / "results"
LAMBDAS = (0.0, 0.005, 0.01, 0.02, 0.03, 0.05, 0.1, 0.2)
EPS = 1e-3


def hit(index: SignatureIndex, target: DatasetSignature, related: str, measure, lam) -> bool:
    """Does P2L rank the related source first?"""
    ranked = index.rank(target, "p2l", measure, ScoringParams(lam, EPS, 0.01), top_k=1)
    return ranked[0].source_id == related


def main() -> None:
    """Run the leave-one-target-out loop and write the results."""
    info = manifest()
    reference = load_reference(
        info["reference"]["architecture"], BUNDLED_DIR / "reference.safetensors"
    )
    index = SignatureIndex(eps=EPS)
    for source in info["sources"]:
        index.add(source["name"], load_signature(BUNDLED_DIR / source["signature"]))
    targets = {}
    for entry in info["targets"]:
        if entry["related_source"] is None:
            continue
        data = np.load(BUNDLED_DIR / entry["file"])
        names = [str(c) for c in data["class_names"]]
        targets[entry["name"]] = (
            signature_of_array(reference, data["images"], data["labels"], names),
            entry["related_source"],
        )
    grid = {
        (measure, lam): {
            name: hit(index, sig, rel, measure, lam) for name, (sig, rel) in targets.items()
        }
        for measure in MEASURES
        for lam in LAMBDAS
    }
    folds = []
    for left_out in targets:
        scores = {
            key: sum(v for n, v in hits.items() if n != left_out) for key, hits in grid.items()
        }
        best = max(scores.values())
        tied = [key for key, score in scores.items() if score == best]
        measure = "kl" if any(m == "kl" for m, _ in tied) else tied[0][0]
        lam = statistics.median_low([lam for m, lam in tied if m == measure])
        held_out_hit = grid[(measure, lam)][left_out]
        folds.append({"left_out": left_out, "measure": measure, "lambda": lam,
                      "train_hits": best, "held_out_hit": held_out_hit})  # fmt: skip
    results = {
        "proxy": "same-domain source is best",
        "targets": len(targets),
        "grid_hits": {f"{m}@{lam}": sum(h.values()) for (m, lam), h in grid.items()},
        "folds": folds,
        "held_out_hit_rate": sum(f["held_out_hit"] for f in folds) / len(folds),
        "chosen_lambdas": sorted({f["lambda"] for f in folds}),
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "calibration_proxy.json").write_text(json.dumps(results, indent=2) + "\n")
    lines = ["# Provisional calibration (proxy truth: the same-domain source is best)", "",
             f"{len(targets)} bundled held-out targets with a same-domain source; eps={EPS}.", "",
             "Hits (related source ranked first) over all targets, per measure and lambda:", "",
             "| measure | " + " | ".join(str(lam) for lam in LAMBDAS) + " |",
             "| --- | " + " | ".join("---:" for _ in LAMBDAS) + " |"]  # fmt: skip
    for measure in MEASURES:
        row = [str(sum(grid[(measure, lam)].values())) for lam in LAMBDAS]
        lines.append(f"| {measure} | " + " | ".join(row) + " |")
    lines += ["", f"Leave-one-target-out: held-out hit rate {results['held_out_hit_rate']:.2f} "
              f"({sum(f['held_out_hit'] for f in folds)}/{len(folds)}); lambdas chosen "
              f"{results['chosen_lambdas']}."]  # fmt: skip
    (RESULTS / "calibration_proxy.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
