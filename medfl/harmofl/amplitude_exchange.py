"""HarmoFL's amplitude exchange, the FL step before training (Jiang et al., AAAI 2022; ALGORITHMS.md §1.2).

1. Task ``harmofl_amplitude``: each client answers only ``{"amplitude": A_k}``, the mean amplitude spectrum
   ``(C, *spatial)`` of its training images (:func:`~medfl.harmofl.amp_norm.mean_amplitude`), and its
   training-set size in the reply's meta.
2. The server averages with equal weights, ``A = 1/K sum_k A_k`` (:func:`average_amplitudes`).
3. Task ``harmofl_reference``: the server broadcasts ``{"amplitude": A}``; every client freezes it as the
   reference of its amplitude normalisation (training, validation and test inputs) and answers the SHA-256
   of what it holds (:func:`amplitude_digest`), so the server can check that all clients hold the same.

This module holds the names both sides use and the pure parts; the tasks run in
:class:`~medfl.harmofl.controller.HarmoFLController` and :class:`~medfl.harmofl.executor.HarmoFLClient`.
"""

from __future__ import annotations

import hashlib
from typing import Dict, Mapping

import numpy as np

from medfl.common.errors import DataError
from medfl.common.validation import non_finite_problem

from .amp_norm import AmplitudeNormalize

AMPLITUDE_TASK = "harmofl_amplitude"
REFERENCE_TASK = "harmofl_reference"
AMPLITUDE_KEY = "amplitude"
DIGEST_KEY = "amplitude_sha256"
MIN_TRAIN_SAMPLES = "min_train_samples"
AMPLITUDE_FILE = "harmofl_amplitude.pt"


def amplitude_digest(amplitude: np.ndarray) -> str:
    """SHA-256 of the amplitude as contiguous float32 bytes, with its shape (identical arrays, identical digest)."""
    array = np.ascontiguousarray(amplitude, dtype=np.float32)
    return hashlib.sha256(str(array.shape).encode() + array.tobytes()).hexdigest()


def average_amplitudes(replies: Mapping[str, Mapping[str, np.ndarray]]) -> np.ndarray:
    """Equal-weight mean ``1/K sum_k A_k`` of the clients' replies ``{client: {"amplitude": (C, *spatial)}}``.

    A reply with any other key (only amplitudes may travel), a missing amplitude, an amplitude that is not a
    float array, a negative or non-finite value, or a shape that differs from the others is a :class:`DataError`
    naming the client.
    """
    if not replies:
        raise DataError("no client sent an amplitude spectrum")
    arrays: Dict[str, np.ndarray] = {}
    for client, params in sorted(replies.items()):
        if set(params) != {AMPLITUDE_KEY}:
            raise DataError(f"the amplitude reply must hold exactly {{'{AMPLITUDE_KEY}'}}, got {sorted(params)}",
                            site=client)
        sent = params[AMPLITUDE_KEY]
        if not isinstance(sent, np.ndarray) or not np.issubdtype(sent.dtype, np.floating):
            raise DataError(f"the amplitude must be a float array, got {getattr(sent, 'dtype', type(sent).__name__)}",
                            site=client)
        problem = non_finite_problem(AMPLITUDE_KEY, sent)
        if problem:
            raise DataError(problem, site=client)
        if sent.ndim < 3 or (sent < 0).any():
            raise DataError(f"expected a non-negative (C, *spatial) amplitude, got shape {sent.shape}", site=client)
        arrays[client] = sent.astype(np.float64)
    shapes = {client: a.shape for client, a in arrays.items()}
    if len(set(shapes.values())) > 1:
        raise DataError(f"clients' amplitude shapes differ: {shapes}; prepare every site's images at one size")
    return np.mean(np.stack(list(arrays.values())), axis=0).astype(np.float32)


def amplitude_normalizer(options, reference: np.ndarray) -> AmplitudeNormalize:
    """The transform that a client's HarmoFL options ask for (``amplitude_mode``, ``amplitude_window_ratio``)
    around ``reference``."""
    return AmplitudeNormalize(reference, mode=options.amplitude_mode, window_ratio=options.amplitude_window_ratio)
