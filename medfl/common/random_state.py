"""A client's random state: seeding its MONAI transforms, and capturing and restoring every generator it draws from.

A client draws from Python's ``random``, numpy's global generator, torch's CPU generator (shuffling, dropout, random
crops; every ``DataLoader`` pass takes a seed from it), the CUDA generator of its device, and the ``RandomState`` of
each MONAI random transform of its datasets (and the ``torch.Generator`` of a transform that draws from one, as the
dermoscopy federation's batched augmentation does). :func:`capture_random_state` returns all of them as lists, numbers and
tensors (so the file loads with ``torch.load(weights_only=True)``); :func:`restore_random_state` puts them back.
"""

from __future__ import annotations

import random
from typing import Any, Dict, Iterator, List, Union

import numpy as np
import torch
from monai.transforms import Randomizable, Transform
from torch.utils.data import ConcatDataset, Dataset, Subset


def random_transforms(dataset: Dataset) -> Iterator[Randomizable]:
    """The MONAI random transform (``dataset.transform``) of ``dataset``, through ``Subset`` and ``ConcatDataset``."""
    if isinstance(dataset, Subset):
        yield from random_transforms(dataset.dataset)
    elif isinstance(dataset, ConcatDataset):
        for part in dataset.datasets:
            yield from random_transforms(part)
    elif isinstance(getattr(dataset, "transform", None), Randomizable):
        yield dataset.transform


def seed_random_transforms(datasets: Dict[str, Dataset], seed: int) -> int:
    """Seed the MONAI random transforms of every dataset (see :func:`random_transforms`).

    MONAI's ``Randomizable`` transforms draw from their own ``RandomState``, which neither ``torch.manual_seed``
    nor ``np.random.seed`` reaches; without this, augmentation differs between runs with the same seed.
    Returns the number of transforms seeded.
    """
    seeded = 0
    for dataset in datasets.values():
        for transform in random_transforms(dataset):
            transform.set_random_state(seed=seed)
            seeded += 1
    return seeded


Generator = Union[np.random.RandomState, torch.Generator]


def transform_generators(datasets: Dict[str, Dataset]) -> List[Generator]:
    """Every generator the random transforms of ``datasets`` draw from, each once, in a fixed order: their own
    ``RandomState`` and any ``torch.Generator`` they hold, and their parts' (``Compose``, ``OneOf``, a dictionary
    transform's inner transform)."""
    generators: Dict[int, Generator] = {}
    visited = set()

    def visit(obj: Any) -> None:
        if isinstance(obj, torch.Generator):
            generators.setdefault(id(obj), obj)
        elif isinstance(obj, (list, tuple)):
            for item in obj:
                visit(item)
        elif isinstance(obj, (Transform, Randomizable)) and id(obj) not in visited:
            visited.add(id(obj))
            if isinstance(obj, Randomizable):
                generators.setdefault(id(obj.R), obj.R)
            for value in vars(obj).values():
                visit(value)

    for name in sorted(datasets):
        for transform in random_transforms(datasets[name]):
            visit(transform)
    return list(generators.values())


def numpy_state(state: tuple) -> Dict[str, Any]:
    """A numpy ``get_state()`` tuple as a dict of a tensor and numbers."""
    _, keys, position, has_gauss, cached_gaussian = state
    return {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(position), "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian)}


def numpy_tuple(state: Dict[str, Any]) -> tuple:
    """The inverse of :func:`numpy_state`, for ``set_state``."""
    return ("MT19937", state["keys"].numpy().astype(np.uint32), state["pos"], state["has_gauss"],
            state["cached_gaussian"])


def generator_state(generator: Generator) -> Dict[str, Any]:
    if isinstance(generator, torch.Generator):
        return {"torch": generator.get_state()}
    return numpy_state(generator.get_state())


def set_generator_state(generator: Generator, state: Dict[str, Any]) -> None:
    if isinstance(generator, torch.Generator) != ("torch" in state):
        raise ValueError("a transform's generator is of another kind than the saved one (another augmentation setting?)")
    if isinstance(generator, torch.Generator):
        generator.set_state(state["torch"])
    else:
        generator.set_state(numpy_tuple(state))


def capture_random_state(datasets: Dict[str, Dataset], device: torch.device) -> Dict[str, Any]:
    """The state of every generator the client draws from (module docstring)."""
    version, internal, gauss_next = random.getstate()
    state = {
        "python": [version, list(internal), gauss_next],
        "numpy": numpy_state(np.random.get_state()),
        "torch": torch.get_rng_state(),
        "transforms": [generator_state(generator) for generator in transform_generators(datasets)],
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore_random_state(state: Dict[str, Any], datasets: Dict[str, Dataset], device: torch.device) -> None:
    """Put back what :func:`capture_random_state` returned; ``ValueError`` if it does not fit these datasets or this
    device."""
    generators = transform_generators(datasets)
    if len(state["transforms"]) != len(generators):
        raise ValueError(f"it holds {len(state['transforms'])} transform random states, but this client's datasets "
                         f"draw from {len(generators)} (another augmentation setting?)")
    if (device.type == "cuda") != ("cuda" in state):
        raise ValueError(f"it was written by a client on another kind of device than {device.type}")
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    np.random.set_state(numpy_tuple(state["numpy"]))
    torch.set_rng_state(state["torch"])
    for generator, saved in zip(generators, state["transforms"]):
        set_generator_state(generator, saved)
    if "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)
