"""Giving freed memory back to the OS after a burst: glibc malloc settings and trims.

glibc keeps what a process frees: a freed block below the (self-raising, up to 32 MB) mmap
threshold stays in its arena, and each thread may get its own arena. After a burst of large
numpy / torch buffers (decoded images, batches, uploads) RSS stays at its peak although
little is in use. ``malloc_trim(0)`` returns every free page of every arena; a cap on the
arenas keeps fragmentation from multiplying with the thread pool. No-ops where glibc is not
the allocator (macOS, musl).
"""

import asyncio
import ctypes
import ctypes.util
import logging
import os
import time
from functools import cache
from pathlib import Path
from typing import Any

logger = logging.getLogger("p2l")

# mallopt parameters (malloc.h)
M_ARENA_MAX = -8


@cache
def _glibc() -> Any:
    """glibc, if it is this process's C library (it has malloc_trim); else None."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    except (OSError, AttributeError):
        return None
    return libc


def trim() -> bool:
    """Return the free pages of every malloc arena to the OS; whether any were released."""
    libc = _glibc()
    return bool(libc and libc.malloc_trim(0))


def limit_arenas(arena_max: int) -> bool:
    """Cap the malloc arenas created from now on (0: glibc's default, 8 per core)."""
    libc = _glibc()
    if libc is None or arena_max <= 0:
        return False
    return bool(libc.mallopt(M_ARENA_MAX, arena_max))


def child_malloc_env(arena_max: int) -> dict[str, str]:
    """Environment variables that give a started process the same arena cap."""
    return {"MALLOC_ARENA_MAX": str(arena_max)} if arena_max > 0 else {}


def rss_bytes(pid: int | str = "self") -> int:
    """Resident memory of a process (Linux /proc; 0 where there is none)."""
    try:
        pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return 0
    return pages * os.sysconf("SC_PAGE_SIZE")


class Trimmer:
    """Trims the heap whenever RSS stands ``min_growth_bytes`` above its lowest trimmed level.

    Run ``loop()`` as a task. A trim costs about a millisecond (0.1 ms when nothing is
    free), so checking every second, mid-burst included, costs nothing measurable, and after
    a burst RSS is back down within a second or two of the last request.
    """

    def __init__(self, every_seconds: float, min_growth_bytes: int = 32 * 2**20) -> None:
        self.every_seconds = every_seconds
        self.min_growth_bytes = min_growth_bytes
        self.floor: int | None = None  # the lowest RSS right after a trim
        self.trims = 0

    def maybe_trim(self) -> bool:
        """Trim if RSS grew enough above the floor (always the first time); whether it did."""
        rss = rss_bytes()
        if self.floor is not None and rss < self.floor + self.min_growth_bytes:
            return False
        started = time.perf_counter()
        trim()
        after = rss_bytes()
        self.floor = after if self.floor is None else min(self.floor, after)
        self.trims += 1
        logger.debug("malloc_trim: RSS %.0f -> %.0f MB in %.1f ms", rss / 2**20,
                     after / 2**20, (time.perf_counter() - started) * 1000)  # fmt: skip
        return True

    async def loop(self) -> None:
        """Check every ``every_seconds`` until cancelled."""
        while True:
            await asyncio.sleep(self.every_seconds)
            try:
                await asyncio.to_thread(self.maybe_trim)
            except Exception:  # memory housekeeping must never take the service down
                logger.exception("malloc trim failed")
