"""Performance, as ratios measured in one run: signatures, ranking, end to end, training, memory.

    python -m bench.performance [--quick]

Every figure is paired with a baseline measured in the same invocation on the same machine.
Images are the bundled held-out targets (real Fashion-MNIST, clip art, glyphs) written to
disk as 96 px PNGs, repeated to the sizes needed. Writes bench/results/performance.json/.md.
"""

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import torch
from PIL import Image
from torch.nn import functional as F
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

from app.architectures import build_model, get_spec
from app.finetune.layers import LayerwiseLR, replace_head
from app.finetune.train import ImageTensors, TrainConfig, train_classifier
from app.p2l.reference import load_reference, share_cpus_with_decoding
from app.p2l.signature import compute_signature
from app.zoo.bundled import BUNDLED_DIR, manifest
from bench import ranking_speed

RESULTS = Path(__file__).parent / "results"
ROOT = Path(__file__).parents[1]


def bundled_pixels() -> tuple[np.ndarray, np.ndarray]:
    """All bundled held-out target images (32 px) with 5-way labels."""
    images, labels = [], []
    for entry in manifest()["targets"]:
        data = np.load(BUNDLED_DIR / entry["file"])
        images.append(data["images"])
        labels.append(data["labels"])
    return np.concatenate(images), np.concatenate(labels)


def write_image_folder(root: Path, count: int, size: int = 96) -> dict[str, list[Path]]:
    """``count`` real images as PNG files in 5 class folders (ImageFolder layout)."""
    images, labels = bundled_pixels()
    files: dict[str, list[Path]] = {}
    for i in range(count):
        j = i % len(images)
        name = f"class{labels[j]}"
        (root / name).mkdir(parents=True, exist_ok=True)
        path = root / name / f"{i:05d}.png"
        Image.fromarray(images[j]).resize((size, size), Image.Resampling.BILINEAR).save(path)
        files.setdefault(name, []).append(path)
    return files


def signature_throughput(counts: list[int]) -> list[dict]:
    """Service signature vs a plain ImageFolder loop vs forward pass alone, images/s."""
    reference = load_reference("compact_cnn", BUNDLED_DIR / "reference.safetensors", "cpu")
    spec = get_spec("compact_cnn")
    rows = []
    for count in counts:
        with tempfile.TemporaryDirectory() as tmp:
            files = write_image_folder(Path(tmp), count)
            default_threads = torch.get_num_threads()
            share_cpus_with_decoding()  # as the service configures its process
            started = time.perf_counter()
            compute_signature(reference, files)
            service_s = time.perf_counter() - started
            torch.set_num_threads(default_threads)  # the plain loop and ceiling: torch default

            transform = transforms.Compose(
                [
                    transforms.Resize(reference.input_size),
                    transforms.CenterCrop(reference.input_size),
                    transforms.ToTensor(),
                    transforms.Normalize(spec.mean, spec.std),
                ]
            )
            loader = DataLoader(datasets.ImageFolder(tmp, transform), batch_size=128)
            started = time.perf_counter()
            sums = []
            with torch.no_grad():
                for batch, _ in loader:
                    sums.append(reference.extractor(batch).sum(0))
            plain_s = time.perf_counter() - started

        tensors = torch.randn(count, 3, reference.input_size, reference.input_size)
        started = time.perf_counter()
        with torch.inference_mode():
            for first in range(0, count, 128):
                reference.extractor(tensors[first : first + 128])
        ceiling_s = time.perf_counter() - started
        rows.append(
            {
                "images": count,
                "service_images_per_s": round(count / service_s),
                "plain_loop_images_per_s": round(count / plain_s),
                "forward_only_images_per_s": round(count / ceiling_s),
                "vs_plain_loop": round(plain_s / service_s, 2),
                "vs_forward_only": round(ceiling_s / service_s, 2),
            }
        )
        print(f"signature {count:5d} images: {rows[-1]}", flush=True)
    return rows


def peak_rss_mb(count: int) -> float:
    """Peak resident memory growth (MB) of computing one signature, in a fresh process.

    The images are written by this process; the child loads the reference network, resets
    its peak-RSS counter (Linux /proc/self/clear_refs; getrusage's peak would include what
    the child inherited from this process), computes the signature and reports the growth.
    """
    script = """
import sys
from pathlib import Path
from app.p2l.reference import load_reference, share_cpus_with_decoding
from app.p2l.signature import compute_signature
from app.zoo.bundled import BUNDLED_DIR

def status_kb(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])

root = Path(sys.argv[1])
files = {d.name: sorted(d.iterdir()) for d in sorted(root.iterdir())}
reference = load_reference("compact_cnn", BUNDLED_DIR / "reference.safetensors", "cpu")
share_cpus_with_decoding()
before = status_kb("VmRSS")
open("/proc/self/clear_refs", "w").write("5")  # reset the peak (VmHWM) to the current RSS
compute_signature(reference, files)
print((status_kb("VmHWM") - before) / 1024)
"""
    with tempfile.TemporaryDirectory() as tmp:
        write_image_folder(Path(tmp), count)
        out = subprocess.run(
            [sys.executable, "-c", script, tmp],
            capture_output=True,
            text=True,
            check=True,
            cwd=ROOT,
        )
    return float(out.stdout.strip().splitlines()[-1])


def training_throughput(epochs: int) -> dict:
    """The service's layer-wise training loop vs a bare PyTorch loop, same model and data."""
    images, labels = bundled_pixels()
    images, labels = images[:1000], labels[:1000]
    spec = get_spec("compact_cnn_small")
    data = ImageTensors(images, labels, spec.mean, spec.std)

    torch.manual_seed(0)
    model = replace_head(build_model("compact_cnn_small", 10), 5)
    groups = LayerwiseLR(0.05, decay=0.5).param_groups(model, 5e-4)
    started = time.perf_counter()
    train_classifier(model, data, TrainConfig(epochs=epochs, batch_size=32), param_groups=groups)
    service_s = time.perf_counter() - started

    torch.manual_seed(0)
    model = replace_head(build_model("compact_cnn_small", 10), 5)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    x = (data.images.float() - data.mean) / data.std
    y = data.labels
    started = time.perf_counter()
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(y))
        for first in range(0, len(y), 32):
            index = order[first : first + 32]
            loss = F.cross_entropy(model(x[index]), y[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    bare_s = time.perf_counter() - started
    seen = epochs * len(y)
    return {
        "images_seen": seen,
        "service_loop_images_per_s": round(seen / service_s),
        "bare_loop_images_per_s": round(seen / bare_s),
        "ratio": round(bare_s / service_s, 2),
        "note": "service loop: augmentation, one-cycle schedule, layer-wise param groups, "
        "per-step cancel hook; bare loop: none of these",
    }


def http_end_to_end(repeats: int, job_epochs: int) -> dict:
    """Upload+rank a fresh 250-image target over HTTP; a fine-tune job's images/s."""
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        env = {**os.environ, "P2L_DATA_DIR": f"{tmp}/data", "P2L_PORT": str(port)}
        server = subprocess.Popen(
            [sys.executable, "-m", "app"],
            env=env,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            wait_until_up(url)
            archive = target_zip(Path(tmp), "fashion")
            client = httpx.Client(base_url=url, timeout=120)
            timings, target = [], None
            for _ in range(repeats):
                started = time.perf_counter()
                response = client.post("/v1/datasets", files={"file": ("t.zip", archive)})
                target = response.json()["id"]
                client.post("/v1/rankings", json={"target_dataset_id": target, "top_k": 5})
                timings.append(time.perf_counter() - started)
            job = client.post(
                "/v1/finetunes",
                json={
                    "target_dataset_id": target,
                    "source_id": "best",
                    "schedule": "manual",
                    "epochs": job_epochs,
                    "patience": None,
                    "val_fraction": 0.2,
                },
            ).json()
            while (state := client.get(f"/v1/jobs/{job['id']}").json())["status"] in (
                "queued",
                "running",
            ):
                time.sleep(0.2)
            history = state["progress"]["history"]
            train_images = state["result"]["train_images"]
            train_seconds = sum(h["train_seconds"] for h in history)
            epoch_seconds = sum(h["seconds"] for h in history)
        finally:
            server.terminate()
            server.wait(30)
    return {
        "upload_and_rank_250_median_s": round(statistics.median(timings), 3),
        "upload_and_rank_runs_s": [round(t, 3) for t in timings],
        "job_status": state["status"],
        "job_images_per_s": round(train_images * len(history) / train_seconds),
        "job_validation_share": round(1 - train_seconds / epoch_seconds, 2),
    }


def target_zip(root: Path, name: str) -> bytes:
    """A bundled benchmark target as a zip of class folders (what a user uploads)."""
    import zipfile

    data = np.load(BUNDLED_DIR / "targets" / f"{name}.npz")
    path = root / f"{name}.zip"
    with zipfile.ZipFile(path, "w") as archive:
        for i, (pixels, label) in enumerate(zip(data["images"], data["labels"], strict=True)):
            png = root / "x.png"
            Image.fromarray(pixels).save(png)
            archive.write(png, f"{data['class_names'][label]}/{i}.png")
    return path.read_bytes()


def free_port() -> int:
    """A TCP port nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until_up(url: str) -> None:
    """Block until the service at ``url`` answers /healthz (at most 2 minutes)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.3)
    raise RuntimeError("service did not start")


def main() -> None:
    """Run everything and write the results."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller sizes, fewer repeats")
    quick = parser.parse_args().quick
    started = time.perf_counter()
    results = {
        "benchmark": "performance",
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        },
        "signature": signature_throughput([250, 1000] if quick else [250, 5000]),
        "memory_peak_rss_growth_mb": {n: round(peak_rss_mb(n), 1) for n in (1000, 10_000)},
        "ranking": ranking_speed.run([1_000, 10_000] if quick else [1_000, 10_000, 100_000])[
            "rows"
        ],
        "training": training_throughput(3 if quick else 10),
        "http": http_end_to_end(3 if quick else 7, 5 if quick else 20),
    }
    results["seconds"] = round(time.perf_counter() - started, 1)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "performance.json").write_text(json.dumps(results, indent=2) + "\n")
    (RESULTS / "performance.md").write_text(report(results))
    print(report(results))


def report(r: dict) -> str:
    """Markdown summary with the goals and whether they were met."""
    m = r["machine"]
    lines = [
        "# Performance",
        "",
        f"{m['cpus']} CPUs, Python {m['python']}, torch {m['torch']}, "
        f"GPU: {m['cuda'] or 'none'}. All ratios: same invocation, same machine.",
        "",
        "## Signature throughput (images from PNG files on disk, reference network)",
        "",
        "| images | service (img/s) | plain ImageFolder loop | forward pass only "
        "| vs plain (goal >= 1.5x) | vs forward only (goal >= 0.8x) |",
        "| ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for s in r["signature"]:
        lines.append(
            f"| {s['images']} | {s['service_images_per_s']} | {s['plain_loop_images_per_s']} | "
            f"{s['forward_only_images_per_s']} | {s['vs_plain_loop']}x "
            f"{'(met)' if s['vs_plain_loop'] >= 1.5 else '(missed)'} | {s['vs_forward_only']}x "
            f"{'(met)' if s['vs_forward_only'] >= 0.8 else '(missed)'} |"
        )
    memory = r["memory_peak_rss_growth_mb"]
    lines += [
        "",
        "## Memory",
        "",
        "Peak RSS growth while computing one signature: "
        + ", ".join(f"{n} images: {mb} MB" for n, mb in memory.items())
        + ".",
        "",
        "## Ranking (P2L, kl)",
        "",
        "| sources | top-10 (ms) | all rows (ms) | Python loop (ms) | speed-up top-10 |",
        "| ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in r["ranking"]:
        lines.append(
            f"| {row['sources']:,} | {row['index_top10_ms']} | {row['index_ms']} | "
            f"{row['python_loop_ms']} | {row['speedup_top10']}x |"
        )
    t, h = r["training"], r["http"]
    job_ratio = h["job_images_per_s"] / t["bare_loop_images_per_s"]
    lines += [
        "",
        "## Training and end to end",
        "",
        f"- Training loop: {t['service_loop_images_per_s']} img/s vs bare PyTorch loop "
        f"{t['bare_loop_images_per_s']} img/s: {t['ratio']}x (goal >= 0.9x: "
        f"{'met' if t['ratio'] >= 0.9 else 'missed'}). {t['note']}.",
        f"- Fine-tune job over HTTP (worker process, DB progress, a cancel check per step): "
        f"{h['job_images_per_s']} img/s in its training steps ({job_ratio:.2f}x the bare loop; "
        f"goal >= 0.9x: {'met' if job_ratio >= 0.9 else 'missed'}); the per-epoch validation "
        f"for early stopping adds {h['job_validation_share']:.0%} to each epoch.",
        f"- Upload a fresh 250-image target and rank the zoo, over HTTP: median "
        f"{h['upload_and_rank_250_median_s']} s over {len(h['upload_and_rank_runs_s'])} runs.",
        "",
        f"Run time {r['seconds']:.0f} s.",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
