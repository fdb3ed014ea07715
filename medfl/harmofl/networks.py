"""HarmoFL networks from MONAI, with the released code's batch norm (ALGORITHMS.md §1.6).

Every BatchNorm of the released prostate UNet and Camelyon17 DenseNet is ``affine=False,
track_running_stats=False``: no learnable scale/shift and batch statistics in training *and* evaluation, so
the state dict (what FedAvg averages) holds only convolution and linear weights.
"""

from __future__ import annotations

from typing import Any

import torch
from monai.networks.nets import BasicUNet, DenseNet121

from medfl.common.networks import register_network

HARMOFL_BATCH_NORM_ARGS = {"affine": False, "track_running_stats": False}
HARMOFL_NORM = ("batch", HARMOFL_BATCH_NORM_ARGS)

# Closest MONAI settings to the released nets: UNet(init_features=32) with [conv3x3 (no bias) -> BN -> ReLU] x 2
# blocks, max-pool down, transposed-conv up, 512-channel bottleneck; DenseNet-121 (growth 32, blocks 6/12/24/16).
UNET_DEFAULTS: dict[str, Any] = {
    "spatial_dims": 2,
    "features": (32, 64, 128, 256, 512, 32),
    "act": ("relu", {"inplace": True}),
    "bias": False,
    "dropout": 0.0,
    "upsample": "deconv",
}
DENSENET121_DEFAULTS: dict[str, Any] = {"spatial_dims": 2, "dropout_prob": 0.0}

_BATCH_NORMS = (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d, torch.nn.BatchNorm3d)


def _without_batch_norm_affine(module: torch.nn.Module) -> torch.nn.Module:
    """Replace, in place, every BatchNorm by one with ``affine=False, track_running_stats=False``.

    Needed for MONAI's DenseNet, whose constructor initialises ``bn.weight`` and fails when it is ``None``.
    The replaced BatchNorms hold MONAI's initial affine (weight 1, bias 0), so the function is unchanged.
    """
    for name, child in module.named_children():
        if isinstance(child, _BATCH_NORMS):
            replacement = type(child)(child.num_features, eps=child.eps, momentum=child.momentum,
                                      **HARMOFL_BATCH_NORM_ARGS)
            setattr(module, name, replacement)
        else:
            _without_batch_norm_affine(child)
    return module


def build_harmofl_network(name: str, in_channels: int, out_channels: int, **kwargs: Any) -> torch.nn.Module:
    """Build a HarmoFL network whose BatchNorms are non-affine and use batch statistics only.

    Args:
        name: ``"unet"`` (prostate segmentation, MONAI ``BasicUNet``) or ``"densenet121"`` (Camelyon17
            classification, MONAI ``DenseNet121``).
        in_channels: input channels (3 for both original tasks).
        out_channels: output channels / classes (2 for both original tasks).
        kwargs: override the defaults ``UNET_DEFAULTS`` / ``DENSENET121_DEFAULTS`` (e.g. ``spatial_dims``);
            ``norm`` is fixed by HarmoFL and cannot be passed.
    """
    if "norm" in kwargs:
        raise ValueError("build_harmofl_network fixes norm to BatchNorm(affine=False, track_running_stats=False)")
    if name == "unet":
        return BasicUNet(
            in_channels=in_channels, out_channels=out_channels, norm=HARMOFL_NORM, **{**UNET_DEFAULTS, **kwargs}
        )
    if name == "densenet121":
        # MONAI cannot build DenseNet121 with affine=False (its weight init reads bn.weight): build, then swap.
        net = DenseNet121(
            in_channels=in_channels,
            out_channels=out_channels,
            norm=("batch", {"track_running_stats": False}),
            **{**DENSENET121_DEFAULTS, **kwargs},
        )
        return _without_batch_norm_affine(net)
    raise ValueError(f"unknown HarmoFL network {name!r}; expected 'unet' or 'densenet121'")


@register_network("harmofl_unet")
def build_harmofl_unet(in_channels: int = 3, out_channels: int = 2, **kwargs: Any) -> torch.nn.Module:
    """Config name ``harmofl_unet``: the prostate UNet of :func:`build_harmofl_network` (2.5-D in, 2 classes)."""
    return build_harmofl_network("unet", in_channels, out_channels, **kwargs)


@register_network("harmofl_densenet121")
def build_harmofl_densenet121(in_channels: int = 3, out_channels: int = 2, **kwargs: Any) -> torch.nn.Module:
    """Config name ``harmofl_densenet121``: the Camelyon17 DenseNet-121 of :func:`build_harmofl_network`."""
    return build_harmofl_network("densenet121", in_channels, out_channels, **kwargs)
