"""One memory budget for full-size decode buffers, shared by a process and its decode pool.

A compressed image can be tiny and its pixels huge: a 15 KB PNG of 6,300 x 6,300 RGBA pixels
needs 159 MB once decoded. Every decode reserves the bytes of its full-size buffer here first
(``reserve``); while the reservations would exceed the budget, it waits. A request that waits
longer than the process's ``wait_seconds`` ends with ``DecodeBusy`` (503 + Retry-After);
jobs wait as long as it takes (``wait_seconds=None``). So memory for decoding stays under the
budget however many requests arrive at once, and the service never runs out of it.

The counters live in shared memory, with one slot per process, so the pool's workers (handed
the budget when they start) draw from the same budget as the process that owns them; the
bytes a killed process held are reclaimed when someone next waits, and a process killed
while it held the counters' lock gives it up a second later.
"""

import logging
import math
import multiprocessing
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from multiprocessing.context import BaseContext

from app.errors import ServiceError

logger = logging.getLogger("p2l")

DEFAULT_BUDGET_BYTES = 256 * 1024**2
# Processes that may hold reservations at once: the owner and its decode pool (8 at most).
_SLOTS = 32
# A decode waiting for the budget looks again this often (a decode takes 10s of ms or more).
_POLL_SECONDS = 0.02
# The counters' lock is held for microseconds: one not freed in this long has a dead holder.
_LOCK_SECONDS = 1.0


def decode_context() -> BaseContext:
    """How decode processes start: never fork (the API runs threads), forkserver if there is
    one. Shared counters must come from the same context as the processes they are given to."""
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")


class DecodeBusy(ServiceError):
    """Decoding memory stayed fully reserved for longer than a request may wait."""

    status = 503
    title = "Service unavailable"

    def __init__(self, detail: str, retry_after_seconds: int) -> None:
        super().__init__(detail)
        self.headers["Retry-After"] = str(retry_after_seconds)
        self.retry_after_seconds = retry_after_seconds

    def __reduce__(self) -> tuple[type["DecodeBusy"], tuple[str, int]]:
        # Raised in a decode-pool worker, it crosses back pickled.
        return (DecodeBusy, (self.detail, self.retry_after_seconds))


class DecodeBudget:
    """Bytes of decode buffers that may exist at once, across processes (see the module)."""

    def __init__(self, total_bytes: int, wait_seconds: float | None) -> None:
        context = decode_context()
        # A plain lock and polling, not a Condition: a process killed inside a Condition's
        # wait() leaves it waiting for a wake-up that never comes, and every notify after it
        # blocks for ever. The lock's holder is written down, so a lock whose holder died
        # inside (a few microseconds of bookkeeping) is taken back (``_locked``).
        self._lock = context.Lock()
        self._lock_holder = context.RawValue("q", 0)
        self._total = context.RawValue("q", total_bytes)
        self._pids = context.RawArray("q", _SLOTS)
        self._held = context.RawArray("q", _SLOTS)
        self.wait_seconds = wait_seconds

    @property
    def total_bytes(self) -> int:
        """The budget, in bytes."""
        return int(self._total.value)

    @total_bytes.setter
    def total_bytes(self, value: int) -> None:
        with self._locked():
            self._total.value = value

    def reserved_bytes(self) -> int:
        """Bytes reserved now, by every process."""
        with self._locked():
            return int(sum(self._held))

    @contextmanager
    def reserve(self, nbytes: int) -> Iterator[None]:
        """Hold ``nbytes`` of the budget for the block; wait while it is taken.

        A decode larger than the whole budget runs alone rather than never. Raises
        DecodeBusy after ``wait_seconds`` (None: waits as long as it takes).
        """
        pid = os.getpid()
        started = time.monotonic()
        while True:
            with self._locked():
                need = max(0, min(nbytes, int(self._total.value)))
                if sum(self._held) + need > self._total.value:
                    self._reclaim_dead()
                if sum(self._held) + need <= self._total.value:
                    slot = self._slot(pid)
                    self._held[slot] += need
                    break
            if self.wait_seconds is not None and time.monotonic() - started >= self.wait_seconds:
                raise self._busy(nbytes)
            time.sleep(_POLL_SECONDS)
        try:
            yield
        finally:
            with self._locked():
                self._held[slot] -= need

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """The counters' lock; taken back from a holder that died holding it."""
        while not self._lock.acquire(timeout=_LOCK_SECONDS):
            holder = self._lock_holder.value
            if holder and process_alive(holder):
                continue
            # Dead inside, or never got to write its pid (a second to do it in): free it.
            logger.warning("decode budget: taking back the lock of dead process %d", holder)
            with suppress(ValueError):  # another waiter freed it first
                self._lock.release()
        self._lock_holder.value = os.getpid()
        try:
            yield
        finally:
            self._lock_holder.value = 0
            self._lock.release()

    def _busy(self, nbytes: int) -> DecodeBusy:
        retry = max(1, math.ceil(self.wait_seconds or 1))
        return DecodeBusy(
            f"the server is busy decoding other images: this one needs "
            f"{nbytes / 2**20:,.0f} MiB of the {self._total.value / 2**20:,.0f} MiB decode budget "
            f"(P2L_DECODE_MEMORY_BYTES), which stayed taken for {self.wait_seconds:g} s; retry "
            "later",
            retry,
        )

    def _slot(self, pid: int) -> int:
        """This process's slot: its own, or one that holds nothing (caller holds the lock)."""
        free = None
        for index in range(_SLOTS):
            if self._pids[index] == pid:
                return index
            if free is None and self._held[index] == 0:
                free = index
        if free is None:  # more live holders than slots: cannot happen with <= 9 processes
            raise RuntimeError("decode budget: no free slot")
        self._pids[free] = pid
        return free

    def _reclaim_dead(self) -> None:
        """Free what processes that no longer exist held (a killed decode worker)."""
        for index in range(_SLOTS):
            if self._held[index] and not process_alive(self._pids[index]):
                self._held[index] = 0


def process_alive(pid: int) -> bool:
    """Whether a process with this id exists (one of another user's included)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


_budget: DecodeBudget | None = None
_budget_lock = threading.Lock()


def decode_budget() -> DecodeBudget:
    """This process's budget (its owner's, in a decode-pool worker). Until
    ``configure_decode_budget`` is called: the default size, and decodes wait as long as it
    takes (a job's must never fail for being patient; the API sets a limit)."""
    global _budget
    with _budget_lock:
        if _budget is None:
            _budget = DecodeBudget(DEFAULT_BUDGET_BYTES, None)
        return _budget


def configure_decode_budget(total_bytes: int, wait_seconds: float | None) -> DecodeBudget:
    """Set this process's budget and how long its requests wait (None: jobs, no limit).

    Decode-pool workers already started keep the wait they were given; the bytes are shared.
    """
    budget = decode_budget()
    budget.total_bytes = total_bytes
    budget.wait_seconds = wait_seconds
    return budget


def install_decode_budget(budget: DecodeBudget) -> None:
    """Make ``budget`` this process's (a decode-pool worker's initializer calls it)."""
    global _budget
    with _budget_lock:
        _budget = budget
