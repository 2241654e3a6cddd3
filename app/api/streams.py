"""Server-sent event streams of job progress: bounded in number, idle-limited, and cheap (all
streams of one job share one database read per poll)."""

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

POLL_SECONDS = 0.5

Snapshot = dict[str, Any]


class StreamSlots:
    """A counter of open streams with a hard limit (the event loop is single-threaded)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.open = 0

    def try_acquire(self) -> "Slot | None":
        """A slot, or None when ``limit`` streams are already open."""
        if self.open >= self.limit:
            return None
        self.open += 1
        return Slot(self)


class Slot:
    """One open stream's place; releasing twice is harmless."""

    def __init__(self, slots: StreamSlots) -> None:
        self._slots: StreamSlots | None = slots

    def release(self) -> None:
        """Give the place back."""
        if self._slots is not None:
            self._slots.open -= 1
            self._slots = None


class SnapshotCache:
    """The latest snapshot of each watched job, re-read at most once per poll interval."""

    def __init__(self, read: Callable[[str], Snapshot], max_age: float = POLL_SECONDS) -> None:
        self.read = read
        self.max_age = max_age
        self._entries: dict[str, tuple[float, Snapshot]] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def get(self, job_id: str) -> Snapshot:
        """A snapshot no older than ``max_age`` (one read serves every stream of the job)."""
        if len(self._entries) > 1024:  # forget jobs nobody asked about for a while
            cutoff = time.monotonic() - 60
            for stale in [k for k, (t, _) in self._entries.items() if t < cutoff]:
                del self._entries[stale]
                self._locks.pop(stale, None)
        lock = self._locks.setdefault(job_id, asyncio.Lock())
        async with lock:
            entry = self._entries.get(job_id)
            if entry is None or time.monotonic() - entry[0] >= self.max_age:
                entry = (time.monotonic(), await asyncio.to_thread(self.read, job_id))
                self._entries[job_id] = entry
            return entry[1]


async def job_events(
    first: Snapshot,
    cache: SnapshotCache,
    slot: Slot,
    terminal: tuple[str, ...],
    idle_seconds: float,
) -> AsyncIterator[str]:
    """``progress`` on every change, then ``end`` (finished) or ``timeout`` (idle too long)."""
    job_id, current, last = first["id"], first, None
    last_change = time.monotonic()
    try:
        while True:
            if current != last:
                yield f"event: progress\ndata: {json.dumps(current)}\n\n"
                last, last_change = current, time.monotonic()
            if current["status"] in terminal:
                yield f"event: end\ndata: {json.dumps({'status': current['status']})}\n\n"
                return
            if time.monotonic() - last_change > idle_seconds:
                body = {"status": current["status"], "idle_seconds": idle_seconds}
                yield f"event: timeout\ndata: {json.dumps(body)}\n\n"
                return
            await asyncio.sleep(POLL_SECONDS)
            current = await cache.get(job_id)
    finally:
        slot.release()
