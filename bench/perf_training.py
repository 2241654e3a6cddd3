"""The fine-tune job against a bare PyTorch loop doing the same work, in one invocation.

    python -m bench.perf_training [--quick] [--device cuda]

The job runs in the real service (``python -m app`` with a temporary data dir: API process,
worker process, SQLite): a manual-schedule fine-tune of the bundled ``fashion_54k``
(compact_cnn) source, fixed epochs, no early stopping, on a target uploaded as a zip of PNGs.
Its per-epoch ``seconds`` and ``train_seconds`` come from the job's progress history, its
whole fine-tune call from the report's ``seconds``.

The bare loop runs in this process on the same pixels (decoded in memory, untimed): the same
split, model, param groups, optimiser, one-cycle schedule, batch size, augmentation (the
service's own ``augment_batch``), per-epoch validation and best-weights copy; per step the same
hooks as the service (app.jobs.progress): a cancel check (an SQLite query at most every
STOP_CHECK_SECONDS) and a progress write at most twice a second, plus a write per epoch. It
timestamps its epochs where the service does. Runs alternate job, bare, job, bare...; the
first round is a warm-up.

Targets: the 7,190 bundled 32 px images (test 10 %, then val 20 % of the rest: 5,178
training images, 1,293 validation), and the 250-image ``wesnoth_small`` few-shot target,
reported separately.
"""

import io
import json
import os
import sqlite3
import tempfile
import time
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import torch
from PIL import Image
from torch.nn import functional as F

from app.families import get_spec, load_model, replace_head
from app.finetune.layers import LayerwiseLR
from app.finetune.pipeline import three_way_split
from app.finetune.train import augment_batch
from app.jobs.progress import STOP_CHECK_SECONDS, WRITE_SECONDS
from app.zoo.bundled import BUNDLED_DIR, manifest
from bench.perf_common import bundled_pixels, machine, running_service, section_main, timing

SOURCE = "fashion_54k"
FEWSHOT = "wesnoth_small"
BATCH_SIZE = 32  # the service's default
VAL_FRACTION, TEST_FRACTION = 0.2, 0.1


def run(quick: bool = False, device: str = "cpu") -> dict[str, Any]:
    """Job vs bare loop on the large and the few-shot target; medians, spreads, ratios."""
    repeats = 3 if quick else 5
    large_epochs, few_epochs = (2, 10) if quick else (4, 20)
    images, labels = bundled_pixels()
    few = np.load(BUNDLED_DIR / "targets" / f"{FEWSHOT}.npz")
    zoo = manifest()
    if zoo is None:
        raise RuntimeError("the bundled zoo is missing")
    source = next(s for s in zoo["sources"] if s["name"] == SOURCE)
    result: dict[str, Any] = {
        "benchmark": "perf_training",
        "device": device,
        "machine": machine(),
        "source": SOURCE,
        "batch_size": BATCH_SIZE,
        "hooks": {"stop_check_seconds": STOP_CHECK_SECONDS, "write_seconds": WRITE_SECONDS},
    }
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp, service(Path(tmp), device) as client:
        source_id = find_source(client, SOURCE)
        targets = {
            "large": (images, labels, large_epochs),
            "fewshot": (few["images"], few["labels"], few_epochs),
        }
        for name, (pixels, target_labels, epochs) in targets.items():
            dataset_id = upload(client, pixels, target_labels)
            order = file_order(target_labels)  # the order the worker reads the files in
            pixels, target_labels = pixels[order], target_labels[order]
            model_file = BUNDLED_DIR / source["weights"]
            runs: dict[str, list[dict[str, float]]] = {"job": [], "bare": []}
            hooks_db = Path(tmp) / f"bare-{name}.db"
            for round_index in range(repeats + 1):
                job = run_job(client, dataset_id, source_id, epochs)
                bare = bare_finetune(
                    pixels, target_labels, model_file, source["num_classes"], epochs,
                    torch.device(device), hooks_db,
                )  # fmt: skip
                if round_index:  # the first round warms up both
                    runs["job"].append(job)
                    runs["bare"].append(bare)
                print(f"{name} round {round_index}: job {job} bare {bare}", flush=True)
            result[name] = summarise(runs, epochs)
    result["load_average_end"] = [round(x, 2) for x in os.getloadavg()[:2]]
    result["seconds"] = round(time.perf_counter() - started, 1)
    return result


def summarise(runs: dict[str, list[dict[str, float]]], epochs: int) -> dict[str, Any]:
    """Medians and spreads of each measure for both contenders, and job/bare ratios."""
    out: dict[str, Any] = {
        "epochs": epochs,
        "train_images": runs["job"][0]["train_images"],
        "val_images": runs["job"][0]["val_images"],
    }
    for measure in ("train_seconds", "epoch_seconds", "call_seconds"):
        job = timing([r[measure] for r in runs["job"]])
        bare = timing([r[measure] for r in runs["bare"]])
        out[measure] = {
            "job": job,
            "bare": bare,
            # Throughput of the job over the bare loop's: 1.0 = as fast, < 1 slower.
            "ratio": round(bare["median_s"] / job["median_s"], 3),
        }
    seen = out["train_images"] * epochs
    out["job_train_images_per_s"] = round(seen / out["train_seconds"]["job"]["median_s"], 1)
    out["bare_train_images_per_s"] = round(seen / out["train_seconds"]["bare"]["median_s"], 1)
    return out


# --- the service side --------------------------------------------------------------------


@contextmanager
def service(tmp: Path, device: str) -> Iterator[httpx.Client]:
    """The real service on a free port with its own data dir; a client for it."""
    with (
        running_service(tmp, device) as (url, _),
        httpx.Client(base_url=url, timeout=600) as client,
    ):
        yield client


def find_source(client: httpx.Client, name: str) -> str:
    """The id of the zoo source called ``name``."""
    token = None
    while True:
        params: dict[str, Any] = {"page_size": 200, **({"page_token": token} if token else {})}
        page = client.get("/v1/sources", params=params).raise_for_status().json()
        for item in page["items"]:
            if item["name"] == name:
                return str(item["id"])
        token = page.get("next_page_token")
        if not token:
            raise LookupError(f"no source {name!r} in the zoo")


def class_name(label: int) -> str:
    """Folder name of a label; zero-padded so that sorted names keep label order."""
    return f"class{label:02d}"


def upload(client: httpx.Client, images: np.ndarray, labels: np.ndarray) -> str:
    """Upload the images as a zip of PNGs in class folders; the dataset's id."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for i, (pixels, label) in enumerate(zip(images, labels, strict=True)):
            png = io.BytesIO()
            Image.fromarray(pixels).save(png, format="PNG")
            archive.writestr(f"{class_name(int(label))}/{i:05d}.png", png.getvalue())
    response = client.post("/v1/datasets", files={"file": ("target.zip", buffer.getvalue())})
    response.raise_for_status()
    return str(response.json()["id"])


def file_order(labels: np.ndarray) -> np.ndarray:
    """Indices in the order the worker lists the uploaded files: by class, then by name."""
    names = [f"{class_name(int(label))}/{i:05d}.png" for i, label in enumerate(labels)]
    return np.array(sorted(range(len(names)), key=names.__getitem__))


def job_options(epochs: int) -> dict[str, Any]:
    """The fine-tune request: manual schedule, fixed epochs, no early stopping."""
    return {
        "schedule": "manual",
        "epochs": epochs,
        "patience": None,
        "batch_size": BATCH_SIZE,
        "val_fraction": VAL_FRACTION,
        "test_fraction": TEST_FRACTION,
    }


def run_job(client: httpx.Client, dataset_id: str, source_id: str, epochs: int) -> dict[str, float]:
    """Run one fine-tune job to its end; its epoch and call seconds."""
    body = {"target_dataset_id": dataset_id, "source_id": source_id, **job_options(epochs)}
    response = client.post("/v1/finetunes", json=body)
    response.raise_for_status()
    job_id = response.json()["id"]
    # A slow poll: the API process shares the cores with the worker being measured.
    while (state := client.get(f"/v1/jobs/{job_id}").json())["status"] in ("queued", "running"):
        time.sleep(1.0)
    if state["status"] != "succeeded":
        raise RuntimeError(f"job {job_id} ended {state['status']}: {state.get('error')}")
    history = [h for h in state["progress"]["history"] if h["phase"] == "fine_tune"]
    return {
        "train_seconds": round(sum(h["train_seconds"] for h in history), 4),
        "epoch_seconds": round(sum(h["seconds"] for h in history), 4),
        "call_seconds": round(state["result"]["seconds"], 4),
        "train_images": state["result"]["train_images"],
        "val_images": state["result"]["val_images"],
    }


# --- the bare loop -------------------------------------------------------------------------


class BareHooks:
    """The service's per-step hooks, written plainly: a cancel query, throttled writes."""

    def __init__(self, path: Path) -> None:
        self.db = sqlite3.connect(path, isolation_level=None)  # autocommit, as the service's
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute(
            "CREATE TABLE IF NOT EXISTS jobs (id TEXT PRIMARY KEY, cancel_requested INTEGER,"
            " worker_id TEXT, status TEXT, progress TEXT)"
        )
        self.db.execute("INSERT OR REPLACE INTO jobs VALUES ('j', 0, 'w', 'running', '{}')")
        self.state: dict[str, Any] = {"history": []}
        self.last_step_write = self.last_check = 0.0

    def step(self, epoch: int, step: int, steps: int) -> None:
        """Before a step: the cancel check; after it (here, folded in): a throttled write."""
        now = time.monotonic()
        if now - self.last_check >= STOP_CHECK_SECONDS:
            self.last_check = now
            row = self.db.execute(
                "SELECT cancel_requested, worker_id, status FROM jobs WHERE id = 'j'"
            ).fetchone()
            if row[0] or row[1] != "w" or row[2] != "running":
                raise RuntimeError("cancelled")
        self.state.update(epoch=epoch, step=step, steps_per_epoch=steps)
        if now - self.last_step_write >= WRITE_SECONDS:  # on its own clock, as the job's
            self.last_step_write = now
            self.write()

    def epoch(self, metrics: dict[str, float]) -> None:
        """After an epoch: its metrics into the history, written at once."""
        self.state["history"].append(metrics)
        self.write()

    def write(self) -> None:
        """Store the progress (one UPDATE, committed)."""
        self.db.execute(
            "UPDATE jobs SET progress = ? WHERE id = 'j' AND worker_id = 'w' AND status = ?",
            (json.dumps(self.state), "running"),
        )

    def close(self) -> None:
        """Close the connection."""
        self.db.close()


def bare_finetune(
    images: np.ndarray,
    labels: np.ndarray,
    weights: Path,
    source_classes: int,
    epochs: int,
    device: torch.device,
    hooks_db: Path,
) -> dict[str, float]:
    """A plain fine-tuning loop doing the job's work; its epoch and call seconds."""
    spec = get_spec("compact_cnn")
    classes = int(labels.max()) + 1
    model = load_model("compact_cnn", source_classes, weights)
    torch.manual_seed(0)
    model = replace_head(model, classes).to(device)
    cuda = device.type == "cuda"
    # Channels-last everywhere: on this CPU it makes compact_cnn's steps ~15 % faster.
    model = model.to(memory_format=torch.channels_last)
    hooks = BareHooks(hooks_db)
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    sync()
    call_started = time.perf_counter()

    train_idx, val_idx, test_idx = three_way_split(labels, VAL_FRACTION, TEST_FRACTION, 0)
    mean = torch.tensor(spec.mean, device=device).view(1, 3, 1, 1) * 255
    std = torch.tensor(spec.std, device=device).view(1, 3, 1, 1) * 255

    def nchw(index: np.ndarray) -> torch.Tensor:  # channels-last memory (NHWC as decoded)
        return torch.from_numpy(images[index]).permute(0, 3, 1, 2)

    train_x, train_y = nchw(train_idx), torch.from_numpy(labels[train_idx]).to(device)
    # Fixed sets are normalised once, inside the timer.
    val_x = (nchw(val_idx).to(device).float() - mean) / std
    val_y = torch.from_numpy(labels[val_idx]).to(device)
    groups = LayerwiseLR(0.05, decay=0.5).param_groups(model, 5e-4)
    optimizer = torch.optim.SGD(groups, lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
    steps = -(-len(train_idx) // BATCH_SIZE)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=[g["lr"] for g in groups], total_steps=epochs * steps, pct_start=0.15
    )
    scaler = torch.amp.GradScaler("cuda", enabled=cuda)  # float16 gradients, as the job's
    train_total = epoch_total = 0.0
    best, best_state = -1.0, None
    for epoch in range(1, epochs + 1):
        sync()
        started = time.perf_counter()
        model.train()
        order = torch.randperm(len(train_idx))
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.int64)
        for step, first in enumerate(range(0, len(train_idx), BATCH_SIZE), start=1):
            hooks.step(epoch, step, steps)
            index = order[first : first + BATCH_SIZE]
            x = train_x[index]
            if cuda:  # uint8 from pinned memory, converted on the GPU
                x = x.pin_memory().to(device, non_blocking=True)
            x = (augment_batch(x.float()) - mean) / std
            x = x.contiguous(memory_format=torch.channels_last)
            y = train_y[index.to(device)]
            with torch.autocast(device.type, dtype=torch.float16, enabled=cuda):
                logits = model(x)
                loss = F.cross_entropy(logits, y, label_smoothing=0.1)
            optimizer.zero_grad(set_to_none=True)
            if cuda:
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()
                optimizer.step()
            scheduler.step()
            loss_sum += loss.detach() * len(y)
            correct += (logits.argmax(1) == y).sum()
        sync()
        train_seconds = time.perf_counter() - started
        model.eval()
        right = torch.zeros((), device=device, dtype=torch.int64)
        with torch.inference_mode(), torch.autocast(device.type, torch.float16, enabled=cuda):
            for first in range(0, len(val_y), 256):
                logits = model(val_x[first : first + 256])
                right += (logits.argmax(1) == val_y[first : first + 256]).sum()
        accuracy = float(right) / len(val_y)
        seconds = time.perf_counter() - started
        train_total += train_seconds
        epoch_total += seconds
        if accuracy > best:  # the best-validation weights, kept as the service keeps them
            best = accuracy
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        hooks.epoch(
            {
                "epoch": epoch,
                "train_loss": float(loss_sum) / len(train_idx),
                "train_accuracy": int(correct) / len(train_idx),
                "val_accuracy": accuracy,
                "seconds": seconds,
                "train_seconds": train_seconds,
            }
        )
    assert best_state is not None
    model.load_state_dict(best_state)
    model.eval()
    test_x = (nchw(test_idx).to(device).float() - mean) / std
    with torch.inference_mode():
        (model(test_x).argmax(1).cpu().numpy() == labels[test_idx]).mean()
    sync()
    call_seconds = time.perf_counter() - call_started
    hooks.close()
    return {
        "train_seconds": round(train_total, 4),
        "epoch_seconds": round(epoch_total, 4),
        "call_seconds": round(call_seconds, 4),
        "train_images": len(train_idx),
        "val_images": len(val_idx),
    }


# --- the report ----------------------------------------------------------------------------


def report(result: dict[str, Any]) -> list[str]:
    """Markdown lines: job vs bare loop, steps and whole epochs, large and few-shot."""
    m = result["machine"]
    lines = [
        "## Fine-tune job vs a bare loop doing the same work",
        "",
        f"Device {result['device']} ({m['gpu'] or 'no GPU'}), {m['cpus']} CPUs, load average "
        f"at start {m['load_average_1m_5m']}, at end {result['load_average_end']}. Source "
        f"`{result['source']}` (compact_cnn, 32 px), batch {result['batch_size']}, manual "
        "schedule, fixed epochs. Both sides: same split, augmentation, optimiser, one-cycle "
        f"schedule, per-epoch validation; a cancel check at most every "
        f"{result['hooks']['stop_check_seconds']} s and a progress write at most every "
        f"{result['hooks']['write_seconds']} s (SQLite). Medians of the runs after a warm-up "
        "round, [min-max]; ratio = job throughput / bare throughput (goal >= 0.9).",
        "",
        "| target | train / val images | epochs | measure | job (s) | bare loop (s) | ratio |",
        "| --- | ---: | ---: | --- | ---: | ---: | ---: |",
    ]
    names = {
        "train_seconds": "training steps",
        "epoch_seconds": "whole epochs (validation included)",
        "call_seconds": "whole fine-tune call (split, epochs, hooks, test evaluation)",
    }
    for target in ("large", "fewshot"):
        t = result[target]
        for measure, label in names.items():
            job, bare = t[measure]["job"], t[measure]["bare"]
            lines.append(
                f"| {target} | {t['train_images']} / {t['val_images']} | {t['epochs']} | "
                f"{label} | {job['median_s']} [{job['min_s']}-{job['max_s']}] | "
                f"{bare['median_s']} [{bare['min_s']}-{bare['max_s']}] | "
                f"{t[measure]['ratio']}x |"
            )
    large = result["large"]
    lines += [
        "",
        f"Training steps, large target: job {large['job_train_images_per_s']} img/s, bare loop "
        f"{large['bare_train_images_per_s']} img/s. Run time {result['seconds']:.0f} s.",
    ]
    return lines


if __name__ == "__main__":
    section_main(run, report, __doc__.splitlines()[0])
