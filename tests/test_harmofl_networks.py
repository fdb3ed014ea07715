"""HarmoFL networks: MONAI nets with non-affine, batch-statistics-only BatchNorm (as the released code)."""

import pytest
import torch
from monai.networks.nets import BasicUNet, DenseNet121, UNet

from medfl.harmofl.networks import HARMOFL_NORM, build_harmofl_network

BATCH_NORMS = (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d, torch.nn.BatchNorm3d)


def batch_norms(net: torch.nn.Module) -> list[torch.nn.Module]:
    return [m for m in net.modules() if isinstance(m, BATCH_NORMS)]


@pytest.mark.parametrize(
    "make",
    [
        lambda: BasicUNet(spatial_dims=2, in_channels=3, out_channels=2, features=(4, 4, 8, 8, 16, 4),
                          norm=HARMOFL_NORM),
        lambda: UNet(spatial_dims=2, in_channels=3, out_channels=2, channels=(4, 8), strides=(2,), norm=HARMOFL_NORM),
    ],
    ids=["BasicUNet", "UNet"],
)
def test_monai_unets_accept_the_harmofl_norm(make):
    norms = batch_norms(make())
    assert norms and all(not m.affine and not m.track_running_stats for m in norms)


def test_monai_densenet_rejects_a_non_affine_norm():
    """Why build_harmofl_network swaps DenseNet's norms after construction (drop the swap once this fails)."""
    with pytest.raises(RuntimeError):
        DenseNet121(spatial_dims=2, in_channels=3, out_channels=2, norm=HARMOFL_NORM)


@pytest.mark.parametrize(
    "name, kwargs, input_shape, output_shape",
    [
        ("unet", {"features": (4, 4, 8, 8, 16, 4)}, (2, 3, 32, 32), (2, 2, 32, 32)),
        ("densenet121", {"init_features": 8, "growth_rate": 4, "block_config": (2, 2, 2, 2)}, (4, 3, 32, 32), (4, 2)),
    ],
)
def test_networks_have_batch_statistics_only(name, kwargs, input_shape, output_shape):
    net = build_harmofl_network(name, in_channels=3, out_channels=2, **kwargs)
    norms = batch_norms(net)
    assert norms and all(not m.affine and not m.track_running_stats for m in norms)
    assert not any(".N." in key or "norm" in key for key in net.state_dict())  # only conv/linear weights are shared
    x = torch.rand(input_shape)
    out_train = net.train()(x)
    assert out_train.shape == output_shape
    torch.testing.assert_close(net.eval()(x), out_train)  # eval also normalises with the batch statistics


def test_default_layouts():
    """UNet(32): 5 levels, 512-channel bottleneck, bias-free 3x3 convs; DenseNet-121 with a 1024-d head."""
    unet = build_harmofl_network("unet", in_channels=3, out_channels=2)
    assert unet.down_4.convs.conv_1.conv.out_channels == 512
    assert all(m.bias is None for m in unet.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3))
    assert sum(p.numel() for p in unet.parameters()) == 7_774_626  # released UNet: 7,757,186
    densenet = build_harmofl_network("densenet121", in_channels=3, out_channels=2)
    assert densenet.class_layers.out.in_features == 1024
    assert sum(p.numel() for p in densenet.parameters()) == 6_872_258


def test_bad_arguments_are_reported():
    with pytest.raises(ValueError, match="unknown HarmoFL network"):
        build_harmofl_network("resnet", 3, 2)
    with pytest.raises(ValueError, match="fixes norm"):
        build_harmofl_network("unet", 3, 2, norm="instance")
