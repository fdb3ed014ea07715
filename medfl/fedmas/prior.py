"""The self-supervised prior h(x) of FedMAS (§3.3): a frozen MoCo-v2 encoder shared by every client.

Checkpoint format (the official ``moco_v2_800ep_pretrain.pth.tar`` and ``data_preparation/pretrain_moco.py``):
a dict with ``state_dict`` whose keys are ``module.encoder_q.<torchvision ResNet key>`` plus the MLP head
``module.encoder_q.fc.{0,2}.*``; ``module.encoder_k.*`` and ``module.queue*`` may be present and are ignored.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from medfl.common.errors import DataError
from medfl.common.resnet import (
    HEAD_PREFIX,
    depth_from_keys,
    load_checkpoint_file,
    load_trunk_state,
    resnet_trunk,
    trunk_features,
)

MOCO_QUERY_PREFIX = "module.encoder_q."
MAX_KEYS_IN_ERROR = 5
HASH_CHUNK_BYTES = 1 << 20


class FrozenPrior(nn.Module):
    """h(x) of §3.3: a frozen encoder (B, 3, H, W) -> (B, out_features) pooled features, always in eval mode.

    ``train()`` (also when called on a parent module) keeps the encoder in eval mode and no gradient ever flows.
    ``batch_statistics()`` reproduces the original code's round-0 quirk (§3.3): inside it the encoder's
    BatchNorm layers normalise with batch statistics and update their running statistics.
    """

    def __init__(self, encoder: nn.Module, out_features: int) -> None:
        super().__init__()
        self.encoder = encoder.requires_grad_(False)
        self.out_features = out_features
        self.train(False)

    def train(self, mode: bool = True) -> FrozenPrior:
        return super().train(False)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    @contextmanager
    def batch_statistics(self) -> Iterator[None]:
        """Run the encoder in train mode inside the block (BN uses and updates batch statistics)."""
        self.encoder.train(True)
        try:
            yield
        finally:
            self.encoder.train(False)


def _moco_query_state(content: object, source: Path) -> dict[str, torch.Tensor]:
    """The query encoder's trunk weights from a MoCo checkpoint, without prefix and MLP head."""
    if not isinstance(content, Mapping) or not isinstance(content.get("state_dict"), Mapping):
        found = list(map(str, content.keys()))[:MAX_KEYS_IN_ERROR] if isinstance(content, Mapping) else []
        raise DataError(
            f"not a MoCo-v2 checkpoint: expected a dict with a 'state_dict' entry, "
            f"found {type(content).__name__} with keys {found}",
            path=source,
        )
    state = content["state_dict"]
    query = {k[len(MOCO_QUERY_PREFIX) :]: v for k, v in state.items() if k.startswith(MOCO_QUERY_PREFIX)}
    if not query:
        raise DataError(
            f"not a MoCo-v2 checkpoint: no 'state_dict' key starts with '{MOCO_QUERY_PREFIX}'; "
            f"found keys like {list(state.keys())[:MAX_KEYS_IN_ERROR]}",
            path=source,
        )
    return {k: v for k, v in query.items() if not k.startswith(HEAD_PREFIX)}


def load_moco_prior(path: str | os.PathLike, depth: int | None = None) -> FrozenPrior:
    """Load the MoCo-v2 query encoder of ``path`` as a frozen prior with ``fc = Identity`` (pooled features).

    The ResNet depth (18/34/50) is read from the checkpoint's keys; if ``depth`` is given it must agree.
    The output width is 2048 for ResNet-50 and 512 for ResNet-18/34. Raises :class:`DataError` naming the
    file and what was found.
    """
    file = Path(path)
    content = load_checkpoint_file(file, "MoCo-v2 prior checkpoint")
    weights = _moco_query_state(content, file)
    found_depth = depth_from_keys(weights, source=str(file))
    if depth is not None and depth != found_depth:
        raise DataError(f"holds a ResNet-{found_depth} encoder, but ResNet-{depth} was requested", path=file)
    trunk = resnet_trunk(found_depth)
    load_trunk_state(trunk, weights, source=str(file))
    return FrozenPrior(trunk, trunk_features(found_depth))


def checkpoint_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a checkpoint file, so that a server can check that every client holds the same prior."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for chunk in iter(lambda: stream.read(HASH_CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()
