"""Server-sent event streams of job progress: bounded in number, idle-limited, and cheap (all
streams of one job share one database read per poll)."""

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable, Collection
from typing import Any

from sqlalchemy.orm import Session, sessionmaker
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from app.finetune.search import AUTO_CANDIDATES, describe_candidate
from app.jobs.service import CANDIDATE_FIELDS, get_job
from app.schemas import JobOut
from app.services.finetunes import FINETUNE, planned_phases

POLL_SECONDS = 0.5

Snapshot = dict[str, Any]


class StreamSlots:
    """Counters of open streams, in all (a hard limit) and per owner (an API key), so that
    one key cannot hold every slot (the event loop is single-threaded)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.open = 0
        self.by_owner: dict[str, int] = {}

    def held_by(self, owner: str) -> int:
        """Streams ``owner`` holds open."""
        return self.by_owner.get(owner, 0)

    def try_acquire(self, owner: str = "", owner_limit: int | None = None) -> "Slot | None":
        """A slot, or None when ``limit`` streams are open, or ``owner`` holds
        ``owner_limit`` (checked and taken in one step: no await in between)."""
        if self.open >= self.limit:
            return None
        if owner_limit is not None and self.held_by(owner) >= owner_limit:
            return None
        self.open += 1
        self.by_owner[owner] = self.by_owner.get(owner, 0) + 1
        return Slot(self, owner)


class Slot:
    """One open stream's place; releasing twice is harmless."""

    def __init__(self, slots: StreamSlots, owner: str = "") -> None:
        self._slots: StreamSlots | None = slots
        self.owner = owner

    def release(self) -> None:
        """Give the place back."""
        if self._slots is not None:
            self._slots.open -= 1
            left = self._slots.by_owner.get(self.owner, 1) - 1
            if left > 0:
                self._slots.by_owner[self.owner] = left
            else:
                self._slots.by_owner.pop(self.owner, None)
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


def _event(name: str, data: object) -> str:
    return f"event: {name}\ndata: {json.dumps(data)}\n\n"


_STATUS_FIELDS = ("status", "attempts", "worker_id")
_PLAN_FIELDS = ("epochs_done", "epochs_planned")


def _phase_key(progress: Snapshot) -> tuple[Any, ...]:
    return (progress.get("phase"), progress.get("label"), progress.get("candidate_index"))


def _phase_epochs(job: Snapshot, phase: str | None, trial: object = None) -> int | None:
    """Epochs a fine-tune's phase plans (from its params: the phase may be over by now); an
    auto search's or a race's trial (its 1-based number, as stored) by its place in the
    plan."""
    if job.get("kind", FINETUNE.name) != FINETUNE.name:
        return None
    try:
        phases = planned_phases(job.get("params") or {})
    except ValueError:  # a record this service did not write: no plan to tell
        return None
    plan = [epochs for name, epochs in phases if name == phase]
    if phase in ("race", "auto_search"):
        return plan[trial - 1] if isinstance(trial, int) and 1 <= trial <= len(plan) else None
    return plan[0] if plan else None


def _earlier_phase(reference: dict[str, Any], new: list[dict[str, Any]]) -> int:
    """How many of the ``new`` epochs continue the phase of ``reference`` (the last epoch
    seen, or where the job stood): a phase ends where the name changes or the count
    restarts (auto_search runs one count per candidate)."""
    last_phase, last_epoch = reference.get("phase"), reference.get("epoch") or 0
    for i, metrics in enumerate(new):
        epoch = metrics.get("epoch") or 0
        if metrics.get("phase") != last_phase or epoch <= last_epoch:
            return i
        last_epoch = epoch
    return len(new)


def _past_phase(first: dict[str, Any], job: Snapshot, epoch: dict[str, Any]) -> dict[str, Any]:
    """The ``phase`` event of a phase that began (and ended) between two polls, from its
    first epoch: its name, and for auto search the candidate's number."""
    name = first.get("phase")
    event = {
        "phase": name,
        "label": first.get("label") or str(name).replace("_", " "),
        "epochs": _phase_epochs(job, name, first.get("candidate_index")),
        "epochs_done": epoch["epochs_done"] - 1,
        "epochs_planned": epoch["epochs_planned"],
    }
    index, candidate = first.get("candidate_index"), first.get("candidate")
    if name == "race" and isinstance(index, int):
        event.update(candidate_index=index, candidates=first.get("candidates"))
    if name == "auto_search" and isinstance(index, int):
        if candidate is None and 1 <= index <= len(AUTO_CANDIDATES):
            candidate = AUTO_CANDIDATES[index - 1]  # stored before trials named their candidate
        count = first.get("candidates") or len(AUTO_CANDIDATES)
        event.update(candidate=candidate, candidate_index=index, candidates=count)
        if not first.get("label") and candidate is not None:
            event["label"] = f"auto search {index}/{count}: {describe_candidate(candidate)}"
    return event


def _phase_starts(new: list[dict[str, Any]], first: int) -> set[int]:
    """Indices (from ``first`` on) of the epochs in ``new`` that begin a phase: the first one,
    and each where the phase name changes or its epoch count restarts."""
    return {
        i
        for i in range(first, len(new))
        if i == first
        or new[i].get("phase") != new[i - 1].get("phase")
        or (new[i].get("epoch") or 0) <= (new[i - 1].get("epoch") or 0)
    }


def changes(last: Snapshot, current: Snapshot) -> list[tuple[str, dict[str, Any]]]:
    """The events that take a client from job snapshot ``last`` to ``current``, in order:
    the epochs that finished the phase before, status, phase, the epochs of the new phase,
    and at most one step."""
    before, now = last.get("progress") or {}, current.get("progress") or {}
    history, seen = now.get("history") or [], before.get("history") or []
    # A retry starts a new history: every epoch of it is new.
    new = history[len(seen) :] if history[: len(seen)] == seen else history
    done = now.get("epochs_done") or 0
    epochs = [
        (
            "epoch",
            {
                "phase": metrics.get("phase"),
                "epoch": metrics.get("epoch"),
                "epochs": _phase_epochs(
                    current, metrics.get("phase"), metrics.get("candidate_index")
                ),
                "metrics": metrics,
                "epochs_done": done - (len(new) - 1 - i),
                "epochs_planned": now.get("epochs_planned"),
                "elapsed_seconds": now.get("elapsed_seconds"),
                "eta_seconds": now.get("eta_seconds"),
            },
        )
        for i, metrics in enumerate(new)
    ]
    events: list[tuple[str, dict[str, Any]]] = []
    if _phase_key(before) == _phase_key(now):
        events += epochs
        split = len(new)
    else:
        reference = seen[-1] if seen and new is not history else before
        split = _earlier_phase(reference, new)
        events += epochs[:split]
    if any(last.get(k) != current.get(k) for k in _STATUS_FIELDS):
        events.append(("status", {k: current.get(k) for k in _STATUS_FIELDS}))
    if _phase_key(before) != _phase_key(now):
        phase = {k: now.get(k) for k in ("phase", "label", "epochs", *_PLAN_FIELDS)}
        # The options say what the new phase plans; the progress may still hold the last's.
        phase["epochs"] = (
            _phase_epochs(current, now.get("phase"), now.get("candidate_index")) or phase["epochs"]
        )
        if now.get("phase") in ("auto_search", "race"):
            phase.update({k: now.get(k) for k in CANDIDATE_FIELDS})
        # Phases that began (and perhaps ended) since the last poll are announced before
        # their first epoch, so a client sees every phase, however short; the current one
        # with its label, the ones already over by their name.
        starts = _phase_starts(new, split)
        current_start = max(
            (i for i in starts if new[i].get("phase") == now.get("phase")), default=None
        )
        for i in range(split, len(new)):
            if i == current_start:  # its count as it began, not as it stands now
                events.append(("phase", {**phase, "epochs_done": epochs[i][1]["epochs_done"] - 1}))
            elif i in starts:
                events.append(("phase", _past_phase(new[i], current, epochs[i][1])))
            events.append(epochs[i])
        if current_start is None:
            events.append(("phase", phase))
    position = ("phase", "epoch", "step")
    if now.get("step") and [now.get(k) for k in position] != [before.get(k) for k in position]:
        step = ("phase", "epoch", "step", "steps_per_epoch", *_PLAN_FIELDS, "eta_seconds")
        events.append(("step", {k: now.get(k) for k in step}))
    return events


async def job_events(
    first: Snapshot,
    cache: SnapshotCache,
    slot: Slot,
    terminal: Collection[str],
    idle_seconds: float,
) -> AsyncIterator[str]:
    """``job`` (the whole job) at once; then ``status``, ``phase``, ``epoch`` and ``step``
    events as the job changes (see ``changes``); ``end`` (the whole final job) once it has
    ended, or ``timeout`` after ``idle_seconds`` without a change."""
    job_id, last = first["id"], first
    last_change = time.monotonic()
    try:
        yield _event("job", first)
        while last["status"] not in terminal:
            if time.monotonic() - last_change > idle_seconds:
                yield _event("timeout", {"status": last["status"], "idle_seconds": idle_seconds})
                return
            await asyncio.sleep(POLL_SECONDS)
            current = await cache.get(job_id)
            if current != last:
                for name, data in changes(last, current):
                    yield _event(name, data)
                last, last_change = current, time.monotonic()
        yield _event("end", last)
    finally:
        slot.release()
