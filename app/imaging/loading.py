"""Decoding image files into fixed-size pixel arrays, ahead of the model.

Large sets decode in a small pool of processes: Pillow's per-image work on small files is
bound by the GIL (on 2 cores, two decoding threads were no faster than one), processes are
not. Small sets, where starting the pool would dominate, decode on threads in-process.
"""

import math
import multiprocessing
import os
import sys
import threading
import time
import types
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool, ProcessPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from app.imaging.budget import (
    DecodeBudget,
    decode_budget,
    decode_context,
    install_decode_budget,
    process_alive,
)
from app.imaging.images import decode_square

# Stored images passed validation at upload; this only bounds the work a stray file can cause.
LOAD_MAX_PIXELS = 100_000_000

# Below this many files decoding stays in-process: a process's first pool takes ~0.26 s to
# start (the forkserver, then its workers), the time to decode ~1,000 small PNGs on one thread.
PROCESS_MIN_IMAGES = 512

# Batches decoded ahead of the consumer in the pool: two left the workers idle while the
# model ran (x0.9 throughput at 32 px); four filled the gaps. Bounded in bytes for large sizes.
MAX_BATCHES_AHEAD = 4
MAX_BYTES_AHEAD = 64 * 1024**2

_pool: ProcessPoolExecutor | None = None
_pool_lock = threading.Lock()


def load_pixels(path: Path, size: int) -> np.ndarray:
    """One image file as ``size x size x 3`` uint8 (the service's one preprocessing)."""
    return decode_square(Path(path), LOAD_MAX_PIXELS, size)


# More decoding processes than this feed no model faster, and each holds ~30 MB.
MAX_DECODE_PROCESSES = 8


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity: a container's share, not the host's)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0)) or 1
    return os.cpu_count() or 1


def decode_threads(requested: int = 0) -> int:
    """Threads for in-process image decoding: ``requested``, or half the CPUs."""
    return requested or max(1, usable_cpus() // 2)


def decode_processes() -> int:
    """Processes in the decoding pool: one per CPU (they share them with the model's threads)."""
    return min(usable_cpus(), MAX_DECODE_PROCESSES)


def uses_processes(count: int, processes: bool | None = None) -> bool:
    """Whether ``count`` files decode in the process pool.

    ``processes``: True always (given 2+ CPUs and a process that may have children), False
    never, None when worth it (large sets).
    """
    if processes is None:
        processes = count >= PROCESS_MIN_IMAGES
    # A daemonic process (the local job worker) may not start children: threads there.
    daemonic = multiprocessing.current_process().daemon
    return processes and count > 0 and decode_processes() > 1 and not daemonic


def pixel_batches(
    paths: Sequence[Path],
    size: int,
    batch_size: int,
    threads: int = 0,
    processes: bool | None = None,
) -> Iterator[np.ndarray]:
    """Decode+resize images in order, a few batches ahead of the consumer.

    ``processes`` picks the shared process pool or not (see ``uses_processes``); otherwise
    ``threads`` decoding threads (0: ``decode_threads()``) run in this process.
    """
    if uses_processes(len(paths), processes):
        yield from _process_batches(paths, size, batch_size, threads)
    else:
        yield from _thread_batches(paths, size, batch_size, threads)


def load_all_pixels(
    paths: Sequence[Path], size: int, threads: int = 0, processes: bool | None = None
) -> np.ndarray:
    """Every image as one ``(N, size, size, 3)`` uint8 array (small datasets: fine-tuning)."""
    if not paths:
        return np.zeros((0, size, size, 3), dtype=np.uint8)
    out = np.empty((len(paths), size, size, 3), dtype=np.uint8)
    done = 0
    for batch in pixel_batches(paths, size, 256, threads, processes):
        out[done : done + len(batch)] = batch
        done += len(batch)
    return out


def _thread_batches(
    paths: Sequence[Path], size: int, batch_size: int, threads: int
) -> Iterator[np.ndarray]:
    with ThreadPoolExecutor(decode_threads(threads), thread_name_prefix="p2l-decode") as pool:
        pending: deque[Future[np.ndarray]] = deque()
        next_index = 0
        try:
            for start in range(0, len(paths), batch_size):
                end = min(start + batch_size, len(paths))
                while next_index < min(len(paths), end + batch_size):
                    pending.append(pool.submit(load_pixels, paths[next_index], size))
                    next_index += 1
                yield np.stack([pending.popleft().result() for _ in range(end - start)])
        finally:
            # An abandoned generator (error, cancelled job) leaves no decoding behind.
            for future in pending:
                future.cancel()


def _process_batches(
    paths: Sequence[Path], size: int, batch_size: int, threads: int
) -> Iterator[np.ndarray]:
    pool = _decode_pool()
    # Each batch is split across the workers, so one batch decodes on every CPU at once.

    def submit(start: int, end: int) -> list[Future[np.ndarray]]:
        step = max(1, math.ceil((end - start) / decode_processes()))
        return [
            pool.submit(_decode_chunk, [str(p) for p in paths[i : min(i + step, end)]], size)
            for i in range(start, end, step)
        ]

    bounds = [(i, min(i + batch_size, len(paths))) for i in range(0, len(paths), batch_size)]
    ahead = max(2, min(MAX_BATCHES_AHEAD, MAX_BYTES_AHEAD // (batch_size * size * size * 3)))
    pending: deque[list[Future[np.ndarray]]] = deque()
    submitted = 0
    try:
        for start, _ in bounds:
            try:
                while len(pending) < ahead and submitted < len(bounds):
                    pending.append(submit(*bounds[submitted]))
                    submitted += 1
                batch = np.concatenate([future.result() for future in pending.popleft()])
            except (BrokenProcessPool, CancelledError, RuntimeError):
                # A worker died (killed, out of memory), or another caller discarded the
                # shared pool meanwhile ("cannot schedule new futures after shutdown"): the
                # rest decodes here, the next caller gets a fresh pool.
                _discard_pool(pool)
                pending.clear()
                yield from _thread_batches(paths[start:], size, batch_size, threads)
                return
            yield batch
    finally:
        for futures in pending:
            for future in futures:
                future.cancel()


def _decode_chunk(paths: list[str], size: int) -> np.ndarray:
    return np.stack([load_pixels(Path(path), size) for path in paths])


def _decode_pool() -> ProcessPoolExecutor:
    """The process's decoding pool: created on first use, then kept and reused."""
    global _pool
    with _pool_lock:
        if _pool is None:
            # Never fork: the API process runs threads (a forked lock could be held forever).
            # The forkserver starts workers from a clean process that imported only this
            # module (numpy, Pillow: small), not torch or the web stack.
            context = decode_context()
            if context.get_start_method() == "forkserver":
                context.set_forkserver_preload([__name__])
            pool = ProcessPoolExecutor(
                max_workers=decode_processes(),
                mp_context=context,
                initializer=_start_worker,
                initargs=(os.getpid(), decode_budget()),
            )
            # Every worker starts now, each submit spawning one (none is idle yet), with the
            # parent's __main__ hidden: a child re-imports a script's __main__ (torch and the
            # rest of a bench or tool: ~0.7 GB per worker, seconds to start), though not
            # ``python -m app``'s. Only these few ms of this thread start processes (other
            # threads see the blank __main__ meanwhile; none of ours reads it).
            with _without_main():
                for _ in range(decode_processes()):
                    pool.submit(os.getpid)
            _pool = pool
        return _pool


@contextmanager
def _without_main() -> Iterator[None]:
    main = sys.modules["__main__"]
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        sys.modules["__main__"] = main


def _discard_pool(pool: ProcessPoolExecutor) -> None:
    global _pool
    with _pool_lock:
        if _pool is pool:
            _pool = None
    pool.shutdown(wait=False, cancel_futures=True)


def decode_pool_pids() -> list[int]:
    """Process ids of the decoding pool's live workers (none before its first use)."""
    with _pool_lock:
        pool = _pool
    processes = getattr(pool, "_processes", None) or {}
    return sorted(pid for pid, process in dict(processes).items() if process.is_alive())


def shutdown_decode_pool() -> None:
    """Stop the decoding processes, if any (they also end with this process)."""
    global _pool
    with _pool_lock:
        pool, _pool = _pool, None
    if pool is not None:
        pool.shutdown(wait=True, cancel_futures=True)


def _start_worker(owner_pid: int, budget: DecodeBudget) -> None:
    """Worker initializer: decode under the owner's budget; exit when the owner is gone."""
    install_decode_budget(budget)
    _watch_parent(owner_pid)


def _watch_parent(owner_pid: int) -> None:
    """Exit once the process that owns the pool is gone (no orphans).

    A worker's parent is the forkserver, which exits when the owner dies; the worker is then
    re-parented, which this notices. Under "spawn" the owner is the parent itself.
    """
    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(1.0)
            if os.getppid() != parent or not process_alive(owner_pid):
                os._exit(0)

    threading.Thread(target=watch, name="p2l-decode-watch", daemon=True).start()
