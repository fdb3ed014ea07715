"""Per-round client sampling as Flower's FedAvg strategy does it, made repeatable with an explicit seed.

Flower (``FedAvg.num_fit_clients`` + ``SimpleClientManager.sample``): each round trains
``max(int(fraction_fit * num_available), min_fit_clients)`` clients drawn uniformly without replacement. Flower draws
them from Python's global ``random`` module; here each round has its own generator seeded with
``(seed, round_number)``, so a run repeats, and a resumed run samples what the uninterrupted run would have.
"""

from __future__ import annotations

from typing import List, Sequence

import numpy as np


def num_fit_clients(num_available: int, fraction_fit: float, min_fit_clients: int) -> int:
    """Flower's ``max(int(fraction_fit * num_available), min_fit_clients)``."""
    return max(int(fraction_fit * num_available), min_fit_clients)


def check_sampling(fraction_fit: float, min_fit_clients: int) -> None:
    """``ValueError`` unless ``0 < fraction_fit <= 1`` and ``min_fit_clients >= 1``."""
    if not 0.0 < fraction_fit <= 1.0:
        raise ValueError(f"fraction_fit must be in (0, 1], got {fraction_fit}")
    if min_fit_clients < 1:
        raise ValueError(f"min_fit_clients must be at least 1, got {min_fit_clients}")


def sample_clients(
    clients: Sequence[str], round_number: int, fraction_fit: float, min_fit_clients: int, seed: int
) -> List[str]:
    """The clients that train in ``round_number`` (0-based), in name order.

    ``clients`` are all available clients (their order does not matter). Raises ``ValueError`` when fewer
    clients are available than the round needs (Flower would wait for them; here the run stops with this message).
    """
    check_sampling(fraction_fit, min_fit_clients)
    available = sorted(clients)
    wanted = num_fit_clients(len(available), fraction_fit, min_fit_clients)
    if wanted > len(available):
        raise ValueError(
            f"round {round_number} needs {wanted} clients (fraction_fit={fraction_fit}, "
            f"min_fit_clients={min_fit_clients}) but only {len(available)} are connected: {available}"
        )
    chosen = np.random.default_rng([seed, round_number]).choice(len(available), size=wanted, replace=False)
    return sorted(available[i] for i in chosen)
