"""One memory budget for full-size decode buffers, shared by a process and its decode pool.

A compressed image can be tiny and its pixels huge: a 15 KB PNG of 6,300 x 6,300 RGBA pixels
needs 159 MB once decoded. Every decode reserves the bytes of its full-size buffer here first
(``reserve``); while the reservations would exceed the budget, it waits. A request that waits
longer than the process's ``wait_seconds`` ends with ``DecodeBusy`` (503 + Retry-After);
jobs wait as long as it takes (``wait_seconds=None``). So memory for decoding stays under the
budget however many requests arrive at once, and the service never runs out of it.

The counters live in shared memory, with one slot per process, so the pool's workers (handed
the budget when they start) draw from the same budget as the process that owns them; the
bytes a killed process held are reclaimed when someone next waits, and the counters' lock
is one the kernel releases when its holder dies.
"""

import fcntl
import math
import multiprocessing
import os
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from multiprocessing.context import BaseContext
from multiprocessing.reduction import DupFd
from typing import IO, Any

from app.errors import ServiceError

DEFAULT_BUDGET_BYTES = 256 * 1024**2
# Processes that may hold reservations at once: the owner and its decode pool (8 at most).
_SLOTS = 32
# A decode waiting for the budget looks again this often (a decode takes 10s of ms or more).
_POLL_SECONDS = 0.02


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
        # The counters' lock is a POSIX record lock on an unnamed file, which the kernel
        # releases when its holder dies, whatever it was doing; a semaphore (or a
        # Condition's wait) would stay taken for ever by a process killed inside. Record
        # locks belong to a process: its threads take a lock of their own first.
        self._file: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115 (lives with the budget)
        self._threads = threading.Lock()
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
        """The counters' lock, held for microseconds: one thread of one process at a time."""
        with self._threads:
            fcntl.lockf(self._file, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.lockf(self._file, fcntl.LOCK_UN)

    def __getstate__(self) -> dict[str, Any]:
        # Pickled only to start a process (a decode-pool worker): the file travels as a
        # duplicate of its descriptor, the counters as shared memory.
        state = self.__dict__.copy()
        state["_file"] = DupFd(self._file.fileno())
        del state["_threads"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._file = os.fdopen(state["_file"].detach(), "r+b")
        self._threads = threading.Lock()

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
