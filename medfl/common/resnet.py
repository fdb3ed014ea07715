"""ResNet trunks in torchvision's key layout, built from MONAI, and loading torchvision / MoCo checkpoints into them.

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

from .errors import DataError

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
