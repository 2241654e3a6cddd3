"""Pixel cache: a fine-tune job's loading phase with and without it, and its upload cost.

Run alone: ``python -m bench.perf_pixel_cache [--quick] [--device cuda]``.

Contenders, interleaved in one invocation, on the same PNG files (96 px, real images):

- ``decode``: what a job did before the cache, and still does with it off:
  ``load_all_pixels(paths, size)`` (the service's decoder in its default, fastest mode);
- ``cache hit``: what a job does once the entry exists: find it, check it, map it, and copy
  every pixel into memory (the job's split copies them anyway), so nothing is left lazy;
- ``cache miss``: the first job at a size no upload cached: decode, stream to the entry,
  publish it, map it (the overhead of writing, against ``decode``).

At upload, the signature's own decoded batches feed the entry: ``signature + entry`` against
``signature`` alone is what caching costs an upload (at the reference's 32 px).
The file pages are in the page cache (a worker reading an entry soon after it was written);
from a cold disk a hit reads ``N x size x size x 3`` bytes instead.
"""

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from app.imaging import pixel_cache
from app.imaging.loading import load_all_pixels
from app.p2l.reference import load_reference
from app.p2l.signature import compute_signature
from app.store import ArtifactStore, LocalArtifactStore
from app.zoo.bundled import BUNDLED_DIR
from bench.perf_common import interleaved, machine, rate, ratio, section_main, write_image_folder

DATASET = "0123456789abcdef0123456789abcdef"


def run(quick: bool = False, device: str = "cpu") -> dict[str, Any]:
    """Time loading with and without the cache at 32 and 224 px; the figures, printed too."""
    count = 500 if quick else 2000
    repeats = 3 if quick else 5
    result: dict[str, Any] = {"machine": machine(), "images": count, "repeats": repeats}
    with tempfile.TemporaryDirectory(prefix="p2l-bench-cache-") as tmp:
        store = LocalArtifactStore(Path(tmp) / "store")
        files = write_image_folder(Path(tmp) / "images", count)
        paths = [path for name in sorted(files) for path in sorted(files[name])]
        names = [f"{path.parent.name}/{path.name}" for path in paths]
        for size in (32, 224):
            result[f"{size}px"] = _loading(store, paths, names, size, repeats)
            print(json.dumps({f"{size}px": result[f"{size}px"]}, indent=1))
        result["upload_32px"] = _upload(store, files, names, device, repeats)
        print(json.dumps({"upload_32px": result["upload_32px"]}, indent=1))
        result["load_average_end"] = [round(x, 2) for x in os.getloadavg()[:2]]
    return result


def _loading(
    store: ArtifactStore, paths: list[Path], names: list[str], size: int, repeats: int
) -> dict[str, Any]:
    """The three ways a job's loading phase can go, at one size."""
    expected = load_all_pixels(paths, size)
    # The entry a hit reads (an upload writes it at 32 px, the first job at other sizes).
    _miss(store, paths, names, size)

    def hit() -> np.ndarray:
        pixels = pixel_cache.read_entry(store, DATASET, size, names)
        assert pixels is not None
        return np.array(pixels)

    timed = interleaved(
        {
            "decode": lambda: load_all_pixels(paths, size),
            "cache hit": hit,
            "cache miss": lambda: np.array(_miss(store, paths, names, size)),
        },
        repeats,
    )
    np.testing.assert_array_equal(hit(), expected)  # the cache serves exactly what decodes
    return {
        "entry_mb": round(pixel_cache.payload_bytes(len(paths), size) / 1024**2, 1),
        "seconds": timed,
        "images_per_s": {name: rate(len(paths), t) for name, t in timed.items()},
        "hit_vs_decode": ratio(timed["cache hit"], timed["decode"]),
        "miss_vs_decode": ratio(timed["cache miss"], timed["decode"]),
    }


def _miss(store: ArtifactStore, paths: list[Path], names: list[str], size: int) -> np.ndarray:
    """Decode into a new entry and publish it, as a job does on a miss."""
    key, pixels = pixel_cache.decode_into_entry(store, DATASET, paths, names, size)
    pixel_cache.settle(store, key, 2 * 1024**3)  # the older entry of this size goes
    return pixels


def _upload(
    store: ArtifactStore,
    files: dict[str, list[Path]],
    names: list[str],
    device: str,
    repeats: int,
) -> dict[str, Any]:
    """An upload's signature with and without filling the entry from its decoded batches."""
    reference = load_reference("compact_cnn", BUNDLED_DIR / "reference.safetensors", device)
    ordered = {name: sorted(files[name]) for name in sorted(files)}

    def with_entry() -> None:
        staging = store.new_staging_dir()
        try:
            writer = pixel_cache.EntryWriter(staging, names, reference.input_size)
            compute_signature(reference, ordered, on_pixels=writer)
            key, _ = pixel_cache.publish_entry(store, staging, writer, DATASET)
        finally:
            store.discard(staging)
        pixel_cache.settle(store, key, 2 * 1024**3)

    timed = interleaved(
        {
            "signature": lambda: compute_signature(reference, ordered),
            "signature + entry": with_entry,
        },
        repeats,
    )
    return {
        "seconds": timed,
        "images_per_s": {name: rate(len(names), t) for name, t in timed.items()},
        "upload_cost": round(
            timed["signature + entry"]["median_s"] / timed["signature"]["median_s"], 3
        ),
    }


def report(result: dict[str, Any]) -> list[str]:
    """Markdown lines for the performance report."""
    load = result["machine"]["load_average_1m_5m"]
    lines = [
        "## Pixel cache: a fine-tune's loading phase",
        "",
        f"{result['images']:,} PNGs (96 px), {result['repeats']} interleaved runs each after "
        f"a warm-up; median (min-max) images/s; load average {load[0]} / {load[1]} at the "
        f"start, {result['load_average_end'][0]} / {result['load_average_end'][1]} at the end "
        f"({result['machine']['cpus']} CPUs).",
        "",
        "| size | entry | decode (no cache) | cache hit | cache miss (decode + write) "
        "| hit vs decode | miss vs decode |",
        "|---|---|---|---|---|---|---|",
    ]
    for size in (32, 224):
        row = result[f"{size}px"]
        rates = row["images_per_s"]
        cells = [
            f"{rates[name]['per_s']:,.0f} ({rates[name]['per_s_min']:,.0f}-"
            f"{rates[name]['per_s_max']:,.0f})"
            for name in ("decode", "cache hit", "cache miss")
        ]
        lines.append(
            f"| {size} px | {row['entry_mb']} MB | {' | '.join(cells)} "
            f"| {row['hit_vs_decode']}x | {row['miss_vs_decode']}x |"
        )
    upload = result["upload_32px"]
    sig = upload["images_per_s"]
    lines += [
        "",
        f"Upload (signature at 32 px): {sig['signature']['per_s']:,.0f} images/s alone, "
        f"{sig['signature + entry']['per_s']:,.0f} while filling the entry "
        f"(x{upload['upload_cost']} the time).",
    ]
    return lines


if __name__ == "__main__":
    section_main(run, report, __doc__.splitlines()[0])
