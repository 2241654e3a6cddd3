"""Server-sent event streams of job progress: bounded in number, idle-limited, and cheap (all
streams of one job share one database read per poll)."""

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

from sqlalchemy.orm import Session, sessionmaker
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from app.jobs.service import get_job
from app.schemas import JobOut

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
    """The latest snapshot of each watched job, re-read at most once per poll interval.

    Entries (and their locks) of jobs nobody asked about for a minute are dropped once there
    are many; a read that fails (an unknown job) leaves nothing behind.
    """

    def __init__(self, read: Callable[[str], Snapshot], max_age: float = POLL_SECONDS) -> None:
        self.read = read
        self.max_age = max_age
        self._entries: dict[str, tuple[float, Snapshot]] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    def __len__(self) -> int:
        return len(self._locks)

    async def get(self, job_id: str) -> Snapshot:
        """A snapshot no older than ``max_age`` (one read serves every stream of the job)."""
        if len(self._locks) > 1024:
            self._forget_idle(time.monotonic() - 60)
        lock = self._locks.setdefault(job_id, asyncio.Lock())
        async with lock:
            entry = self._entries.get(job_id)
            if entry is None or time.monotonic() - entry[0] >= self.max_age:
                try:
                    entry = (time.monotonic(), await asyncio.to_thread(self.read, job_id))
                except BaseException:
                    if job_id not in self._entries:
                        self._locks.pop(job_id, None)
                    raise
                self._entries[job_id] = entry
            return entry[1]

    def _forget_idle(self, cutoff: float) -> None:
        for job_id in list(self._locks):
            read_at = self._entries.get(job_id, (0.0, {}))[0]
            if read_at < cutoff and not self._locks[job_id].locked():
                self._entries.pop(job_id, None)
                del self._locks[job_id]


class SlotStreamingResponse(StreamingResponse):
    """A stream that gives its slot back however it ends (even if it never started)."""

    def __init__(self, content: AsyncIterator[str], slot: Slot, **kwargs: Any) -> None:
        super().__init__(content, **kwargs)
        self.slot = slot

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.slot.release()


def read_job_snapshot(sessions: sessionmaker[Session], job_id: str) -> Snapshot:
    """A job as its JSON body (what event streams send); NotFound for an unknown id."""
    with sessions() as session:
        return JobOut.model_validate(get_job(session, job_id)).model_dump(mode="json")


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
