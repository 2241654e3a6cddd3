"""Signature throughput against its real ceiling, at 32 px and at 224 px.

    python -m bench.perf_signature [--quick] [--device cuda] [--sizes 32,224]

Contenders, timed interleaved in one invocation (median and spread over repeated runs):

- service: ``compute_signature`` as ``ingest_dataset`` calls it, the process set up as the
  API's (``share_cpus_with_decoding`` for the reference's input size);
- strong baseline: torchvision ImageFolder + Resize/CenterCrop/ToTensor/Normalize, a
  DataLoader with one worker per CPU (pinned memory on CUDA), batch 128, channels-last
  inputs, forward in inference_mode (float16 autocast on CUDA); with fresh workers per run
  (a one-shot script) and with persistent workers (a loader kept and reused), torch on all
  CPUs, and persistent workers with torch on half of them (the split the service uses at
  small sizes): the fastest of the three is the baseline; extra column: num_workers=0;
- D: decoding + resizing alone with the service's decoder in each mode (threads, processes),
  all cores; the faster mode is D;
- F: the forward pass alone on ready, normalised tensors, all cores;
- limit = 1 / (1/D + 1/F): what one decoder and one network sharing the machine can reach.
"""

import argparse
import copy
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

from app.families import build_model, weights_to_save
from app.imaging import loading
from app.p2l.reference import FORWARD_BOUND_SIZE, ReferenceNetwork, load_reference
from app.p2l.signature import compute_signature
from app.zoo.bundled import BUNDLED_DIR
from bench.perf_common import interleaved, machine, rate, ratio, rss_mb, write_image_folder

BATCH = 128
# (label, reference architecture, images, images in --quick)
SIZES = {32: ("compact_cnn", 2000, 1000), 224: ("resnet18", 500, 200)}
STRONG_KINDS = {
    "strong_fresh_workers": "fresh workers",
    "strong_persistent_workers": "persistent workers",
    "strong_persistent_workers_split": "persistent workers, torch on half the CPUs",
}


def run(
    quick: bool = False,
    device: str = "cpu",
    sizes: tuple[int, ...] = (32, 224),
    images: int | None = None,
) -> dict:
    """Measure every contender at each input size; figures in img/s and ratios."""
    result: dict[str, Any] = {"machine": machine(), "device": device, "sizes": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for size in sizes:
            architecture, count, quick_count = SIZES[size]
            n = images or (quick_count if quick else count)
            result["sizes"][str(size)] = measure_size(
                Path(tmp), size, architecture, n, device, repeats=2 if quick else 3
            )
    result["load_average_end"] = list(os.getloadavg())
    return result


def measure_size(
    tmp: Path, size: int, architecture: str, count: int, device: str, repeats: int
) -> dict[str, Any]:
    """All contenders at one input size, on ``count`` 96-px PNGs."""
    root = tmp / f"images{size}"
    files = write_image_folder(root, count)
    paths = [path for name in sorted(files) for path in files[name]]
    reference = _reference(tmp, architecture, device)
    assert reference.input_size == size
    cpus = os.cpu_count() or 1
    cuda = reference.device.type == "cuda"

    def threads(count: int, fn: Callable[[], object]) -> Callable[[], object]:
        def timed() -> object:
            torch.set_num_threads(count)
            return fn()

        return timed

    def all_cores(fn: Callable[[], object]) -> Callable[[], object]:
        return threads(cpus, fn)

    def service() -> None:
        reference.share_cpus()  # as app.main sets up the API process
        compute_signature(reference, files, batch_size=BATCH, threads=0)

    def service_before() -> None:
        # Before #12: decoding on threads, torch on the CPUs they leave (1 of 2 here).
        torch.set_num_threads(max(1, cpus - loading.decode_threads()))
        reference.decode_processes = False
        try:
            compute_signature(reference, files, batch_size=BATCH, threads=0)
        finally:
            reference.decode_processes = True

    transform = transforms.Compose(
        [
            transforms.Resize(size),
            transforms.CenterCrop(size),
            transforms.ToTensor(),
            transforms.Normalize(reference.mean, reference.std),
        ]
    )
    folder = datasets.ImageFolder(str(root), transform)
    network = copy.deepcopy(reference.extractor).to(memory_format=torch.channels_last)

    def loader(workers: int, persistent: bool = False) -> DataLoader:
        return DataLoader(
            folder,
            batch_size=BATCH,
            num_workers=workers,
            pin_memory=cuda,
            persistent_workers=persistent and workers > 0,
        )

    def baseline(data: DataLoader) -> None:
        sums = []
        with (
            torch.inference_mode(),
            torch.autocast(reference.device.type, dtype=torch.float16, enabled=cuda),
        ):
            for batch, _ in data:
                batch = batch.to(reference.device, non_blocking=cuda)
                sums.append(network(batch.contiguous(memory_format=torch.channels_last)).sum(0))
        torch.stack(sums).float().cpu()  # waits for the device

    kept = loader(cpus, persistent=True)

    # F's input: the service's own pixels, normalised and channels-last, already on the device.
    pixels = loading.load_all_pixels(paths, size)
    mean = torch.tensor(reference.mean).view(1, 3, 1, 1) * 255
    std = torch.tensor(reference.std).view(1, 3, 1, 1) * 255
    ready = [
        (torch.from_numpy(pixels[i : i + BATCH]).permute(0, 3, 1, 2).float() - mean) / std
        for i in range(0, count, BATCH)
    ]
    ready = [t.to(reference.device).contiguous(memory_format=torch.channels_last) for t in ready]

    def forward_only() -> None:
        outputs = []
        with (
            torch.inference_mode(),
            torch.autocast(reference.device.type, dtype=torch.float16, enabled=cuda),
        ):
            for batch in ready:
                outputs.append(reference.extractor(batch).sum())
        torch.stack(outputs).float().cpu()

    def decode(processes: bool) -> Callable[[], object]:
        return lambda: sum(
            len(b)
            for b in loading.pixel_batches(paths, size, BATCH, threads=cpus, processes=processes)
        )

    contenders = {
        "service": service,
        **({"service_before_12": service_before} if size < FORWARD_BOUND_SIZE else {}),
        "strong_fresh_workers": all_cores(lambda: baseline(loader(cpus))),
        "strong_persistent_workers": all_cores(lambda: baseline(kept)),
        # The split the service uses at small sizes: torch on the CPUs the workers leave.
        "strong_persistent_workers_split": threads(max(1, cpus // 2), lambda: baseline(kept)),
        "dataloader_num_workers_0": all_cores(lambda: baseline(loader(0))),
        "decode_threads": decode(False),
        "decode_processes": decode(True),
        "forward_only": all_cores(forward_only),
    }
    pool_start_s = _cold_pool_start(paths, size)
    print(f"{size} px: {count} images, {architecture}, timing {len(contenders)} contenders "
          f"x {repeats} (+1 warm-up) ...", flush=True)  # fmt: skip
    timed = interleaved(contenders, repeats)
    rates = {name: rate(count, t) for name, t in timed.items()}
    strong = max(STRONG_KINDS, key=lambda name: rates[name]["per_s"])
    decoder = max(("decode_threads", "decode_processes"), key=lambda name: rates[name]["per_s"])
    d, f = rates[decoder]["per_s"], rates["forward_only"]["per_s"]
    limit = 1 / (1 / d + 1 / f)
    service_rate = rates["service"]["per_s"]
    pids = loading.decode_pool_pids()
    row = {
        "images": count,
        "architecture": architecture,
        "timings": timed,
        "images_per_s": rates,
        "strong_baseline": strong,
        "best_decoder": decoder,
        "D": d,
        "F": f,
        "limit": round(limit, 1),
        "service_vs_strong": ratio(timed["service"], timed[strong]),
        "service_vs_workers_0": ratio(timed["service"], timed["dataloader_num_workers_0"]),
        "service_vs_limit": round(service_rate / limit, 3),
        "service_vs_before_12": (
            ratio(timed["service"], timed["service_before_12"])
            if "service_before_12" in timed
            else None
        ),
        "service_uses_processes": loading.uses_processes(count),
        "torch_threads_service": _service_threads(reference),
        "decode_pool_start_s": pool_start_s,
        "decode_pool_rss_mb": [rss_mb(pid)["rss_mb"] for pid in pids],
        "load_average": list(os.getloadavg()),
    }
    print(f"{size} px: " + ", ".join(f"{k} {v['per_s']}/s" for k, v in rates.items()), flush=True)
    print(f"{size} px: limit {row['limit']}/s; service {row['service_vs_strong']}x strong "
          f"({strong}), {row['service_vs_limit']}x limit", flush=True)  # fmt: skip
    return row


def _reference(tmp: Path, architecture: str, device: str) -> ReferenceNetwork:
    if architecture == "compact_cnn":
        return load_reference(architecture, BUNDLED_DIR / "reference.safetensors", device)
    torch.manual_seed(0)
    weights = tmp / f"{architecture}.safetensors"
    save_file(weights_to_save(build_model(architecture, num_classes=1000)), weights)
    return load_reference(architecture, weights, device)


def _cold_pool_start(paths: list[Path], size: int) -> float:
    """Seconds from no pool to the first chunk decoded in it (what a first large upload pays)."""
    loading.shutdown_decode_pool()
    started = time.perf_counter()
    next(loading.pixel_batches(paths[:8], size, 8, processes=True))
    return round(time.perf_counter() - started, 3)


def _service_threads(reference: ReferenceNetwork) -> int:
    before = torch.get_num_threads()
    reference.share_cpus()
    threads = torch.get_num_threads()
    torch.set_num_threads(before)
    return threads


def report(result: dict) -> list[str]:
    """Markdown lines: one table row per input size, then the notes."""
    m = result["machine"]
    lines = [
        "## Signature throughput vs its ceiling",
        "",
        f"{m['cpus']} CPUs, device {result['device']}, GPU: {m['gpu'] or 'none'}, load "
        f"{m['load_average_1m_5m']} at start, {[round(x, 2) for x in result['load_average_end']]}"
        " at end. img/s at the median (slowest-fastest run); one invocation, interleaved.",
        "",
        "| input | images | service | strong DataLoader | num_workers=0 | D (decode) | F "
        "(forward) | limit | service / strong (goal >= 1.0) | service / limit (goal >= 0.9) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for size, row in result["sizes"].items():
        r = row["images_per_s"]

        def cell(name: str, r: dict = r) -> str:
            return f"{r[name]['per_s']:.0f} ({r[name]['per_s_min']:.0f}-{r[name]['per_s_max']:.0f})"

        strong_kind = STRONG_KINDS[row["strong_baseline"]]
        verdict_strong = "met" if row["service_vs_strong"] >= 1.0 else "missed"
        verdict_limit = "met" if row["service_vs_limit"] >= 0.9 else "missed"
        lines.append(
            f"| {size} px, {row['architecture']} | {row['images']} | {cell('service')} | "
            f"{cell(row['strong_baseline'])} ({strong_kind}) | "
            f"{cell('dataloader_num_workers_0')} | "
            f"{row['D']:.0f} ({row['best_decoder'].removeprefix('decode_')}) | {row['F']:.0f} | "
            f"{row['limit']:.0f} | {row['service_vs_strong']}x ({verdict_strong}) | "
            f"{row['service_vs_limit']}x ({verdict_limit}) |"
        )
    lines.append("")
    for size, row in result["sizes"].items():
        r = row["images_per_s"]
        mode = (
            "decodes in its process pool" if row["service_uses_processes"] else "decodes on threads"
        )
        lines.append(
            f"- {size} px: decoding {r['decode_threads']['per_s']:.0f} img/s in threads, "
            f"{r['decode_processes']['per_s']:.0f} in processes; DataLoader with fresh workers "
            f"{r['strong_fresh_workers']['per_s']:.0f}, persistent "
            f"{r['strong_persistent_workers']['per_s']:.0f}, persistent with torch on half the "
            f"CPUs {r['strong_persistent_workers_split']['per_s']:.0f}; the service "
            f"{mode} with torch on {row['torch_threads_service']} thread(s); a cold pool starts in "
            f"{row['decode_pool_start_s']} s; its workers hold {row['decode_pool_rss_mb']} MB RSS."
            + (
                f" Before #12 (threads, torch on the CPUs left): "
                f"{r['service_before_12']['per_s']:.0f} img/s; now {row['service_vs_before_12']}x."
                if row["service_vs_before_12"]
                else ""
            )
        )
    return lines


def main() -> None:
    """Command line: print the figures and the markdown."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--sizes", default="32,224", help="comma-separated: 32, 224")
    parser.add_argument("--images", type=int, help="images per size (default: 2,000 / 500)")
    args = parser.parse_args()
    sizes = tuple(int(s) for s in args.sizes.split(","))
    result = run(args.quick, args.device, sizes, args.images)
    print("\n".join(report(result)))


if __name__ == "__main__":
    main()
