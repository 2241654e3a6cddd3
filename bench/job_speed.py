"""One default fine-tune job on each available device, in the same process.

    python -m bench.job_speed        # writes bench/results/job_speed.json and job_speed.md

The job the capacity figures are built on (bench/capacity.py): the service's default options
(auto schedule over 4 candidates, then up to 40 epochs with early stopping) on the bundled
`fashion` target's 250 training images, from the `fashion_9k` source. Timed on the CPU and,
where there is one, on CUDA, after one warm-up job per device; the ratio is the speed-up S
that capacity.md leaves as a parameter. Needs only torch, torchvision, numpy, safetensors and
pydantic (no database, no web stack), so it runs on a bare GPU machine.
"""

import json
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from app.families import get_spec, load_model
from app.finetune.options import FinetuneOptions
from app.finetune.pipeline import finetune

BUNDLED = Path(__file__).parents[1] / "app" / "zoo" / "bundled"
RESULTS = Path(__file__).parent / "results"


def one_job(device: torch.device) -> dict[str, Any]:
    """Seconds and test accuracy of one default fine-tune on ``device``."""
    source = next(
        s
        for s in json.loads((BUNDLED / "manifest.json").read_text())["sources"]
        if s["name"] == "fashion_9k"
    )
    target = np.load(BUNDLED / "targets" / "fashion.npz")
    keep = ~target["is_test"]
    architecture = source["architecture"]
    spec = get_spec(architecture)
    model = load_model(architecture, source["num_classes"], BUNDLED / source["weights"])
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    _, report = finetune(
        model, architecture, target["images"][keep], target["labels"][keep],
        [str(c) for c in target["class_names"]], spec.mean, spec.std, FinetuneOptions(),
        device=device,
    )  # fmt: skip
    if device.type == "cuda":
        torch.cuda.synchronize()
    return {
        "seconds": round(time.perf_counter() - started, 2),
        "test_accuracy": report.test_accuracy,
        "train_images": report.train_images,
    }


def main() -> None:
    """Time the job on every device here and write the results."""
    devices = [torch.device("cpu")]
    if torch.cuda.is_available():
        devices.append(torch.device("cuda"))
    rows = {}
    for device in devices:
        one_job(device)  # warm-up: kernels, allocator, caches
        rows[device.type] = one_job(device)
        print(device.type, rows[device.type], flush=True)
    results: dict[str, Any] = {
        "benchmark": "job_speed",
        "machine": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "cpus": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        },
        "jobs": rows,
    }
    if "cuda" in rows:
        results["speedup_cuda_over_cpu"] = round(
            rows["cpu"]["seconds"] / rows["cuda"]["seconds"], 2
        )
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "job_speed.json").write_text(json.dumps(results, indent=2) + "\n")
    lines = [
        "# One default fine-tune job per device",
        "",
        f"Machine: {results['machine']}.",
        "",
        "| device | seconds | test accuracy |",
        "| --- | --- | --- |",
    ]
    lines += [f"| {d} | {r['seconds']} | {r['test_accuracy']:.3f} |" for d, r in rows.items()]
    if "speedup_cuda_over_cpu" in results:
        lines += [
            "",
            f"Speed-up S (CUDA over CPU, same process): {results['speedup_cuda_over_cpu']}",
        ]
    (RESULTS / "job_speed.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
