"""Decoding image files into fixed-size pixel arrays, on a thread pool ahead of the model."""

import os
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np

from app.datasets.images import open_rgb, square_pixels

# Stored images passed validation at upload; this only bounds the work a stray file can cause.
LOAD_MAX_PIXELS = 100_000_000


def load_pixels(path: Path, size: int) -> np.ndarray:
    """One image file as ``size x size x 3`` uint8 (the service's one preprocessing)."""
    return square_pixels(open_rgb(Path(path), LOAD_MAX_PIXELS, draft_size=size), size)


def decode_threads(requested: int = 0) -> int:
    """Threads for image decoding: ``requested``, or half the CPUs (the network gets the rest)."""
    return requested or max(1, (os.cpu_count() or 1) // 2)


def pixel_batches(
    paths: Sequence[Path], size: int, batch_size: int, threads: int = 0
) -> Iterator[np.ndarray]:
    """Decode+resize images on a thread pool, keeping at most two batches in flight."""
    workers = decode_threads(threads)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="p2l-decode") as pool:
        pending: deque[Future[np.ndarray]] = deque()
        next_index = 0
        for start in range(0, len(paths), batch_size):
            end = min(start + batch_size, len(paths))
            while next_index < min(len(paths), end + batch_size):
                pending.append(pool.submit(load_pixels, paths[next_index], size))
                next_index += 1
            yield np.stack([pending.popleft().result() for _ in range(end - start)])


def load_all_pixels(paths: Sequence[Path], size: int, threads: int = 0) -> np.ndarray:
    """Every image as one ``(N, size, size, 3)`` uint8 array (small datasets: fine-tuning)."""
    if not paths:
        return np.zeros((0, size, size, 3), dtype=np.uint8)
    return np.concatenate(list(pixel_batches(paths, size, 256, threads)))
