"""Performance against fair baselines, every figure a ratio measured in the same invocation.

    python -m bench.performance [--quick]      # CPU: writes bench/results/performance.json/.md
    python -m bench.performance --gpu [--quick] # CUDA: writes performance_gpu.json/.md

Sections (each a module of its own, runnable alone):
- signature throughput vs a DataLoader with a worker per core, and vs the combined
  decode + forward limit, at 32 px and 224 px (bench.perf_signature);
- a fine-tune's loading from the pixel cache vs decoding the files (bench.perf_pixel_cache);
- the fine-tune job vs a bare loop doing the same work (bench.perf_training);
- resident memory per process: idle, peak, and after a burst (bench.perf_memory);
- ranking vs numpy and loops (bench.ranking_speed).
The GPU mode runs the signature and training sections on CUDA, with their baselines on the
same card in the same invocation, and is sized to finish in under 8 minutes.
"""

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

from bench import perf_memory, perf_pixel_cache, perf_signature, perf_training, ranking_speed
from bench.perf_common import machine

RESULTS = Path(__file__).parent / "results"
# Each section's module reports itself (its own heading, table and verdicts).
SECTIONS = [
    ("signature", perf_signature),
    ("pixel_cache", perf_pixel_cache),
    ("training", perf_training),
    ("memory", perf_memory),
]
GPU_CPU_SECTIONS = [("cpu_signature", perf_signature), ("cpu_training", perf_training)]
GPU_BUDGET_SECONDS = 8 * 60
NO_GPU = (
    "No GPU measured: no GPU was lent to the session that made this run. "
    "`python -m bench.performance --gpu` on a CUDA machine writes performance_gpu.json/.md."
)


def run_cpu(quick: bool) -> dict[str, Any]:
    """Every section on the CPU."""
    return {
        "signature": perf_signature.run(quick=quick, device="cpu"),
        "pixel_cache": perf_pixel_cache.run(quick=quick, device="cpu"),
        "training": perf_training.run(quick=quick, device="cpu"),
        "memory": perf_memory.run(quick=quick),
        "ranking": ranking_speed.run([1_000, 10_000] if quick else [1_000, 10_000, 100_000])[
            "rows"
        ],
    }


def run_gpu(quick: bool) -> dict[str, Any]:
    """Signature and training on CUDA, each against its baseline on the same card; then the
    same on this machine's CPUs (quick sizes), so the card's gain is measured here too."""
    return {
        "signature": perf_signature.run(quick=quick, device="cuda"),
        "training": perf_training.run(quick=quick, device="cuda"),
        "cpu_signature": perf_signature.run(quick=True, device="cpu"),
        "cpu_training": perf_training.run(quick=True, device="cpu"),
    }


def main() -> None:
    """Run the sections of the chosen mode and write the results."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller sizes, fewer repeats")
    parser.add_argument("--gpu", action="store_true", help="measure on CUDA (needs a GPU)")
    args = parser.parse_args()
    if args.gpu and not torch.cuda.is_available():
        sys.exit("--gpu needs a CUDA device; torch sees none here")
    started = time.perf_counter()
    results: dict[str, Any] = {
        "benchmark": "performance",
        "mode": "gpu" if args.gpu else "cpu",
        "quick": args.quick,
        "machine": machine(),
    }
    results.update(run_gpu(args.quick) if args.gpu else run_cpu(args.quick))
    results["seconds"] = round(time.perf_counter() - started, 1)
    if args.gpu:
        results["within_gpu_budget"] = results["seconds"] <= GPU_BUDGET_SECONDS
    else:
        gpu_file = RESULTS / "performance_gpu.json"
        results["gpu"] = json.loads(gpu_file.read_text()) if gpu_file.exists() else NO_GPU
    name = "performance_gpu" if args.gpu else "performance"
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(results, indent=2) + "\n")
    (RESULTS / f"{name}.md").write_text(report(results))
    print(report(results))


def report(r: dict[str, Any]) -> str:
    """Markdown: machine and load, then each section's own tables and verdicts."""
    m = r["machine"]
    load1, load5 = m["load_average_1m_5m"]
    lines = [
        "# Performance" + (" on a GPU" if r["mode"] == "gpu" else ""),
        "",
        f"{m['cpus']} CPUs, Python {m['python']}, torch {m['torch']}, GPU: "
        f"{m['gpu'] or 'none'}. Load average at the start {load1} (1 min) / {load5} (5 min): "
        f"{'idle' if m['idle_at_start'] else 'busy (shared machine)'}. Every ratio compares "
        "contenders timed in this invocation, runs interleaved; medians with [min-max].",
        "",
    ]
    for section, module in SECTIONS:
        if section in r:
            lines += [*module.report(r[section]), ""]
    for section, module in GPU_CPU_SECTIONS:
        if section in r:
            lines += ["The same on this machine's CPUs, quick sizes:", ""]
            lines += [*module.report(r[section]), ""]
    if "ranking" in r:
        lines += [
            "## Ranking (P2L, KL, d=128)",
            "",
            *ranking_speed.LEGEND,
            "",
            *ranking_speed.TABLE_HEAD,
            *ranking_speed.table_rows(r["ranking"]),
        ]
    if "gpu" in r:
        gpu = r["gpu"]
        lines += ["", "## GPU", ""]
        if isinstance(gpu, str):
            lines.append(gpu)
        else:
            lines.append(
                f"Measured on {gpu['machine']['gpu']} in {gpu['seconds']:.0f} s "
                "(see [performance_gpu.md](performance_gpu.md))."
            )
    lines += ["", f"Run time {r['seconds']:.0f} s" + (" (quick mode)." if r["quick"] else ".")]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
