"""Seeded, sized splits that depend only on the set of keys, the fractions and the seed (not on file order)."""

from __future__ import annotations

import math
import zlib
from typing import List, Sequence, TypeVar, Union

import numpy as np

__all__ = ["part_sizes", "seeded_split", "site_seed"]

T = TypeVar("T")


def site_seed(seed: int, site: str) -> List[int]:
    """A seed for ``np.random.default_rng`` that depends on ``seed`` and the site's name, not on site order."""
    return [seed, zlib.crc32(site.encode())]


def part_sizes(count: int, fractions: Sequence[float]) -> List[int]:
    """Sizes proportional to ``fractions`` that sum exactly to ``count`` (largest remainder; ties go first)."""
    if not fractions or any(f < 0 for f in fractions) or not math.isclose(sum(fractions), 1.0):
        raise ValueError(f"split fractions must be non-negative and sum to 1, got {list(fractions)}")
    shares = [count * f for f in fractions]
    sizes = [math.floor(share) for share in shares]
    by_remainder = sorted(range(len(shares)), key=lambda i: sizes[i] - shares[i])
    for i in by_remainder[: count - sum(sizes)]:
        sizes[i] += 1
    return sizes


def seeded_split(keys: Sequence[T], fractions: Sequence[float], seed: Union[int, Sequence[int]]) -> List[List[T]]:
    """Shuffle the sorted ``keys`` with ``np.random.default_rng(seed)`` and cut them into parts of
    :func:`part_sizes`. The result depends only on the set of keys, the fractions and the seed."""
    ordered = sorted(keys)
    order = np.random.default_rng(seed).permutation(len(ordered))
    parts, start = [], 0
    for size in part_sizes(len(ordered), fractions):
        parts.append([ordered[i] for i in order[start : start + size]])
        start += size
    return parts
