"""Network factory: jobs name a network and its arguments in configuration, code builds it."""

from __future__ import annotations

import importlib
from typing import Callable, Dict, Sequence

import torch
from monai.networks.nets import UNet

NETWORKS: Dict[str, Callable[..., torch.nn.Module]] = {}


def register_network(name: str):
    """Decorator that adds a builder to :data:`NETWORKS` under ``name``."""

    def add(builder: Callable[..., torch.nn.Module]) -> Callable[..., torch.nn.Module]:
        NETWORKS[name] = builder
        return builder

    return add


@register_network("unet")
def build_unet(
    in_channels: int = 1,
    out_channels: int = 1,
    channels: Sequence[int] = (16, 32, 64, 128, 256),
    strides: Sequence[int] = (2, 2, 2, 2),
    num_res_units: int = 2,
) -> torch.nn.Module:
    """MONAI 2D UNet used by the NVFlare prostate examples (FedAvg, FedSM)."""
    return UNet(spatial_dims=2, in_channels=in_channels, out_channels=out_channels, channels=channels,
                strides=strides, num_res_units=num_res_units)


def build_network(name: str, **kwargs) -> torch.nn.Module:
    """Build a registered network by name, e.g. ``build_network("unet", channels=[8, 16, 32])``.

    ``"<module>:<name>"`` first imports the module that registers the network, so that a generic workflow (the
    FedAvg server) can build a method's network: ``"medfl.federations.dermoscopy.networks:vgg16_slim"``.
    """
    module, qualified, name = name.rpartition(":")
    if qualified:
        try:
            importlib.import_module(module)
        except ImportError as e:
            raise ValueError(f"cannot import {module!r}, which should register the network {name!r}: {e}") from None
    if name not in NETWORKS:
        raise ValueError(f"unknown network {name!r}; known: {sorted(NETWORKS)}")
    return NETWORKS[name](**kwargs)
