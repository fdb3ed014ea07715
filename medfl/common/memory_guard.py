"""Collect garbage when the process's resident memory grows: for what NVFlare's transfers leave in reference cycles.

NVFlare's streaming keeps every sent blob (a sent array's serialised bytes) in a reference cycle (its ``TxTask``
and ``StreamFuture`` refer to each other), and a download's buffers too; reference counting never frees them, only
the cyclic collector, which the few container objects a transfer allocates seldom trigger. FedSM's selector result
(1.5 GB: 66 arrays, three of 0.4 GB) therefore stayed resident on top of the models while it was being uploaded.
:class:`GarbageGuard` polls the resident set size and runs ``gc.collect()`` whenever it has grown by
:data:`GROWTH_BYTES` since the last collection (or since it last fell), so at most about that much garbage waits.
A collection scans only what was allocated after the set-up objects were frozen (:func:`freeze_setup_objects`).
"""

from __future__ import annotations

import gc
import os
import threading
from typing import Optional

GROWTH_BYTES = 128 * 2 ** 20  # resident growth since the last collection that triggers one
POLL_S = 0.1  # seconds between two looks at the resident set size
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")


def resident_bytes() -> int:
    """This process's resident set size (``/proc/self/statm``; Linux)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * PAGE_BYTES


class GarbageGuard:
    """A daemon thread collecting garbage when the resident set size grows by ``growth_bytes`` (see the module).
    ``start`` and ``stop`` (or ``with``) may be called from any thread; without ``/proc`` (not Linux) it does
    nothing."""

    def __init__(self, growth_bytes: int = GROWTH_BYTES, poll_s: float = POLL_S):
        self.growth_bytes = growth_bytes
        self.poll_s = poll_s
        self.floor: Optional[int] = None  # the resident size the growth is counted from
        self.collections = 0
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def start(self) -> None:
        if self._thread is None and os.path.exists("/proc/self/statm"):
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="medfl-garbage-guard", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None

    def __enter__(self) -> "GarbageGuard":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def check(self) -> bool:
        """One look at the resident size: collect garbage if it grew by ``growth_bytes`` since the floor; whether
        it did. The floor follows the resident size down, and up to what a collection leaves (memory in use)."""
        rss = resident_bytes()
        if self.floor is not None and rss - self.floor >= self.growth_bytes:
            gc.collect()
            self.collections += 1
            self.floor = resident_bytes()
            return True
        self.floor = rss if self.floor is None else min(self.floor, rss)
        return False

    def _run(self) -> None:
        while not self._stop.wait(self.poll_s):
            self.check()
