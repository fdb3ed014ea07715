"""GarbageGuard: garbage in reference cycles is collected once the resident memory has grown enough; clients
and the server limit the malloc arenas of their process; the server fixes its mmap threshold."""

import gc
import platform
import subprocess
import sys
import time
import weakref

import numpy as np
import pytest

from medfl.common.memory_guard import GarbageGuard
from medfl.common.runtime import MALLOC_ARENAS, SERVER_MMAP_THRESHOLD

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


ARENA_PROBE = """
import ctypes, sys, threading
import numpy as np
from medfl.common.runtime import limit_malloc_arenas
if sys.argv[1] == "limit":
    assert limit_malloc_arenas(1)
def allocate():
    for _ in range(50):
        np.ones(1 << 16).sum()
threads = [threading.Thread(target=allocate) for _ in range(4)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
ctypes.CDLL("libc.so.6").malloc_stats()
"""


def run_probe(code: str, mode: str) -> subprocess.CompletedProcess:
    """``code`` run in a fresh Python process with ``mode`` as its argument; it must succeed."""
    done = subprocess.run([sys.executable, "-c", code, mode], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done


def malloc_arenas_used(mode: str) -> int:
    """How many malloc arenas a fresh process uses after four threads allocated (glibc's ``malloc_stats``)."""
    return sum(line.startswith("Arena ") for line in run_probe(ARENA_PROBE, mode).stderr.splitlines())


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc arenas are glibc's")
def test_limit_malloc_arenas_keeps_new_threads_in_one_arena():
    assert malloc_arenas_used("default") > 1  # glibc gives each new allocating thread an arena of its own
    assert malloc_arenas_used("limit") == 1


MMAP_PROBE = """
import ctypes, sys
import numpy as np
from medfl.common.runtime import fix_mmap_threshold
class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                    "fsmblks", "uordblks", "fordblks", "keepcost")]
mallinfo2 = ctypes.CDLL("libc.so.6").mallinfo2
mallinfo2.restype = MallInfo2
if sys.argv[1] == "fixed":
    assert fix_mmap_threshold(1 << 20)
block = np.ones(16 << 20, dtype=np.uint8)
del block  # a mapped block freed: glibc's own threshold rises to 16 MiB
before = mallinfo2().hblkhd
kept = [np.ones(2 << 20, dtype=np.uint8) for _ in range(5)]
print(mallinfo2().hblkhd - before)
"""


def mapped_bytes_of_five_blocks(mode: str) -> int:
    """Bytes glibc mapped (``mallinfo2().hblkhd``) for five 2 MiB arrays made after a 16 MiB one was freed."""
    return int(run_probe(MMAP_PROBE, mode).stdout)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the mmap threshold is glibc's")
def test_a_fixed_mmap_threshold_stays_where_it_was_set():
    assert mapped_bytes_of_five_blocks("default") < 2 * MIB  # from the heap: glibc's threshold had moved up
    assert mapped_bytes_of_five_blocks("fixed") >= 5 * 2 * MIB  # each a mapping of its own


@pytest.mark.parametrize("memory_gc", [True, False])
def test_a_client_limits_the_arenas_when_it_manages_memory(monkeypatch, memory_gc):
    import medfl.common.executor as executor
    from medfl.federations.prostate2d.client import ProstateSegmentationExecutor

    calls = []
    monkeypatch.setattr(executor, "limit_malloc_arenas", calls.append)
    ProstateSegmentationExecutor(memory_gc=memory_gc)
    assert calls == ([MALLOC_ARENAS] if memory_gc else [])


@pytest.mark.parametrize("memory_gc_rounds", [1, 0])
def test_the_server_sets_its_malloc_options_unless_memory_gc_is_off(monkeypatch, memory_gc_rounds):
    import medfl.common.controller as controller
    from medfl.fedavg.controller import FedAvgController

    calls = []
    monkeypatch.setattr(controller, "limit_malloc_arenas", lambda n: calls.append(("arenas", n)))
    monkeypatch.setattr(controller, "fix_mmap_threshold", lambda n: calls.append(("mmap", n)))
    FedAvgController(num_rounds=1, network={"name": "unet"}, memory_gc_rounds=memory_gc_rounds)
    assert calls == ([("arenas", MALLOC_ARENAS), ("mmap", SERVER_MMAP_THRESHOLD)] if memory_gc_rounds else [])
