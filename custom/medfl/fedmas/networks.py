"""FedMAS networks: torchvision-layout ResNet trunks built from MONAI, and the free-head classifier (§3.2).

MONAI's ``ResNet`` with ``spatial_dims=2``, a 7x7 stride-2 stem, type-B shortcuts without bias and no
``fc`` has exactly torchvision's parameter names and shapes (``conv1.weight``, ``layer1.0.conv1.weight``,
``layer2.0.downsample.0.weight``, ...), so torchvision and MoCo checkpoints load into it key for key.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from monai.networks.nets import ResNet
from torch import nn

from medfl.common.errors import DataError
from medfl.common.networks import register_network

# depth -> (MONAI block type, blocks per stage), as in torchvision's resnet18/34/50
RESNET_LAYOUTS: dict[int, tuple[str, tuple[int, int, int, int]]] = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
}
STAGE_WIDTHS = (64, 128, 256, 512)
BOTTLENECK_EXPANSION = 4
HEAD_PREFIX = "fc."  # classifier / projection head keys, never part of a trunk
MAX_KEYS_IN_ERROR = 8


def resnet_trunk(depth: int = 18, in_channels: int = 3) -> ResNet:
    """ResNet-``depth`` trunk in torchvision's key layout without ``fc``: (B, C, H, W) -> (B, F) pooled features."""
    if depth not in RESNET_LAYOUTS:
        raise ValueError(f"unsupported ResNet depth {depth}; choose one of {sorted(RESNET_LAYOUTS)}")
    block, layers = RESNET_LAYOUTS[depth]
    return ResNet(
        block=block,
        layers=list(layers),
        block_inplanes=list(STAGE_WIDTHS),
        spatial_dims=2,
        n_input_channels=in_channels,
        conv1_t_size=7,
        conv1_t_stride=2,
        shortcut_type="B",
        bias_downsample=False,
        feed_forward=False,
    )


def trunk_features(depth: int) -> int:
    """Width F of the pooled features of a ResNet-``depth`` trunk (512 for 18/34, 2048 for 50)."""
    if depth not in RESNET_LAYOUTS:
        raise ValueError(f"unsupported ResNet depth {depth}; choose one of {sorted(RESNET_LAYOUTS)}")
    block, _ = RESNET_LAYOUTS[depth]
    return STAGE_WIDTHS[-1] * (BOTTLENECK_EXPANSION if block == "bottleneck" else 1)


def depth_from_keys(keys: Iterable[str], source: str) -> int:
    """Recognise the ResNet depth of a torchvision-layout state dict from its key names."""
    names = list(keys)
    blocks = tuple(len({k.split(".")[1] for k in names if k.startswith(f"layer{stage}.")}) for stage in range(1, 5))
    block = "bottleneck" if any(k.endswith(".conv3.weight") for k in names) else "basic"
    for depth, layout in RESNET_LAYOUTS.items():
        if layout == (block, blocks):
            return depth
    raise DataError(
        f"not a supported ResNet ({block} blocks per stage {blocks}); supported depths are {sorted(RESNET_LAYOUTS)}",
        path=source,
    )


def _preview(keys: Iterable[str]) -> str:
    names = sorted(keys)
    shown = ", ".join(names[:MAX_KEYS_IN_ERROR])
    return shown + (f", ... ({len(names)} in all)" if len(names) > MAX_KEYS_IN_ERROR else "")


def load_trunk_state(trunk: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Load a torchvision-layout state dict into ``trunk``, ignoring ``fc.*``; every other key must match.

    Raises :class:`DataError` naming ``source`` and the missing, unexpected or mis-shaped keys.
    """
    weights = {k: v for k, v in state.items() if not k.startswith(HEAD_PREFIX)}
    expected = trunk.state_dict()
    missing = expected.keys() - weights.keys()
    unexpected = weights.keys() - expected.keys()
    problems = []
    if missing:
        problems.append(f"missing keys: {_preview(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_preview(unexpected)}")
    mis_shaped = [
        f"{k} {tuple(weights[k].shape)} != {tuple(expected[k].shape)}"
        for k in sorted(expected.keys() & weights.keys())
        if weights[k].shape != expected[k].shape
    ]
    if mis_shaped:
        problems.append(f"shape mismatches: {'; '.join(mis_shaped[:MAX_KEYS_IN_ERROR])}")
    if problems:
        raise DataError("does not fit a torchvision-layout ResNet trunk: " + " | ".join(problems), path=source)
    trunk.load_state_dict(weights)


def load_checkpoint_file(file: Path, what: str):
    """``torch.load`` of a weights-only checkpoint, with a :class:`DataError` naming ``file`` when it is
    missing or unreadable (``what`` names the kind of file in the message)."""
    if not file.is_file():
        raise DataError(f"{what} not found", path=file)
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:  # unpickling errors come in several types
        raise DataError(f"cannot be read as a torch checkpoint ({err})", path=file) from err


def read_torchvision_checkpoint(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a torchvision ResNet checkpoint: a plain state dict, or one wrapped as ``{"state_dict": ...}``."""
    file = Path(path)
    content = load_checkpoint_file(file, "ResNet checkpoint")
    if isinstance(content, Mapping) and isinstance(content.get("state_dict"), Mapping):
        content = content["state_dict"]
    if not isinstance(content, Mapping) or not all(isinstance(v, torch.Tensor) for v in content.values()):
        raise DataError(f"expected a state dict of tensors, found {type(content).__name__}", path=file)
    return dict(content)


@register_network("resnet_classifier")
class ResNetClassifier(nn.Module):
    """ResNet trunk f and linear classifier ``fc``: (B, C, H, W) -> logits (B, n_classes).

    The baselines' model (BSM-FL and FedAvg use the original's plain torchvision ResNet-18 with ``fc``).
    Keys are ``trunk.*`` (torchvision's layout below it) and ``fc.*``, the same as :class:`FreeHeadResNet`'s.
    """

    def __init__(self, n_classes: int = 8, depth: int = 18, in_channels: int = 3) -> None:
        super().__init__()
        self.trunk = resnet_trunk(depth, in_channels)
        self.fc = nn.Linear(trunk_features(depth), n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.trunk(x))

    def load_trunk_checkpoint(self, path: str | os.PathLike) -> None:
        """Initialise the trunk from a torchvision ResNet checkpoint (e.g. ImageNet weights); ``fc.*`` is skipped."""
        load_trunk_state(self.trunk, read_torchvision_checkpoint(path), source=str(path))


class FreeHead:
    """Mixin: the projector ("free") head of §3.2 on a classifier whose logits are ``classify(embed(x))``.

    The host ``nn.Module`` implements ``embed`` ((B, C, H, W) -> (B, F) features) and ``classify`` ((B, F) ->
    (B, n_classes) logits z1, used for prediction) and calls :meth:`add_free_head` in its ``__init__``.
    ``heads(x)`` returns ``(features, z1, p, z2)`` for training: ``p = p_free(features)`` (B, prior_dim), aligned
    with the prior h(x), with ``p_free = Linear(F, F) - BatchNorm1d(F) - ReLU - Linear(F, prior_dim)``, and
    ``z2 = fc_free(p)`` (B, n_classes), the extra classifier that balances the projector's training.
    """

    def add_free_head(self, features: int, prior_dim: int, n_classes: int) -> None:
        self.prior_dim = prior_dim
        self.p_free = nn.Sequential(
            nn.Linear(features, features),
            nn.BatchNorm1d(features),
            nn.ReLU(inplace=True),
            nn.Linear(features, prior_dim),
        )
        self.fc_free = nn.Linear(prior_dim, n_classes)

    def heads(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        features = self.embed(x)
        p = self.p_free(features)
        return features, self.classify(features), p, self.fc_free(p)


@register_network("free_head_resnet")
class FreeHeadResNet(ResNetClassifier, FreeHead):
    """FedMAS client model of the original (§3.2): ResNet trunk f, classifier ``fc`` and the :class:`FreeHead`.

    ``forward(x)`` with ``x`` (B, C, H, W) returns the logits ``z1 = fc(f(x))`` (B, n_classes); the features
    of ``heads(x)`` are ``f(x)`` (B, F), F = 512 for ResNet-18.
    """

    def __init__(self, n_classes: int = 8, prior_dim: int = 2048, depth: int = 18, in_channels: int = 3) -> None:
        super().__init__(n_classes, depth, in_channels)
        self.add_free_head(trunk_features(depth), prior_dim, n_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.trunk(x)

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(features)
