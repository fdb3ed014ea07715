"""GarbageGuard: garbage in reference cycles is collected once the resident memory has grown enough."""

import gc
import time

import numpy as np
import pytest

from medfl.common.memory_guard import GarbageGuard, resident_bytes

MIB = 2 ** 20
GROWTH = 32 * MIB
GARBAGE = 2 * GROWTH
WAIT_S = 10


@pytest.fixture
def no_automatic_collection():
    gc.disable()
    yield
    gc.enable()


def cyclic_garbage(size: int) -> None:
    """``size`` resident bytes that only the cyclic collector frees (a list that holds itself)."""
    cycle = [np.ones(size, np.uint8)]
    cycle.append(cycle)


def test_cyclic_garbage_is_collected_after_growth_and_not_before(no_automatic_collection):
    guard = GarbageGuard(growth_bytes=GROWTH)
    assert not guard.check(), "the first look sets the floor"
    before = resident_bytes()
    cyclic_garbage(GROWTH // 2)
    assert not guard.check(), "less growth than growth_bytes"
    cyclic_garbage(GARBAGE)
    assert guard.check() and resident_bytes() - before < GROWTH, "both cycles collected"
    assert not guard.check() and guard.collections == 1


def test_the_thread_collects_until_stopped(no_automatic_collection):
    guard = GarbageGuard(growth_bytes=GROWTH, poll_s=0.01)
    guard.start()
    try:
        deadline = time.monotonic() + WAIT_S
        while guard.collections == 0 and time.monotonic() < deadline:
            cyclic_garbage(GARBAGE)
            time.sleep(0.05)
        assert guard.collections >= 1
    finally:
        guard.stop()
    guard.stop()  # stopping twice is harmless
