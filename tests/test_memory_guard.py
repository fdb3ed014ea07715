"""GarbageGuard: garbage in reference cycles is collected once the resident memory has grown enough."""

import gc
import time
import weakref

import numpy as np
import pytest

from medfl.common.memory_guard import GarbageGuard

MIB = 2 ** 20
GROWTH = 32 * MIB
GARBAGE = 2 * GROWTH
WAIT_S = 10


@pytest.fixture
def no_automatic_collection():
    gc.disable()
    yield
    gc.enable()


class _SelfHolder:
    """``size`` resident bytes in an object that refers to itself: only the cyclic collector frees it."""

    def __init__(self, size: int):
        self.array = np.ones(size, np.uint8)
        self.me = self


def cyclic_garbage(size: int) -> weakref.ref:
    """Unreachable cyclic garbage of ``size`` resident bytes; a weak reference tells whether it was collected."""
    return weakref.ref(_SelfHolder(size))


def test_cyclic_garbage_is_collected_after_growth_and_not_before(no_automatic_collection):
    # collection is checked on the objects, not on the resident size: freed memory that the allocator keeps for
    # later does not go back to the OS, as after the other tests of a suite
    guard = GarbageGuard(growth_bytes=GROWTH)
    assert not guard.check(), "the first look sets the floor"
    small = cyclic_garbage(GROWTH // 2)
    assert not guard.check() and small() is not None, "less growth than growth_bytes: nothing collected"
    large = cyclic_garbage(GARBAGE)
    assert guard.check() and small() is None and large() is None, "both cycles collected"
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
