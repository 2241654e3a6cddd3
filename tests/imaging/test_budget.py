"""The decode memory budget: decodes wait while it is taken, requests give up with a 503 after
their wait, and a process that dies holding part of it gives that part back."""

import io
import os
import signal
import threading
import time
from multiprocessing.synchronize import Event

import pytest
from PIL import Image

from app.imaging.budget import DecodeBudget, DecodeBusy, decode_context
from app.imaging.images import decoded_bytes

pytestmark = pytest.mark.unit

MIB = 2**20


def test_a_decode_waits_for_the_budget_and_then_runs() -> None:
    budget = DecodeBudget(100 * MIB, wait_seconds=None)
    released_at: list[float] = []

    def hold() -> None:
        with budget.reserve(80 * MIB):
            time.sleep(0.3)
            released_at.append(time.monotonic())

    holder = threading.Thread(target=hold)
    holder.start()
    time.sleep(0.05)
    with budget.reserve(50 * MIB):
        got_it_at = time.monotonic()
        assert budget.reserved_bytes() == 50 * MIB
    holder.join()
    assert got_it_at >= released_at[0]
    assert budget.reserved_bytes() == 0


def test_a_request_that_waits_too_long_gets_busy_with_retry_after() -> None:
    budget = DecodeBudget(100 * MIB, wait_seconds=0.2)
    with budget.reserve(80 * MIB):
        started = time.monotonic()
        with pytest.raises(DecodeBusy) as busy, budget.reserve(50 * MIB):
            pass
        assert 0.2 <= time.monotonic() - started < 2
    assert busy.value.status == 503
    assert busy.value.headers == {"Retry-After": "1"}
    assert "P2L_DECODE_MEMORY_BYTES" in busy.value.detail
    with budget.reserve(50 * MIB):  # free again
        pass


def test_an_image_larger_than_the_whole_budget_runs_alone() -> None:
    budget = DecodeBudget(100 * MIB, wait_seconds=0.1)
    with budget.reserve(400 * MIB):
        assert budget.reserved_bytes() == 100 * MIB
        with pytest.raises(DecodeBusy), budget.reserve(1):
            pass


def _hold_then_wait(budget: DecodeBudget, nbytes: int, holding: Event) -> None:
    with budget.reserve(nbytes):
        holding.set()
        time.sleep(60)


def test_other_processes_share_it_and_a_killed_holder_gives_its_share_back() -> None:
    # As the decode pool's workers do: they get the budget when they start.
    budget = DecodeBudget(100 * MIB, wait_seconds=0.3)
    context = decode_context()
    holding = context.Event()
    other = context.Process(target=_hold_then_wait, args=(budget, 80 * MIB, holding))
    other.start()
    try:
        assert holding.wait(30)
        assert budget.reserved_bytes() == 80 * MIB
        with pytest.raises(DecodeBusy), budget.reserve(50 * MIB):
            pass
        os.kill(other.pid or 0, signal.SIGKILL)
        other.join(10)
        budget.wait_seconds = 5
        with budget.reserve(50 * MIB):  # reclaimed from the dead process
            assert budget.reserved_bytes() == 50 * MIB
    finally:
        other.kill()


def _die_holding_the_lock(budget: DecodeBudget) -> None:
    with budget._locked():
        os.kill(os.getpid(), signal.SIGKILL)


def _wait_for_the_budget(budget: DecodeBudget, waiting: Event) -> None:
    waiting.set()
    with budget.reserve(50 * MIB):
        pass


def test_processes_killed_waiting_or_inside_the_lock_stop_no_one() -> None:
    # A lock the kernel releases when its holder dies: not a semaphore, nor a Condition.
    # The pool kills its other workers when one dies: some were waiting for the budget.
    budget = DecodeBudget(100 * MIB, wait_seconds=5)
    context = decode_context()
    with budget.reserve(80 * MIB):
        waiting = context.Event()
        waiter = context.Process(target=_wait_for_the_budget, args=(budget, waiting))
        waiter.start()
        assert waiting.wait(30)
        time.sleep(0.2)
        os.kill(waiter.pid or 0, signal.SIGKILL)
        waiter.join(10)
    dying = context.Process(target=_die_holding_the_lock, args=(budget,))
    dying.start()
    dying.join(10)
    started = time.monotonic()
    with budget.reserve(100 * MIB):  # the whole budget: nothing was left reserved
        assert budget.reserved_bytes() == 100 * MIB
    assert time.monotonic() - started < 5


def test_a_webp_reserves_the_four_buffers_its_decoder_holds() -> None:
    image = Image.new("RGB", (300, 200))
    for fmt, buffers in (("PNG", 1), ("WEBP", 4)):
        data = io.BytesIO()
        image.save(data, fmt)
        assert decoded_bytes(Image.open(data)) == 300 * 200 * 4 * buffers
