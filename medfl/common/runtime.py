"""Process-level set-up shared by clients and servers: device choice, seeding, freezing set-up objects for GC and
glibc malloc settings (arenas; the server's mmap threshold)."""

from __future__ import annotations

import ctypes
import gc
import random

import numpy as np
import torch


def select_device(name: str = "auto") -> torch.device:
    """``"auto"`` picks CUDA when available, else CPU; any other value is passed to ``torch.device``."""
    return torch.device("cuda" if name == "auto" and torch.cuda.is_available() else ("cpu" if name == "auto" else name))


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (CPU and CUDA) for repeatable runs."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def freeze_setup_objects() -> None:
    """Collect garbage, then exempt every object alive now from later collections (``gc.freeze``).

    Called once after a run's setup: the modules, networks and datasets it created live until the end of the run.
    The per-round ``cleanup_memory`` (``gc.collect`` + ``malloc_trim``) then scans only what rounds allocate: a
    full collection of the ~300k objects of PyTorch, MONAI and NVFlare takes 0.2-0.3 s on one CPU core, which
    every round paid on its critical path. Frozen objects are still freed by reference counting when no longer
    referenced; only reference cycles among them wait for the end of the run.
    """
    gc.collect()
    gc.freeze()


M_ARENA_MAX = -8  # glibc's mallopt parameter for the most malloc arenas (malloc.h)
M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter for the smallest allocation given a mapping of its own
MALLOC_ARENAS = 1  # clients and server: FedSM's client holds 0.15 GB less than with glibc's 8 per core
SERVER_MMAP_THRESHOLD = 2 ** 20  # the server: FedSM's peaked at 7.58 GiB against 8.15 with glibc's moving one


def _mallopt(parameter: int, value: int) -> bool:
    try:
        return bool(ctypes.CDLL("libc.so.6").mallopt(parameter, int(value)))
    except (OSError, AttributeError):  # not Linux, or not glibc (musl)
        return False


def limit_malloc_arenas(arenas: int) -> bool:
    """At most ``arenas`` glibc malloc arenas in this process from now on (``MALLOC_ARENA_MAX``, set at run time);
    whether it was set (not glibc: no). glibc gives each thread that allocates an arena of its own, up to 8 per
    core; each keeps the freed chunks of the tensors and transfer buffers its thread
    allocated, which ``malloc_trim`` cannot return while a live chunk shares their pages. NVFlare's memory guide
    recommends 2 for a client and 4 for a server; FedSM's client, one training thread beside NVFlare's transfer
    threads, held 0.6 GB between rounds with 1 against 0.74 GB with glibc's default (bench_fedsm_client_memory).
    Arenas made before the call stay."""
    return _mallopt(M_ARENA_MAX, arenas)


def fix_mmap_threshold(nbytes: int) -> bool:
    """Every allocation of at least ``nbytes`` gets a mapping of its own, unmapped when freed
    (``MALLOC_MMAP_THRESHOLD_``, set at run time); whether it was set (not glibc: no). glibc's own threshold moves:
    each freed mapped block below 32 MiB raises it to that block's size, after which blocks up to that size come
    from the heap, whose freed pages stay resident while a live chunk lies above them. FedSM's server, receiving
    three results at once through NVFlare's download service, had grown its heap from 0.02 to 0.4 GiB by its
    peak (bench_memory). For processes that do not train: with a fixed threshold the activations
    and gradients above it take fresh page faults at every step (a FedSM client's selector epoch ran 2-3x slower)."""
    return _mallopt(M_MMAP_THRESHOLD, nbytes)
