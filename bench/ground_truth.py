"""Ground truth for selection: fine-tune every source on every target, cached per cell.

The finished cells are committed (``bench/results/selection_cells.jsonl``, one JSON line
each): a fresh clone re-reads them instead of fine-tuning again, and a run resumes where one
stopped. A cell is keyed by the protocol, the target's images and the source's weights, not
by the training code: after changing ``app/finetune`` or ``app/families``, delete the file.

One fixed protocol for every cell (``PROTOCOL``): layer-wise fine-tuning with decay 0.5 for
a fixed budget of about 200 SGD steps on the target's training images, no validation split,
no early stopping, the final weights scored once on the target's test split, which nothing
else sees. The from-scratch baseline trains the same architecture with the same budget.

Seeds, by a rule fixed before any run: every cell gets seed 0 and the baseline seeds 0-2;
then any source within two standard errors of a target's best gets up to 3 seeds, until no
contender is left with fewer. The standard error of a cell is the target's pooled seed
standard deviation over the square root of the cell's seeds.
"""

import hashlib
import json
import math
import os
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file

from app.families import get_spec, load_model
from app.finetune.pipeline import FinetuneOptions, finetune, train_from_scratch
from app.finetune.train import ImageTensors, evaluate
from app.zoo.bundled import BUNDLED_DIR, bundled_target, manifest

SCRATCH = "(scratch)"
MAX_SEEDS = 3
STEPS = 200
PROTOCOL: dict[str, Any] = {
    "schedule": "manual",
    "base_lr": 0.05,
    "decay": 0.5,
    "batch_size": 32,
    "weight_decay": 5e-4,
    "steps": STEPS,
    "val_fraction": 0.0,
    "test_fraction": 0.0,
    "patience": None,
}
CELLS = Path(__file__).parent / "results" / "selection_cells.jsonl"

# What a target is to the zoo: from a source's family, a shifted version of one, or from a
# family no source saw (``Target.kind``).
KINDS = ("in_family", "shifted", "unseen_family")


@dataclass
class Target:
    """A bundled benchmark target with its fixed train/test split."""

    name: str
    kind: str
    family: str
    role: str
    shift: str | None
    images: np.ndarray
    labels: np.ndarray
    class_names: list[str]
    is_test: np.ndarray

    @property
    def train(self) -> tuple[np.ndarray, np.ndarray]:
        """The training images and labels (what signatures and peers may see)."""
        return self.images[~self.is_test], self.labels[~self.is_test]


def load_targets(names: list[str] | None = None) -> list[Target]:
    """The bundled targets (all, or those named), in manifest order."""
    targets = []
    for entry in manifest()["targets"]:
        if names is not None and entry["name"] not in names:
            continue
        images, labels, class_names, is_test = bundled_target(entry["name"])
        targets.append(
            Target(
                entry["name"],
                entry["kind"],
                entry["family"],
                entry["role"],
                entry["shift"],
                images,
                labels,
                class_names,
                is_test,
            )
        )
    return targets


def source_entries(names: list[str] | None = None) -> dict[str, dict[str, Any]]:
    """Manifest entries of the bundled sources (all, or those named)."""
    return {
        entry["name"]: entry
        for entry in manifest()["sources"]
        if names is None or entry["name"] in names
    }


def epochs_for(train_images: int) -> int:
    """Epochs that make about ``STEPS`` optimiser steps."""
    steps_per_epoch = math.ceil(train_images / PROTOCOL["batch_size"])
    return max(1, round(STEPS / steps_per_epoch))


def options_for(train_images: int, seed: int) -> FinetuneOptions:
    """The fixed protocol as FinetuneOptions."""
    fields = {k: v for k, v in PROTOCOL.items() if k != "steps"}
    return FinetuneOptions(**fields, epochs=epochs_for(train_images), seed=seed)


@cache
def _target(name: str) -> Target:
    return load_targets([name])[0]


def run_cell(target_name: str, source_name: str, seed: int) -> dict[str, Any]:
    """Fine-tune one source (or train from scratch) on one target; its test accuracy."""
    target = _target(target_name)
    entries = source_entries()
    arch = entries[next(iter(entries))]["architecture"] if source_name == SCRATCH else (
        entries[source_name]["architecture"])  # fmt: skip
    spec = get_spec(arch)
    images, labels = target.train
    options = options_for(len(labels), seed)
    started = time.perf_counter()
    if source_name == SCRATCH:
        train = ImageTensors(images, labels, spec.mean, spec.std)
        model, _ = train_from_scratch(arch, len(target.class_names), train, None, options)
    else:
        entry = entries[source_name]
        source = load_model(arch, entry["num_classes"], BUNDLED_DIR / entry["weights"])
        model, _ = finetune(
            source, arch, images, labels, target.class_names, spec.mean, spec.std, options
        )
    seconds = time.perf_counter() - started
    test = ImageTensors(
        target.images[target.is_test], target.labels[target.is_test], spec.mean, spec.std
    )
    return {"accuracy": evaluate(model, test).accuracy, "seconds": seconds}


def _worker_init() -> None:
    torch.set_num_threads(1)


def fingerprint(target: str, source: str) -> str:
    """What a cell's result depends on: the protocol, the target's images and split, the
    source's weights (contents, not file bytes: safetensors headers may differ by build)."""
    digest = hashlib.sha256(json.dumps(PROTOCOL, sort_keys=True).encode())
    with np.load(BUNDLED_DIR / "targets" / f"{target}.npz") as data:
        for key in ("images", "labels", "is_test"):
            digest.update(np.ascontiguousarray(data[key]).tobytes())
    if source != SCRATCH:
        weights = load_file(BUNDLED_DIR / source_entries()[source]["weights"])
        for key in sorted(weights):
            digest.update(key.encode() + weights[key].numpy().tobytes())
    return digest.hexdigest()[:16]


class CellCache:
    """Finished cells, one JSON line each, so that a run resumes where it stopped."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.cells: dict[tuple[str, str, int], dict[str, Any]] = {}
        self._prints: dict[tuple[str, str], str] = {}
        if path.exists():
            for line in path.read_text().splitlines():
                row = json.loads(line)
                if row["fingerprint"] == self.fingerprint(row["target"], row["source"]):
                    self.cells[(row["target"], row["source"], row["seed"])] = row

    def fingerprint(self, target: str, source: str) -> str:
        """Fingerprint of a (target, source) pair, computed once."""
        key = (target, source)
        if key not in self._prints:
            self._prints[key] = fingerprint(target, source)
        return self._prints[key]

    def put(self, target: str, source: str, seed: int, result: dict[str, Any]) -> None:
        """Record one finished cell (appended to the file at once)."""
        row = {"target": target, "source": source, "seed": seed,
               "fingerprint": self.fingerprint(target, source), **result}  # fmt: skip
        self.cells[(target, source, seed)] = row
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as stream:
            stream.write(json.dumps(row) + "\n")


@dataclass
class CellStats:
    """Mean test accuracy of one (target, source) over its seeds, with a standard error."""

    runs: list[float]
    stderr: float
    seconds: float | None  # None: no cell of it was timed (restored from a results file)

    @property
    def mean(self) -> float:
        """Mean accuracy over seeds."""
        return float(np.mean(self.runs))


def pooled_sd(cells: dict[str, list[float]]) -> float:
    """Seed standard deviation pooled over every cell with 2 or more seeds."""
    squares = sum(float(np.sum((np.array(r) - np.mean(r)) ** 2)) for r in cells.values()
                  if len(r) > 1)  # fmt: skip
    dof = sum(len(r) - 1 for r in cells.values() if len(r) > 1)
    return math.sqrt(squares / dof) if dof else 0.0


def target_stats(
    cache: CellCache, target: str, sources: list[str], max_seeds: int = MAX_SEEDS
) -> dict[str, CellStats]:
    """Per-source (and scratch) statistics of one target from the cached cells."""
    cells = {
        s: [cache.cells[(target, s, seed)] for seed in range(max_seeds)
            if (target, s, seed) in cache.cells]
        for s in [*sources, SCRATCH]
    }  # fmt: skip
    runs = {s: [c["accuracy"] for c in found] for s, found in cells.items()}
    fine_tunes = {s: r for s, r in runs.items() if s != SCRATCH and len(r) > 1}
    sd = pooled_sd(fine_tunes) if fine_tunes else pooled_sd({SCRATCH: runs[SCRATCH]})
    return {
        s: CellStats(r, sd / math.sqrt(len(r)), _mean_seconds(cells[s]))
        for s, r in runs.items()
        if r
    }


def _mean_seconds(cells: list[dict[str, Any]]) -> float | None:
    """Mean time of the cells that were timed (None: cells restored from a results file)."""
    timed = [c["seconds"] for c in cells if c.get("seconds") is not None]
    return float(np.mean(timed)) if timed else None


def within_noise(stats: dict[str, CellStats]) -> set[str]:
    """Sources within two standard errors (of the difference) of a target's best source."""
    sources = {s: c for s, c in stats.items() if s != SCRATCH}
    top = max(sources.values(), key=lambda c: c.mean)
    return {
        s
        for s, c in sources.items()
        if top.mean - c.mean <= 2 * math.sqrt(top.stderr**2 + c.stderr**2)
    }


def ground_truth(
    targets: list[str],
    sources: list[str],
    cache: CellCache,
    workers: int = 2,
    max_seeds: int = MAX_SEEDS,
    log: Callable[[str], None] = print,
) -> dict[str, dict[str, CellStats]]:
    """Run what the cache lacks under the seed rule; statistics per target and source."""
    todo = [(t, s, 0) for t in targets for s in sources]
    todo += [(t, SCRATCH, seed) for t in targets for seed in range(max_seeds)]
    with ProcessPoolExecutor(max_workers=workers, initializer=_worker_init) as pool:
        while True:
            missing = [cell for cell in todo if cell not in cache.cells]
            if missing:
                started = time.perf_counter()
                log(f"fine-tuning {len(missing)} cells on {workers} processes ...")
                futures = {pool.submit(run_cell, *cell): cell for cell in missing}
                for done, (future, cell) in enumerate(futures.items(), start=1):
                    cache.put(*cell, future.result())
                    if done % 50 == 0 or done == len(missing):
                        log(f"  {done}/{len(missing)} cells, {time.perf_counter() - started:.0f}s")
            todo = [
                (t, s, seed)
                for t in targets
                for s in sorted(within_noise(target_stats(cache, t, sources, max_seeds)))
                for seed in range(max_seeds)
                if (t, s, seed) not in cache.cells
            ]
            if not todo:
                break
    return {t: target_stats(cache, t, sources, max_seeds) for t in targets}


def cpu_workers() -> int:
    """One single-threaded process per core."""
    return max(1, os.cpu_count() or 1)
